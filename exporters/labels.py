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
import rasterio
import rasterio.errors
import shapely
from shapely import STRtree, union_all
from shapely.geometry import MultiPolygon, Polygon
from shapely.geometry.base import BaseGeometry

from exporters.errors import ExportInputError
from geolabel.classes import UNSURE_LABEL
from geolabel.lsmodels import LabelledTask
from georef.errors import InvalidGeometryError
from georef.labelstudio import ImageSize
from georef.registry import RasterRecord, TileRecord
from georef.shapes import label_regions, mask_shape, region_shape
from importers.display import window_valid
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
    "created_at": "datetime",
    "updated_at": "datetime",
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
    clip_to_valid: bool = False,
) -> list[LabelFeature]:
    """The label features of one Label Studio task (cancelled annotations are skipped).

    With ``clip_to_valid``, each region is cut to the tile's pixels that hold image data
    (:func:`valid_area`); a region left with no area is reported, not exported.

    Raises:
        ExportInputError: if ``clip_to_valid`` and the tile's raster cannot be read.
    """
    task_id = task.id
    size = ImageSize(tile.window.width, tile.window.height)
    to_world = _placement(tile, raster)
    valid = valid_area(tile, raster) if clip_to_valid and task.submitted else None
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
            geometry = shapely.transform(shape.geometry, to_world)
            note = shape.note or ""
            if valid is not None:
                geometry, note = _clipped(geometry, valid, note)
                if geometry.is_empty:
                    report(f"region {labelled.index} lies on pixels without image; not exported (clipped)")
                    continue
            name = labelled.class_name
            attributes = {**common, "class_id": class_ids[name], "class_name": name, "region": labelled.index,
                          "kind": labelled.region.kind, "note": note}  # fmt: skip
            features.append(LabelFeature(geometry, tile.crs_text, attributes))
    return features


def valid_area(tile: TileRecord, raster: RasterRecord) -> BaseGeometry:
    """The tile's pixels that hold image data, as polygons on Earth in the raster's CRS.

    Validity is what the display tiles use (:func:`importers.display.valid_mask`: nodata values, alpha
    band, internal mask, NaN), read from the raster over the tile's window; edges follow pixel edges,
    placed like the labels, so clipping never moves a label's vertex.

    Raises:
        ExportInputError: if the raster cannot be read.
    """
    try:
        valid = window_valid(raster.path, raster.display_bands, tile.window)
    except rasterio.errors.RasterioIOError as exc:
        raise ExportInputError(
            f"cannot read {raster.path} to clip labels to its image data ({exc}); restore the raster or "
            "export without --clip-to-valid"
        ) from None
    if valid.all():
        whole = shapely.box(0, 0, tile.window.width, tile.window.height)
        return shapely.transform(whole, _placement(tile, raster))
    if not valid.any():
        return Polygon()
    return shapely.transform(mask_shape(valid).geometry, _placement(tile, raster))


def _clipped(geometry: BaseGeometry, valid: BaseGeometry, note: str) -> tuple[BaseGeometry, str]:
    """``geometry`` cut to ``valid``; the note says so when the cut removed area."""
    if valid.contains(geometry):
        return geometry, note
    inside = shapely.intersection(geometry, valid)
    parts = list(_polygons(inside))
    clipped: BaseGeometry = parts[0] if len(parts) == 1 else MultiPolygon(parts)
    return clipped, "; ".join(filter(None, [note, "clipped to valid image data"]))


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


def _timestamp(value: object) -> str | None:
    """Label Studio times as ISO 8601 text (the SDK gives datetimes, raw JSON gives strings); None: unknown.

    :func:`exporters.gpkg.frame` stores them as GeoPackage datetimes (UTC).
    """
    if value is None or value == "":
        return None
    isoformat = getattr(value, "isoformat", None)
    return str(isoformat()) if callable(isoformat) else str(value)
