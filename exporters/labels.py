"""Human annotations as polygons on Earth: the ``labels`` and ``labels_merged`` layers of ``labels.gpkg``.

Every label region of every annotation (brush or polygon; SAM prompts are not
labels) becomes one feature. Polygons keep their exact vertices; brush masks are
vectorised along pixel edges. Both are placed through their raster's transform
at raster-pixel coordinates (tile pixel + tile offset), so a pixel corner shared
by two tiles has bit-identical coordinates in both, and shapes cut by a tile
edge merge exactly. Invalid polygons are repaired (``note`` says so); regions
that cannot be exported (no area, unknown class, a task whose tile is gone from
the registry) are reported, never dropped silently. Background is no feature (it is
every labelled pixel no feature covers), and neither are ``unsure`` regions: they
mark pixels left out of training, not a class.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import shapely
from shapely import STRtree, union_all
from shapely.geometry.base import BaseGeometry

from geolabel.classes import UNSURE_LABEL
from geolabel.lsmodels import LabelledTask
from georef.errors import InvalidGeometryError
from georef.labelstudio import ImageSize
from georef.registry import RasterRecord, TileRecord
from georef.shapes import label_regions, region_shape
from trainer.harvest import Problem

LABELS_SCHEMA = {
    "class_id": "int64",
    "class_name": "str",
    "annotator": "str",
    "task_id": "int64",
    "tile_id": "str",
    "raster": "str",
    "annotation_id": "int64",
    "region": "int64",
    "kind": "str",
    "created_at": "str",
    "updated_at": "str",
    "note": "str",
}
MERGED_SCHEMA = {"class_id": "int64", "class_name": "str", "regions": "int64", "area": "float64"}


@dataclass(frozen=True)
class LabelFeature:
    """One region of one annotation, on Earth in its raster's CRS (``crs_text``), with its attributes."""

    geometry: BaseGeometry
    crs_text: str
    attributes: Mapping[str, object]


@dataclass(frozen=True)
class MergedFeature:
    """A connected area of one class, merged across regions, annotations and tile borders."""

    geometry: BaseGeometry
    class_id: int
    class_name: str
    regions: int


def task_features(
    task: LabelledTask,
    tile: TileRecord,
    raster: RasterRecord,
    class_ids: Mapping[str, int],
    problems: list[Problem],
) -> list[LabelFeature]:
    """The label features of one Label Studio task (cancelled annotations are skipped)."""
    task_id = task.id
    size = ImageSize(tile.window.width, tile.window.height)
    to_world = _placement(tile, raster)
    features = []
    for annotation in task.submitted:
        annotation_id = annotation.id

        def report(message: str, annotation_id: int = annotation_id) -> None:
            problems.append(Problem(task_id, annotation_id, message))

        common = {
            "annotator": annotation.annotator,
            "task_id": task_id,
            "tile_id": tile.id,
            "raster": raster.path,
            "annotation_id": annotation_id,
            "created_at": _timestamp(annotation.created_at),
            "updated_at": _timestamp(annotation.updated_at),
        }
        for labelled in label_regions(annotation.result, size, {*class_ids, UNSURE_LABEL}, report):
            if labelled.class_name not in class_ids:  # unsure: not a class, not reported either
                continue
            try:
                shape = region_shape(labelled.region)
            except InvalidGeometryError as exc:
                report(str(exc))
                continue
            if shape.note:
                report(f"{shape.note} (exported, note kept on the feature)")
            name = labelled.class_name
            attributes = {**common, "class_id": class_ids[name], "class_name": name, "region": labelled.index,
                          "kind": labelled.region.kind, "note": shape.note or ""}  # fmt: skip
            features.append(
                LabelFeature(shapely.transform(shape.geometry, to_world), tile.crs_text, attributes)
            )
    return features


def merge(
    geometries_by_class: Mapping[int, Sequence[BaseGeometry]], names: Mapping[int, str]
) -> list[MergedFeature]:
    """Per class, the union of its regions split into connected polygons, each with its region count."""
    merged = []
    for class_id in sorted(geometries_by_class):
        geometries = list(geometries_by_class[class_id])
        if not geometries:
            continue
        tree = STRtree(geometries)
        for part in _polygons(union_all(geometries)):
            regions = len(tree.query(part, predicate="intersects"))
            merged.append(MergedFeature(part, class_id, names[class_id], regions))
    return merged


def _placement(
    tile: TileRecord, raster: RasterRecord
) -> Callable[[npt.NDArray[np.float64]], npt.NDArray[np.float64]]:
    """Tile pixel ``(col, row)`` -> world, through the raster's transform (see the module docstring)."""
    offset = np.array([tile.window.col_off, tile.window.row_off], dtype=np.float64)

    def to_world(points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return raster.grid.pixel_to_world(points + offset)

    return to_world


def _polygons(geometry: BaseGeometry) -> Iterable[BaseGeometry]:
    if geometry.geom_type == "Polygon":
        yield geometry
    elif hasattr(geometry, "geoms"):
        for part in geometry.geoms:
            yield from _polygons(part)


def _timestamp(value: object) -> str:
    """Label Studio times as ISO 8601 text (the SDK gives datetimes, raw JSON gives strings)."""
    if value is None:
        return ""
    isoformat = getattr(value, "isoformat", None)
    return str(isoformat()) if callable(isoformat) else str(value)
