"""Masks and model predictions -> Label Studio results annotators can edit.

A model's prediction becomes, per foreground class (never background), simplified
polygons when the project's labelling config has a polygon control, else one brush
region; specks under :data:`MIN_POLYGON_PX` pixels are sieved away (holes that small
are filled). A class too fragmented to edit as polygons (:func:`too_fragmented`) is one
brush region too. A prediction where the model sees no class gives no region at all.

Label Studio polygons have no holes (a region is one ``points`` ring). A part with
holes is cut along a pixel-edge line through each hole (vertical or horizontal, the
hole's longer side) into hole-free polygons whose union is exactly the part, so the
hole stays out of every region (:func:`georef.shapes.without_holes`). All pieces are
simplified together as a coverage (``shapely.coverage_simplify``), so their shared cut
edges stay identical: no gap or overlap appears between them, and every vertex is a
pixel corner of the mask.
"""

from __future__ import annotations

import secrets
from collections.abc import Sequence
from typing import Any

import numpy as np
import numpy.typing as npt
import shapely
from rasterio.features import shapes, sieve
from shapely.geometry import Polygon, shape
from shapely.geometry.base import BaseGeometry

from geolabel.classes import BACKGROUND, LabelClass
from geolabel.lsmodels import ProjectSchema
from georef.labelstudio import ImageSize, brush_result, polygon_result
from georef.shapes import without_holes
from trainer.predictions import StoredPrediction
from trainer.scoring import UncertaintyMethod, prediction_score

#: Polygon simplification tolerance in tile pixels (Visvalingam-Whyatt: about the square root of the
#: area of the triangles removed, so the one-pixel stairs of a pixel outline go).
SIMPLIFY_PX = 1.0
#: Connected parts (and holes) of fewer pixels are sieved away: no polygon, no pre-annotation.
MIN_POLYGON_PX = 16
#: A mask whose outline (pixel edges between it and the rest) is longer than this many times the
#: tile's height + width is too fragmented to edit as polygons (thousands of pieces, seconds to
#: cut): it is given as a brush region, exact and quick, instead.
MAX_OUTLINE = 8


def region_id() -> str:
    """A fresh region id (10 hex digits)."""
    return secrets.token_hex(5)


def mask_results(mask: npt.NDArray[np.bool_], label: str, schema: ProjectSchema) -> list[dict[str, Any]]:
    """Results for one class mask on a tile (a SAM click): a brush region, plus hole-free polygons.

    The polygons (:func:`mask_polygons`) come only when the project has a polygon control and the
    mask is not :func:`too_fragmented`. An empty mask gives no result.
    """
    if not mask.any():
        return []
    results = [brush_region(mask, label, schema)]
    if schema.polygon is None:
        return results
    sieved = _sieved(mask)
    if too_fragmented(sieved):
        return results
    size = ImageSize(int(mask.shape[1]), int(mask.shape[0]))
    for ring in _rings(sieved):
        results.append(_with_id(polygon_result(ring, size, label, schema.polygon, schema.image)))
    return results


def too_fragmented(mask: npt.NDArray[np.bool_]) -> bool:
    """True when the mask's outline is longer than :data:`MAX_OUTLINE` times its height + width."""
    outline = np.count_nonzero(mask[1:] != mask[:-1]) + np.count_nonzero(mask[:, 1:] != mask[:, :-1])
    return outline > MAX_OUTLINE * (mask.shape[0] + mask.shape[1])


def mask_polygons(mask: npt.NDArray[np.bool_]) -> list[npt.NDArray[np.float64]]:
    """Hole-free rings ``(N, 2)`` in pixel ``(col, row)`` covering the mask's parts, largest part first.

    Parts and holes under :data:`MIN_POLYGON_PX` pixels are sieved first. Rings follow pixel edges
    before simplification (so a one-pixel shift would show); a part with holes comes as several
    rings whose union is the part, holes left out (see the module docstring).
    """
    return _rings(_sieved(mask))


def _sieved(mask: npt.NDArray[np.bool_]) -> npt.NDArray[np.bool_]:
    """The mask without parts or holes under :data:`MIN_POLYGON_PX` pixels (GDAL's sieve)."""
    # Specks are most of the parts of a noisy mask.
    sieved: npt.NDArray[np.uint8] = sieve(mask.astype(np.uint8), size=MIN_POLYGON_PX, connectivity=8)
    return np.asarray(sieved == 1, dtype=bool)


def _rings(sieved: npt.NDArray[np.bool_]) -> list[npt.NDArray[np.float64]]:
    """:func:`mask_polygons` of a mask sieved already."""
    parts = [
        _valid(shape(geometry))
        for geometry, value in shapes(sieved.astype(np.uint8), mask=sieved, connectivity=8)
        if value == 1
    ]
    parts = [part for part in parts if part.area >= MIN_POLYGON_PX]
    parts.sort(key=lambda part: part.area, reverse=True)
    rings = []
    for part in parts:
        pieces = [piece for p in _polygons(part) for piece in without_holes(p)]
        for simple in shapely.coverage_simplify(pieces, SIMPLIFY_PX):
            for polygon in _polygons(simple):
                coords = np.asarray(polygon.exterior.coords, dtype=np.float64)[:-1]  # no closing point
                if len(coords) >= 3:
                    rings.append(coords)
    return rings


def _valid(geometry: BaseGeometry) -> BaseGeometry:
    """The geometry, repaired when a pixel outline touches itself at a corner (8-connected pixels).

    A zero-width buffer repairs such outlines about 15 times faster than ``make_valid``; it is kept
    only when it covers exactly the outline's area (pixel outlines have exact areas), else
    ``make_valid`` repairs it.
    """
    if geometry.is_valid:
        return geometry
    repaired = geometry.buffer(0)
    return repaired if repaired.area == geometry.area else shapely.make_valid(geometry)


def _polygons(geometry: BaseGeometry) -> list[Polygon]:
    """The polygons with area in a geometry (intersections may also give lines and points)."""
    if isinstance(geometry, Polygon):
        return [geometry] if geometry.area > 0 else []
    return [part for g in getattr(geometry, "geoms", []) for part in _polygons(g)]


def prediction(
    stored: StoredPrediction,
    classes: Sequence[LabelClass],
    schema: ProjectSchema,
    method: UncertaintyMethod,
    version: str,
) -> dict[str, Any]:
    """A model's prediction for one tile as Label Studio takes it: editable regions, score, version.

    The round that pushes predictions and the backend's pre-annotations both build them here, from
    the probabilities as stored, so the same tile and version give the same regions and score.

    Args:
        stored: quantised ``(classes + 1, height, width)`` probabilities (background first), valid mask.
        classes: the model's classes, in the order of the probability bands after background.
        schema: the project's labelling config.
        method: the project's uncertainty method (``[trainer] uncertainty``) for the score.
        version: the model version's name.
    """
    return {
        "result": class_results(classes, class_map(stored, classes), schema),
        "score": prediction_score(stored.proba, stored.valid, method),
        "model_version": version,
    }


def class_map(stored: StoredPrediction, classes: Sequence[LabelClass]) -> npt.NDArray[np.uint8]:
    """Class id of the most probable band per pixel, background (0) where there is no data.

    The argmax of the quantised probabilities, as ``predictions_argmax.tif`` exports it (a tie goes
    to the first band, background first).
    """
    ids = np.asarray([BACKGROUND, *(c.id for c in classes)], dtype=np.uint8)
    return np.where(stored.valid, ids[stored.proba.argmax(axis=0)], BACKGROUND).astype(np.uint8)


def class_results(
    classes: Sequence[LabelClass], class_ids: npt.NDArray[np.uint8], schema: ProjectSchema
) -> list[dict[str, Any]]:
    """Editable regions of a map of class ids (0 = background): foreground classes only.

    Per class present after sieving: one polygon per hole-free piece (:func:`mask_polygons`) when the
    project has a polygon control and the class is not :func:`too_fragmented`, else one brush
    region. Background gets no region; a map without any class gives none at all. Classes the
    labelling config no longer has are left out: nothing can draw them.
    """
    results = []
    size = ImageSize(int(class_ids.shape[1]), int(class_ids.shape[0]))
    for entry in classes:
        if entry.id == BACKGROUND or entry.name not in schema.labels:
            continue
        mask = _sieved(class_ids == entry.id)
        if not mask.any():
            continue
        if schema.polygon is None or too_fragmented(mask):
            results.append(brush_region(mask, entry.name, schema))
            continue
        for ring in _rings(mask):
            results.append(_with_id(polygon_result(ring, size, entry.name, schema.polygon, schema.image)))
    return results


def brush_region(mask: npt.NDArray[np.bool_], label: str, schema: ProjectSchema) -> dict[str, Any]:
    """One brush region of class ``label`` with a fresh id."""
    return _with_id(brush_result(mask, label, schema.brush, schema.image))


def _with_id(result: dict[str, object]) -> dict[str, Any]:
    return {"id": region_id(), **result}
