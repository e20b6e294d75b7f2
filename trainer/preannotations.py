"""Masks -> Label Studio results (a brush region, and simplified polygons when the project has them)."""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
from rasterio.features import shapes, sieve
from shapely.geometry import Polygon

from geolabel.classes import LabelClass
from geolabel.lsmodels import ProjectSchema
from georef.labelstudio import ImageSize, brush_result, polygon_result

#: Polygon simplification tolerance in tile pixels (Douglas-Peucker, topology preserved).
SIMPLIFY_PX = 1.0
#: Connected parts of fewer pixels get no polygon (they stay in the brush mask).
MIN_POLYGON_PX = 16


def region_id() -> str:
    """A fresh region id (10 hex digits)."""
    return secrets.token_hex(5)


def mask_results(mask: npt.NDArray[np.bool_], label: str, schema: ProjectSchema) -> list[dict[str, Any]]:
    """Results for one class mask on a tile: a brush region, plus a polygon per part if the project has them.

    An empty mask gives no result.
    """
    if not mask.any():
        return []
    results = [brush_region(mask, label, schema)]
    if schema.polygon is not None:
        size = ImageSize(int(mask.shape[1]), int(mask.shape[0]))
        for ring in mask_polygons(mask):
            results.append(_with_id(polygon_result(ring, size, label, schema.polygon, schema.image)))
    return results


def mask_polygons(mask: npt.NDArray[np.bool_]) -> list[npt.NDArray[np.float64]]:
    """Outer rings ``(N, 2)`` in pixel ``(col, row)`` of the mask's parts, simplified, largest first.

    Rings follow pixel edges before simplification (so a one-pixel shift would show), holes are dropped:
    Label Studio polygons have none (the brush region keeps them).
    """
    # Sieving (in GDAL) first drops the specks, which are most of the parts of a noisy mask.
    sieved = sieve(mask.astype(np.uint8), size=MIN_POLYGON_PX, connectivity=8)
    parts: list[npt.NDArray[np.float64]] = []
    for geometry, value in shapes(sieved, mask=sieved.astype(bool), connectivity=8):
        exterior = np.asarray(geometry["coordinates"][0], dtype=np.float64)  # GeoJSON: exterior first
        if value == 1 and _ring_area(exterior) >= MIN_POLYGON_PX:
            parts.append(exterior)
    parts.sort(key=_ring_area, reverse=True)
    rings = []
    for exterior in parts:
        simple = Polygon(exterior).simplify(SIMPLIFY_PX, preserve_topology=True)
        coords = np.asarray(simple.exterior.coords, dtype=np.float64)[:-1]  # drop the closing point
        if len(coords) >= 3:
            rings.append(coords)
    return rings


def _ring_area(ring: npt.NDArray[np.float64]) -> float:
    """Area enclosed by a closed ``(N, 2)`` ring (shoelace formula)."""
    x, y = ring[:, 0], ring[:, 1]
    return 0.5 * abs(float(np.dot(x[:-1], y[1:]) - np.dot(x[1:], y[:-1])))


def class_results(
    classes: Sequence[LabelClass], class_ids: npt.NDArray[np.uint8], schema: ProjectSchema
) -> list[dict[str, Any]]:
    """One brush region per class present in a map of class ids (0 = background), for a prediction.

    Classes the project's labelling config no longer has are left out: nothing can draw them.
    """
    results = []
    for entry in classes:
        mask = class_ids == entry.id
        if entry.name in schema.labels and mask.any():
            results.append(brush_region(mask, entry.name, schema))
    return results


def brush_region(mask: npt.NDArray[np.bool_], label: str, schema: ProjectSchema) -> dict[str, Any]:
    """One brush region of class ``label`` with a fresh id."""
    return _with_id(brush_result(mask, label, schema.brush, schema.image))


def _with_id(result: dict[str, object]) -> dict[str, Any]:
    return {"id": region_id(), **result}
