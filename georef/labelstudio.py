"""Label Studio region coordinates <-> tile pixels <-> world coordinates.

Label Studio gives vector regions in percent (0-100) of the displayed image's
width (x) and height (y), origin top-left. geolabel displays every tile at its
native pixel size, so percent maps to tile pixels by ``pct / 100 * size``,
and tile pixels map to the world through the tile's :class:`~georef.grid.Grid`.

Rectangles carry a ``rotation`` in degrees, clockwise on screen, about their
top-left corner ``(x, y)``; the rotation is applied in pixel space (percent
axes are not isotropic).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from georef.brush import BoolMask, mask_to_rle, rle_to_mask
from georef.errors import InvalidGeometryError
from georef.grid import FloatArray, Grid

RegionKind = Literal["polygon", "rectangle", "keypoint", "brush"]


@dataclass(frozen=True, slots=True)
class ImageSize:
    """Size in pixels of the image Label Studio displays."""

    width: int
    height: int

    def __post_init__(self) -> None:
        if self.width <= 0 or self.height <= 0:
            raise InvalidGeometryError(f"image size must be positive, got {self.width}x{self.height}")

    @classmethod
    def of(cls, grid: Grid) -> ImageSize:
        """Size of the display image of a tile grid (tiles are displayed 1:1)."""
        return cls(grid.width, grid.height)


def percent_to_pixel(percent_xy: npt.ArrayLike, size: ImageSize) -> FloatArray:
    """Map percent ``(x, y)`` points (N, 2) to continuous pixel ``(col, row)`` points."""
    points = _points(percent_xy)
    return points * np.array([size.width, size.height], dtype=np.float64) / 100.0


def pixel_to_percent(pixel_xy: npt.ArrayLike, size: ImageSize) -> FloatArray:
    """Map continuous pixel ``(col, row)`` points (N, 2) to percent ``(x, y)`` points."""
    points = _points(pixel_xy)
    return points * 100.0 / np.array([size.width, size.height], dtype=np.float64)


def percent_to_world(percent_xy: npt.ArrayLike, grid: Grid) -> FloatArray:
    """Map percent ``(x, y)`` points on the display image of tile ``grid`` to world ``(x, y)``."""
    return grid.pixel_to_world(percent_to_pixel(percent_xy, ImageSize.of(grid)))


def world_to_percent(world_xy: npt.ArrayLike, grid: Grid) -> FloatArray:
    """Map world ``(x, y)`` points to percent ``(x, y)`` on the display image of tile ``grid``."""
    return pixel_to_percent(grid.world_to_pixel(world_xy), ImageSize.of(grid))


@dataclass(frozen=True, slots=True)
class PercentRect:
    """A Label Studio rectangle: top-left ``x, y``, ``width, height`` in percent, rotation in degrees."""

    x: float
    y: float
    width: float
    height: float
    rotation: float = 0.0


def rect_to_pixel_corners(rect: PercentRect, size: ImageSize) -> FloatArray:
    """Pixel corners (4, 2) of a rectangle, starting at its anchor ``(x, y)``, clockwise on screen."""
    anchor = percent_to_pixel([(rect.x, rect.y)], size)[0]
    w_px = rect.width * size.width / 100.0
    h_px = rect.height * size.height / 100.0
    theta = math.radians(rect.rotation)
    along_width = np.array([math.cos(theta), math.sin(theta)]) * w_px
    along_height = np.array([-math.sin(theta), math.cos(theta)]) * h_px
    return np.array(
        [anchor, anchor + along_width, anchor + along_width + along_height, anchor + along_height]
    )


def pixel_corners_to_rect(corners: npt.ArrayLike, size: ImageSize) -> PercentRect:
    """Inverse of :func:`rect_to_pixel_corners`: four pixel corners to a percent rectangle.

    Raises:
        InvalidGeometryError: if the corners do not form a rectangle.
    """
    pts = _points(corners)
    if pts.shape[0] != 4:
        raise InvalidGeometryError(f"a rectangle needs 4 corners, got {pts.shape[0]}")
    along_width, along_height = pts[1] - pts[0], pts[3] - pts[0]
    w_px, h_px = float(np.hypot(*along_width)), float(np.hypot(*along_height))
    if w_px == 0 or h_px == 0:
        raise InvalidGeometryError("a rectangle needs a positive width and height")
    if abs(float(np.dot(along_width, along_height))) > 1e-6 * w_px * h_px:
        raise InvalidGeometryError("corners do not form a rectangle (sides are not perpendicular)")
    rotation = math.degrees(math.atan2(along_width[1], along_width[0]))
    anchor = pixel_to_percent([pts[0]], size)[0]
    return PercentRect(
        x=float(anchor[0]),
        y=float(anchor[1]),
        width=w_px * 100.0 / size.width,
        height=h_px * 100.0 / size.height,
        rotation=rotation % 360.0,
    )


class _ResultModel(BaseModel):
    """The parts of a Label Studio result geolabel reads; other keys are kept as they are."""

    model_config = ConfigDict(extra="allow")

    type: str
    value: dict[str, object]
    from_name: str = ""
    to_name: str = ""
    original_width: int | None = Field(default=None, gt=0)
    original_height: int | None = Field(default=None, gt=0)


@dataclass(frozen=True)
class Region:
    """One Label Studio region on a tile, in tile pixel coordinates.

    Vector kinds carry ``pixel_xy`` (N, 2) points (polygon vertices, the four
    rectangle corners, or one key point); ``brush`` carries ``mask``.
    """

    kind: RegionKind
    labels: tuple[str, ...]
    size: ImageSize
    pixel_xy: FloatArray | None = None
    mask: BoolMask | None = None
    from_name: str = ""


_LABEL_KEYS: dict[str, RegionKind] = {
    "polygonlabels": "polygon",
    "polygon": "polygon",
    "rectanglelabels": "rectangle",
    "rectangle": "rectangle",
    "keypointlabels": "keypoint",
    "keypoint": "keypoint",
    "brushlabels": "brush",
    "brush": "brush",
}


def parse_result(result: dict[str, object], size: ImageSize) -> Region:
    """Parse one Label Studio result dict on a tile displayed at ``size``.

    Raises:
        InvalidGeometryError: for unknown region types, malformed values, or a
            result recorded on an image of another size.
    """
    try:
        model = _ResultModel.model_validate(result)
    except ValidationError as exc:
        raise InvalidGeometryError(f"malformed Label Studio result: {exc.errors()[0]['msg']}") from exc
    kind = _LABEL_KEYS.get(model.type)
    if kind is None:
        raise InvalidGeometryError(f"unsupported Label Studio result type {model.type!r}")
    _check_size(model, size)
    labels = tuple(str(v) for v in _as_list(model.value.get(model.type, [])))
    value = model.value
    try:
        if kind == "brush":
            mask = rle_to_mask(_int_list(value["rle"]), size.width, size.height)
            return Region(kind, labels, size, mask=mask, from_name=model.from_name)
        if kind == "polygon":
            pixel_xy = percent_to_pixel(np.asarray(value["points"], dtype=np.float64), size)
        elif kind == "rectangle":
            rect = PercentRect(
                float(_num(value["x"])),
                float(_num(value["y"])),
                float(_num(value["width"])),
                float(_num(value["height"])),
                float(_num(value.get("rotation", 0.0))),
            )
            pixel_xy = rect_to_pixel_corners(rect, size)
        else:
            pixel_xy = percent_to_pixel([(float(_num(value["x"])), float(_num(value["y"])))], size)
    except (KeyError, TypeError, ValueError) as exc:
        raise InvalidGeometryError(f"malformed {model.type} value: {exc!r}") from exc
    return Region(kind, labels, size, pixel_xy=pixel_xy, from_name=model.from_name)


def region_to_world(region: Region, grid: Grid) -> FloatArray:
    """World ``(x, y)`` points of a vector region drawn on the tile whose grid is ``grid``.

    Raises:
        InvalidGeometryError: for brush regions (they are masks on ``grid``) or a size mismatch.
    """
    if region.pixel_xy is None:
        raise InvalidGeometryError("brush regions are masks: use region.mask with the tile grid")
    if (region.size.width, region.size.height) != (grid.width, grid.height):
        raise InvalidGeometryError(
            f"region drawn on a {region.size.width}x{region.size.height} image, "
            f"tile grid is {grid.width}x{grid.height}"
        )
    return grid.pixel_to_world(region.pixel_xy)


def polygon_result(
    pixel_xy: npt.ArrayLike, size: ImageSize, label: str, from_name: str, to_name: str
) -> dict[str, object]:
    """Build a Label Studio ``polygonlabels`` result from pixel ``(col, row)`` vertices."""
    points = pixel_to_percent(pixel_xy, size)
    value: dict[str, object] = {"points": points.tolist(), "polygonlabels": [label], "closed": True}
    return _result("polygonlabels", value, size, from_name, to_name)


def rectangle_result(
    rect: PercentRect, size: ImageSize, label: str, from_name: str, to_name: str
) -> dict[str, object]:
    """Build a Label Studio ``rectanglelabels`` result from a percent rectangle."""
    value: dict[str, object] = {
        "x": rect.x,
        "y": rect.y,
        "width": rect.width,
        "height": rect.height,
        "rotation": rect.rotation,
        "rectanglelabels": [label],
    }
    return _result("rectanglelabels", value, size, from_name, to_name)


def keypoint_result(
    pixel_xy: tuple[float, float], size: ImageSize, label: str, from_name: str, to_name: str
) -> dict[str, object]:
    """Build a Label Studio ``keypointlabels`` result from one pixel ``(col, row)`` point."""
    x, y = pixel_to_percent([pixel_xy], size)[0]
    value: dict[str, object] = {"x": float(x), "y": float(y), "width": 0.5, "keypointlabels": [label]}
    return _result("keypointlabels", value, size, from_name, to_name)


def brush_result(mask: npt.ArrayLike, label: str, from_name: str, to_name: str) -> dict[str, object]:
    """Build a Label Studio ``brushlabels`` result from a ``(height, width)`` mask."""
    array = np.asarray(mask)
    size = ImageSize(int(array.shape[1]), int(array.shape[0]))
    value: dict[str, object] = {"format": "rle", "rle": mask_to_rle(array), "brushlabels": [label]}
    return _result("brushlabels", value, size, from_name, to_name)


def _result(
    kind: str, value: dict[str, object], size: ImageSize, from_name: str, to_name: str
) -> dict[str, object]:
    return {
        "type": kind,
        "value": value,
        "from_name": from_name,
        "to_name": to_name,
        "original_width": size.width,
        "original_height": size.height,
        "image_rotation": 0,
    }


def _check_size(model: _ResultModel, size: ImageSize) -> None:
    width, height = model.original_width, model.original_height
    if width is not None and height is not None and (width, height) != (size.width, size.height):
        raise InvalidGeometryError(
            f"result was drawn on a {width}x{height} image but the tile is {size.width}x{size.height}"
        )


def _points(values: npt.ArrayLike) -> FloatArray:
    points = np.asarray(values, dtype=np.float64)
    if points.ndim != 2 or points.shape[1] != 2:
        raise InvalidGeometryError(f"expected points of shape (N, 2), got {points.shape}")
    return points


def _as_list(value: object) -> list[object]:
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _int_list(value: object) -> list[int]:
    if not isinstance(value, list):
        raise TypeError("rle must be a list of integers")
    return [int(v) for v in value]


def _num(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"expected a number, got {value!r}")
    return float(value)
