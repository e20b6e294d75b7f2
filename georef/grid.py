"""Immutable grid and pixel-window values.

A :class:`Grid` is one raster grid: pixel size, an :class:`affine.Affine`
transform from continuous pixel coordinates ``(col, row)`` to world ``(x, y)``,
and a CRS. A :class:`PixelWindow` is an integer rectangle of pixels. Both are
frozen: operations return new values.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from affine import Affine
from rasterio.crs import CRS
from rasterio.transform import from_origin
from rasterio.warp import calculate_default_transform
from rasterio.windows import Window

from georef.errors import InvalidGeometryError

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class PixelWindow:
    """An integer rectangle of pixels: offsets of its top-left pixel and its size."""

    col_off: int
    row_off: int
    width: int
    height: int

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise InvalidGeometryError(
                f"a pixel window needs a positive size, got width={self.width}, height={self.height}"
            )

    @property
    def col_end(self) -> int:
        """Column just past the window's last column."""
        return self.col_off + self.width

    @property
    def row_end(self) -> int:
        """Row just past the window's last row."""
        return self.row_off + self.height

    def intersection(self, other: PixelWindow) -> PixelWindow | None:
        """Return the pixels both windows share, or None when they are disjoint."""
        col_off = max(self.col_off, other.col_off)
        row_off = max(self.row_off, other.row_off)
        col_end = min(self.col_end, other.col_end)
        row_end = min(self.row_end, other.row_end)
        if col_end <= col_off or row_end <= row_off:
            return None
        return PixelWindow(col_off, row_off, col_end - col_off, row_end - row_off)

    def to_rasterio(self) -> Window:
        """Return the same window as a :class:`rasterio.windows.Window`."""
        return Window(self.col_off, self.row_off, self.width, self.height)


def guard_transform(transform: object) -> Affine:
    """Check that ``transform`` is an invertible :class:`affine.Affine`.

    Raises:
        InvalidGeometryError: for GDAL-order 6-tuples, other types, or a
            singular (non-invertible) transform.
    """
    if not isinstance(transform, Affine):
        raise InvalidGeometryError(
            f"expected an affine.Affine transform, got {type(transform).__name__}; "
            "build one with affine.Affine(...) or rasterio.transform.from_bounds, never a GDAL 6-tuple"
        )
    if transform.is_degenerate:
        raise InvalidGeometryError(f"transform {tuple(transform)[:6]} is singular (zero pixel size)")
    return transform


@dataclass(frozen=True, slots=True)
class Grid:
    """A raster grid: ``width`` x ``height`` pixels placed on Earth by ``transform`` in ``crs``."""

    width: int
    height: int
    transform: Affine
    crs: CRS

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise InvalidGeometryError(
                f"a grid needs a positive size, got width={self.width}, height={self.height}"
            )
        guard_transform(self.transform)

    @property
    def is_rectilinear(self) -> bool:
        """True when pixel rows and columns are aligned with the CRS axes (no rotation or shear)."""
        return bool(self.transform.is_rectilinear)

    @property
    def resolution(self) -> tuple[float, float]:
        """Ground size of one pixel along columns (x) and rows (y), in CRS units.

        For rotated grids these are the lengths of the pixel's column and row vectors.
        """
        t = self.transform
        return float(np.hypot(t.a, t.d)), float(np.hypot(t.b, t.e))

    @property
    def full_window(self) -> PixelWindow:
        """The window covering the whole grid."""
        return PixelWindow(0, 0, self.width, self.height)

    def window_grid(self, window: PixelWindow) -> Grid:
        """Return the grid of the pixels in ``window`` (same CRS, shifted transform)."""
        transform = self.transform @ Affine.translation(window.col_off, window.row_off)
        return Grid(window.width, window.height, transform, self.crs)

    def pixel_to_world(self, pixel_xy: npt.ArrayLike) -> FloatArray:
        """Map continuous pixel ``(col, row)`` points of shape (N, 2) to world ``(x, y)``."""
        points = _as_points(pixel_xy)
        return _apply(self.transform, points)

    def world_to_pixel(self, world_xy: npt.ArrayLike) -> FloatArray:
        """Map world ``(x, y)`` points of shape (N, 2) to continuous pixel ``(col, row)``."""
        points = _as_points(world_xy)
        return _apply(~self.transform, points)

    def corners_world(self) -> FloatArray:
        """World coordinates of the grid's four outer corners, clockwise from top-left."""
        corners = [(0, 0), (self.width, 0), (self.width, self.height), (0, self.height)]
        return self.pixel_to_world(corners)

    def centre_world(self) -> tuple[float, float]:
        """World ``(x, y)`` of the grid's centre, where its diagonals between opposite corners cross."""
        ((x, y),) = self.pixel_to_world([(self.width / 2, self.height / 2)])
        return float(x), float(y)

    def side_lengths(self) -> tuple[float, float]:
        """Ground length ``(width, height)`` of the top and left edges in CRS units, whatever the rotation.

        These are the distances from the top-left corner to the top-right and bottom-left corners,
        computed from the transform's column and row vectors (``corners_world`` differences), so
        no precision is lost to large world coordinates. A 90-degree grid has ``a == e == 0``.
        """
        t = self.transform
        return self.width * math.hypot(t.a, t.d), self.height * math.hypot(t.b, t.e)

    def bounds(self) -> tuple[float, float, float, float]:
        """Envelope ``(left, bottom, right, top)`` of the grid in world coordinates."""
        corners = self.corners_world()
        xs, ys = corners[:, 0], corners[:, 1]
        return float(xs.min()), float(ys.min()), float(xs.max()), float(ys.max())

    def offset_of(self, other: Grid) -> tuple[int, int] | None:
        """``(col, row)`` of ``other``'s top-left pixel in this grid, if ``other`` lies on this grid's pixels.

        That is: same CRS, same pixel size and orientation, shifted by whole pixels (within 1e-6 pixel).
        Returns None otherwise (the grids need resampling to be combined).
        """
        relative = ~self.transform @ other.transform
        same_axes = np.allclose(
            (relative.a, relative.b, relative.d, relative.e), (1.0, 0.0, 0.0, 1.0), rtol=0.0, atol=1e-9
        )
        col, row = round(relative.c), round(relative.f)
        if not same_axes or abs(relative.c - col) > 1e-6 or abs(relative.f - row) > 1e-6:
            return None
        return (int(col), int(row)) if self.crs == other.crs else None


def union_grid(grids: Sequence[Grid]) -> Grid:
    """The smallest grid on the first grid's pixels that covers every grid.

    Raises:
        InvalidGeometryError: if there is no grid, or one is not on the first grid's pixels
            (another CRS, pixel size or a fractional shift).
    """
    if not grids:
        raise InvalidGeometryError("no grid to combine")
    first = grids[0]
    spans = []
    for grid in grids:
        offset = first.offset_of(grid)
        if offset is None:
            raise InvalidGeometryError(
                "the rasters are not on one pixel grid (CRS, pixel size or alignment differ)"
            )
        spans.append((offset[0], offset[1], offset[0] + grid.width, offset[1] + grid.height))
    col0, row0 = min(s[0] for s in spans), min(s[1] for s in spans)
    col1, row1 = max(s[2] for s in spans), max(s[3] for s in spans)
    return first.window_grid(PixelWindow(col0, row0, col1 - col0, row1 - row0))


def reprojected_grid(grid: Grid, crs: CRS) -> Grid:
    """The grid GDAL chooses to hold ``grid`` in ``crs`` (:func:`rasterio.warp.calculate_default_transform`).

    Raises:
        InvalidGeometryError: if the grid cannot be projected to ``crs``.
    """
    try:
        transform, width, height = calculate_default_transform(
            grid.crs, crs, grid.width, grid.height, *grid.bounds()
        )
    except Exception as exc:  # CRSError, or GDAL failing to transform the extent
        source = crs_to_text(grid.crs)
        raise InvalidGeometryError(f"cannot reproject a {source} grid to {crs}: {exc}") from exc
    return Grid(int(width), int(height), transform, crs)


def covering_grid(grids: Sequence[Grid]) -> Grid:
    """A north-up grid covering every grid (all in one CRS), at the finest pixel size among them.

    Raises:
        InvalidGeometryError: if there is no grid or the CRSs differ.
    """
    if not grids:
        raise InvalidGeometryError("no grid to combine")
    crs = grids[0].crs
    if any(g.crs != crs for g in grids):
        raise InvalidGeometryError("grids in several CRSs: reproject them to one first")
    size = min(min(g.resolution) for g in grids)
    bounds = np.array([g.bounds() for g in grids])
    left, bottom = float(bounds[:, 0].min()), float(bounds[:, 1].min())
    right, top = float(bounds[:, 2].max()), float(bounds[:, 3].max())
    width, height = math.ceil((right - left) / size - 1e-9), math.ceil((top - bottom) / size - 1e-9)
    return Grid(max(width, 1), max(height, 1), from_origin(left, top, size, size), crs)


def _as_points(values: npt.ArrayLike) -> FloatArray:
    points = np.asarray(values, dtype=np.float64)
    if points.ndim == 1 and points.shape[0] == 2:
        points = points.reshape(1, 2)
    if points.ndim != 2 or points.shape[1] != 2:
        raise InvalidGeometryError(f"expected points of shape (N, 2), got {points.shape}")
    return points


def _apply(transform: Affine, points: FloatArray) -> FloatArray:
    a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
    xs, ys = points[:, 0], points[:, 1]
    return np.column_stack((a * xs + b * ys + c, d * xs + e * ys + f))


def crs_to_text(crs: CRS) -> str:
    """Compact text for a CRS: ``"EPSG:<code>"`` when that is exact, else its WKT."""
    code = crs.to_epsg(confidence_threshold=100)
    if code is not None and CRS.from_epsg(code) == crs:
        return f"EPSG:{code}"
    return str(crs.to_wkt())


def crs_from_text(text: str) -> CRS:
    """Inverse of :func:`crs_to_text` (accepts any string rasterio understands).

    Raises:
        InvalidGeometryError: if the text is not a CRS.
    """
    try:
        return _crs_cached(text)
    except Exception as exc:  # rasterio raises CRSError, a subclass of ValueError
        raise InvalidGeometryError(f"not a valid CRS: {text[:80]!r}") from exc


def transform_to_list(transform: Affine) -> list[float]:
    """The six affine coefficients ``[a, b, c, d, e, f]`` (affine order, never GDAL order)."""
    return [float(v) for v in tuple(guard_transform(transform))[:6]]


def transform_from_list(values: list[float] | tuple[float, ...]) -> Affine:
    """Inverse of :func:`transform_to_list`.

    Raises:
        InvalidGeometryError: unless ``values`` holds exactly six numbers of an invertible transform.
    """
    if len(values) != 6:
        raise InvalidGeometryError(f"a transform needs 6 coefficients [a, b, c, d, e, f], got {len(values)}")
    return guard_transform(Affine(*(float(v) for v in values)))


@functools.lru_cache(maxsize=64)
def _crs_cached(text: str) -> CRS:
    return CRS.from_user_input(text)
