"""Label regions as shapes: polygons repaired when invalid, brush masks vectorised on pixel edges.

Shapes are in continuous pixel ``(col, row)`` coordinates of the image they were
drawn on; placing them on Earth is an affine map (:meth:`georef.grid.Grid.pixel_to_world`).
A shape that cannot be used (no area) raises :class:`~georef.errors.InvalidGeometryError`
with the reason, so callers report it instead of dropping it silently.
"""

from __future__ import annotations

from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from affine import Affine
from rasterio.features import shapes
from shapely import make_valid, union_all
from shapely.geometry import MultiPolygon, Polygon, box, shape
from shapely.geometry.base import BaseGeometry

from georef.errors import InvalidGeometryError
from georef.labelstudio import ImageSize, Region, parse_result

#: Region types that are labels; SAM's smart key points and rectangles are prompts, not labels.
LABEL_KINDS = ("brush", "polygon")
ZERO_AREA = "polygon with zero area; not used"
REPAIRED = "self-intersecting polygon repaired (make_valid) before use"


@dataclass(frozen=True)
class Shape:
    """A polygonal area in pixel coordinates, and what was done to make it valid (None: nothing)."""

    geometry: BaseGeometry
    note: str | None = None


def polygon_shape(pixel_xy: npt.ArrayLike) -> Shape:
    """The polygon through ``pixel_xy`` vertices (N, 2), repaired with ``make_valid`` if it self-intersects.

    Raises:
        InvalidGeometryError: for fewer than 3 vertices, or no area even after repair.
    """
    points = np.asarray(pixel_xy, dtype=np.float64)
    if len(points) < 3:
        raise InvalidGeometryError("polygon with fewer than 3 points; not used")
    polygon = Polygon(points)
    if polygon.is_valid:
        if polygon.area > 0:
            return Shape(polygon)
        raise InvalidGeometryError(ZERO_AREA)
    parts = _polygonal_parts(make_valid(polygon))
    if not parts or sum(p.area for p in parts) == 0:
        raise InvalidGeometryError(ZERO_AREA)
    return Shape(union_all(parts), REPAIRED)


def mask_shape(mask: npt.NDArray[np.bool_]) -> Shape:
    """The pixels of a ``(height, width)`` mask as polygons whose edges follow pixel edges.

    Raises:
        InvalidGeometryError: if the mask is empty.
    """
    inside = np.asarray(mask, dtype=np.uint8)
    if not inside.any():
        raise InvalidGeometryError("empty brush region; not used")
    polygons = [
        shape(geojson) for geojson, _ in shapes(inside, mask=inside.astype(bool), transform=Affine.identity())
    ]
    geometry: BaseGeometry = polygons[0] if len(polygons) == 1 else MultiPolygon(polygons)
    if geometry.is_valid:
        return Shape(geometry)
    return Shape(union_all(_polygonal_parts(make_valid(geometry))), "brush outline repaired (make_valid)")


def region_shape(region: Region) -> Shape:
    """The shape of a label region (brush mask or polygon).

    Raises:
        InvalidGeometryError: if the region has no usable area.
    """
    if region.mask is not None:
        return mask_shape(region.mask)
    if region.pixel_xy is None:
        raise InvalidGeometryError("region without points; not used")
    return polygon_shape(region.pixel_xy)


@dataclass(frozen=True)
class LabelRegion:
    """A region of an annotation that labels a known class: its position in the result list and class name."""

    index: int
    region: Region
    class_name: str


def label_regions(
    results: Iterable[dict[str, object]],
    size: ImageSize,
    known: Container[str],
    report: Callable[[str], None],
) -> Iterator[LabelRegion]:
    """The label regions of one Label Studio annotation's ``results`` drawn on an image of ``size``.

    SAM prompts (key points, rectangles) are skipped silently: they are not labels. Regions that
    cannot be read, or whose labels are all outside ``known``, are passed to ``report`` and skipped.
    When a region carries several labels the last known one is its class.
    """
    for index, result in enumerate(results):
        try:
            region = parse_result(result, size)
        except InvalidGeometryError as exc:
            report(f"region not used: {exc}")
            continue
        if region.kind not in LABEL_KINDS:
            continue
        names = [label for label in region.labels if label in known]
        if not names:
            labels = ", ".join(region.labels) or "(none)"
            report(f"label {labels} is not in the class catalogue; region not used")
            continue
        yield LabelRegion(index, region, names[-1])


def without_holes(polygon: Polygon) -> list[Polygon]:
    """``polygon`` cut into hole-free polygons along lines through its holes; their union is ``polygon``.

    Label Studio polygons have no holes (a region is one ``points`` ring), so a polygon with holes
    becomes several regions. Each cut crosses the first hole along its longer side (vertical or
    horizontal), at a whole pixel coordinate strictly inside the hole's extent when there is one
    (else at its middle), so pieces of a pixel outline keep pixel-corner vertices; pieces are cut
    again until none has a hole. Coordinates are pixel ``(col, row)`` of the image the polygon is on.
    """
    if not polygon.interiors:
        return [polygon]
    left, bottom, right, top = polygon.bounds
    hole_left, hole_bottom, hole_right, hole_top = Polygon(polygon.interiors[0]).bounds
    if hole_right - hole_left >= hole_top - hole_bottom:
        cut = _inside(hole_left, hole_right)
        halves = (box(left - 1, bottom - 1, cut, top + 1), box(cut, bottom - 1, right + 1, top + 1))
    else:
        cut = _inside(hole_bottom, hole_top)
        halves = (box(left - 1, bottom - 1, right + 1, cut), box(left - 1, cut, right + 1, top + 1))
    return [
        piece
        for half in halves
        for part in _areal_polygons(polygon.intersection(half))
        for piece in without_holes(part)
    ]


def _inside(low: float, high: float) -> float:
    """A whole number strictly between ``low`` and ``high`` when there is one, else their middle."""
    middle = float(np.floor((low + high) / 2))
    return middle if low < middle < high else (low + high) / 2


def _areal_polygons(geometry: BaseGeometry) -> list[Polygon]:
    """The polygons with area in a geometry (intersections may also give lines and points)."""
    if isinstance(geometry, Polygon):
        return [geometry] if geometry.area > 0 else []
    return [part for g in getattr(geometry, "geoms", []) for part in _areal_polygons(g)]


def _polygonal_parts(geometry: BaseGeometry) -> list[BaseGeometry]:
    """The polygons inside a geometry (``make_valid`` may also return lines and points)."""
    if geometry.geom_type == "Polygon":
        return [geometry]
    if geometry.geom_type in ("MultiPolygon", "GeometryCollection"):
        return [part for g in geometry.geoms for part in _polygonal_parts(g)]
    return []
