"""The ``geo`` object every Label Studio task carries.

It makes a task self-sufficient: from the task alone, labels drawn on its
display image can be placed on Earth. Inside geolabel the tile registry is the
source of tile geometry; this model is the boundary format written into tasks
and read back from Label Studio exports.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from georef.grid import Grid, PixelWindow, crs_from_text, crs_to_text, transform_from_list, transform_to_list


class WindowModel(BaseModel):
    """A pixel window in the source raster."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    col_off: int = Field(ge=0)
    row_off: int = Field(ge=0)
    width: int = Field(gt=0)
    height: int = Field(gt=0)


class TileGeo(BaseModel):
    """Georeference of one display tile, stored in ``task.data["geo"]``.

    ``transform`` holds the affine coefficients ``[a, b, c, d, e, f]`` mapping
    the display image's continuous pixel ``(col, row)`` to CRS ``(x, y)``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    tile_id: str
    crs: str
    transform: tuple[float, float, float, float, float, float]
    width: int = Field(gt=0)
    height: int = Field(gt=0)
    raster: str
    raster_hash: str
    window: WindowModel

    @classmethod
    def from_grid(
        cls,
        tile_id: str,
        grid: Grid,
        window: PixelWindow,
        raster: str,
        raster_hash: str,
        crs_text: str | None = None,
    ) -> TileGeo:
        """Build the geo object of a tile from its grid and its window in the source raster.

        ``crs_text`` (from :func:`~georef.grid.crs_to_text`) saves recomputing it per tile.
        """
        coeffs = transform_to_list(grid.transform)
        return cls(
            tile_id=tile_id,
            crs=crs_text or crs_to_text(grid.crs),
            transform=(coeffs[0], coeffs[1], coeffs[2], coeffs[3], coeffs[4], coeffs[5]),
            width=grid.width,
            height=grid.height,
            raster=raster,
            raster_hash=raster_hash,
            window=WindowModel(
                col_off=window.col_off, row_off=window.row_off, width=window.width, height=window.height
            ),
        )

    def to_grid(self) -> Grid:
        """The tile's grid.

        Raises:
            InvalidGeometryError: if the CRS or transform is invalid.
        """
        return Grid(self.width, self.height, transform_from_list(self.transform), crs_from_text(self.crs))
