"""``geolabel import-labels``: existing vector labels (GeoPackage, GeoJSON, Shapefile) onto a project's tasks.

The inverse of the ``labels`` export (:mod:`exporters.labels`): each polygon is reprojected to
each raster's CRS, mapped to that raster's continuous pixel ``(col, row)`` through the inverse of
its transform, clipped to the windows of the tiles it touches (windows are the registry's), and
shifted by the tile's offset, which undoes the export's ``pixel + offset -> transform`` exactly.
Pixel coordinates within :data:`SNAP_PX` of a whole number are taken as that number: the export
writes pixel corners through a floating-point transform, and snapping them back keeps a shape that
ends on a tile's edge from leaving a sliver (1e-9 pixels wide) on the neighbouring tile.

Label Studio polygons have no holes: a polygon with holes becomes hole-free pieces whose union is
the polygon (:func:`georef.shapes.without_holes`). A project whose labelling config has no polygon
control gets one brush region per class and tile instead, rasterised by pixel centres (as the
trainer rasterises polygons): pixel-quantised, no longer exact. Points and lines are not areas:
they are reported, not placed (buffering them would invent an extent).

Regions go to the tasks either as predictions (pre-annotations to correct, under their own model
version; a re-run replaces that version's predictions) or as annotations to review (a ledger under
the project's folder records what was created per source file and task, so a re-run adds nothing
twice). Every feature that cannot be placed is counted with the reason.
"""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import geopandas as gpd
import numpy as np
import numpy.typing as npt
import shapely
from affine import Affine
from rasterio.crs import CRS
from rasterio.features import rasterize
from rasterio.warp import transform as transform_points
from shapely import STRtree
from shapely.geometry import Polygon, box
from shapely.geometry.base import BaseGeometry

from geolabel.config import Config
from geolabel.lsclient import LabelStudioClient
from geolabel.lsmodels import ProjectSchema, read_schema
from geolabel.progress import Progress, SilentProgress
from georef.labelstudio import ImageSize, brush_result, polygon_result
from georef.registry import RasterRecord, TileRecord
from georef.shapes import without_holes
from importers.errors import LabelFileError
from importers.labelfile import UNKNOWN_CLASS, class_labels, file_digest, read_label_file
from importers.pipeline import import_lock
from importers.project import ProjectTiles, load_project_tiles

#: Pixel coordinates this close to a whole number are snapped to it (see the module docstring).
SNAP_PX = 1e-6
#: Features placed per step of the progress bar.
CHUNK = 500
#: The ledger of annotations created from label files, in the project's folder (JSON lines).
LEDGER_NAME = "label-imports.jsonl"

EMPTY = "no geometry"
NOT_AREA = "not an area (points and lines are not placed)"
NOT_IN_CONFIG = "class not in the project's labelling config (run geolabel import to update it)"
OUTSIDE = "outside every tile of the project's rasters"
NO_TASK = "only on tiles without a Label Studio task (all nodata, or their import is unfinished)"
TOO_SMALL = "covers no pixel centre of any tile (brush regions are pixel masks)"


@dataclass(frozen=True)
class LabelImportOptions:
    """What to import and how.

    Attributes:
        source: the vector file (GeoPackage, GeoJSON, Shapefile, anything GDAL reads).
        layer: the layer to read; required when the file has several layers with geometries.
        class_field: attribute holding class names (any case) or ids of the catalogue.
        class_name: the class of every feature, when there is no class field.
        as_annotations: False: predictions (pre-annotations to correct); True: annotations to review.
        model_version: the predictions' model version (default ``import-labels:<file stem>``).
        crs: the CRS of a file that records none (an error otherwise); refused if the file says another.
    """

    source: Path
    layer: str | None = None
    class_field: str | None = None
    class_name: str | None = None
    as_annotations: bool = False
    model_version: str | None = None
    crs: str | None = None

    @property
    def version(self) -> str:
        """The predictions' model version."""
        return self.model_version or f"import-labels:{self.source.stem}"


@dataclass
class LabelImportReport:
    """What an import of labels did, and every feature it could not place (counted by reason)."""

    source: str
    layer: str | None
    mode: Literal["predictions", "annotations"]
    model_version: str | None
    features_read: int = 0
    features_placed: int = 0
    regions: int = 0
    tasks_touched: int = 0
    created: int = 0
    kept: int = 0
    replaced: int = 0
    repaired: int = 0
    partly_outside: int = 0
    tiles_without_task: int = 0
    not_placed: dict[str, int] = field(default_factory=dict)
    unknown_classes: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        """The report as lines of text for the command line."""
        done = [f"{self.features_placed} of {self.features_read} features placed as {self.regions} regions "
                f"on {self.tasks_touched} tasks; {self.created} {self.mode} created"]  # fmt: skip
        if self.model_version:
            done[0] += f" (model version {self.model_version!r})"
        if self.replaced:
            done.append(f"{self.replaced} predictions of an earlier import of this version replaced")
        if self.kept:
            done.append(f"{self.kept} tasks already had this file's annotations (ledger); not created again")
        done += [f"not placed, {reason}: {count}" for reason, count in sorted(self.not_placed.items())]
        if self.unknown_classes:
            values = ", ".join(f"{value!r} x{count}" for value, count in sorted(self.unknown_classes.items()))
            done.append(f"class values not in the catalogue: {values}")
        if self.partly_outside:
            done.append(
                f"{self.partly_outside} features lie partly outside the tiles; only their inside is placed"
            )
        if self.repaired:
            done.append(f"{self.repaired} invalid polygons repaired (make_valid) before placing")
        if self.tiles_without_task:
            done.append(
                f"{self.tiles_without_task} tiles touched have no task (all nodata); nothing put there"
            )
        return done + self.notes

    def skip(self, reason: str, count: int = 1) -> None:
        """Count ``count`` features not placed for ``reason``."""
        if count:
            self.not_placed[reason] = self.not_placed.get(reason, 0) + count


def import_labels(
    config: Config, client: LabelStudioClient, options: LabelImportOptions, progress: Progress | None = None
) -> LabelImportReport:
    """Put the polygons of a vector file on the project's tasks as predictions or annotations.

    The file is read and its classes checked before anything else (no request to Label Studio).

    Raises:
        LabelFileError: if the file cannot be read, has no CRS, several layers and no ``layer``, or its
            classes cannot be told (no class field and several classes).
        ImportFailedError: if the project has no imported raster, or another import is running.
        LabelStudioError: if Label Studio cannot be read or refuses what is sent.
    """
    bar = progress or SilentProgress()
    mode: Literal["predictions", "annotations"] = "annotations" if options.as_annotations else "predictions"
    frame = read_label_file(options.source, options.layer, options.crs)
    labels, unknown = class_labels(frame, config.classes, options.class_field, options.class_name)
    report = LabelImportReport(str(options.source), options.layer, mode,
                               None if options.as_annotations else options.version)  # fmt: skip
    report.features_read = len(frame)
    report.unknown_classes = dict(unknown)
    report.skip(UNKNOWN_CLASS, sum(unknown.values()))
    project = load_project_tiles(config, LabelFileError)
    with import_lock(config.data_dir):
        schema = read_schema(str(client.project(project.project_id)["label_config"]))
        live = {state.task_id for state in client.tasks(project.project_id)}
        features = _usable_features(frame, labels, schema, report)
        placed = _place(features, frame.crs, project, schema, live, report, bar)
        if options.as_annotations:
            _create_annotations(config, client, options, placed, report, bar)
        else:
            _push_predictions(client, project.project_id, options.version, placed, report, bar)
    return report


# --- geometry ---------------------------------------------------------------------


@dataclass(frozen=True)
class _Feature:
    """A usable feature: its row in the file, polygonal geometry (source CRS, valid) and label."""

    row: int
    geometry: BaseGeometry
    label: str


def _usable_features(
    frame: gpd.GeoDataFrame, labels: Sequence[str | None], schema: ProjectSchema, report: LabelImportReport
) -> list[_Feature]:
    """The features with an area and a class the project can show; the others are counted."""
    features = []
    drawable = {*schema.labels}
    for row, (geometry, label) in enumerate(zip(frame.geometry, labels, strict=True)):
        if label is None:
            continue  # counted as an unknown class already
        if geometry is None or geometry.is_empty:
            report.skip(EMPTY)
            continue
        area = _areal(shapely.force_2d(geometry))
        if area is None:
            report.skip(NOT_AREA)
            continue
        if not area.is_valid:
            area = _areal(shapely.make_valid(area))
            report.repaired += 1
            if area is None:
                report.skip(EMPTY)
                continue
        if label not in drawable:
            report.skip(NOT_IN_CONFIG)
            continue
        features.append(_Feature(row, area, label))
    return features


def _areal(geometry: BaseGeometry) -> BaseGeometry | None:
    """The polygonal part of a geometry (None when it has none)."""
    parts = _polygons(geometry)
    if not parts:
        return None
    return parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)


def _polygons(geometry: BaseGeometry) -> list[Polygon]:
    if isinstance(geometry, Polygon):
        return [geometry] if not geometry.is_empty and geometry.area > 0 else []
    return [part for g in getattr(geometry, "geoms", []) for part in _polygons(g)]


@dataclass
class _Placement:
    """Regions per task, and per feature whether it was placed and why not."""

    results: dict[int, list[dict[str, Any]]] = field(default_factory=dict)
    placed: set[int] = field(default_factory=set)
    touched: set[int] = field(default_factory=set)  # features on some tile (with a task or not)
    on_task: set[int] = field(default_factory=set)  # features on a tile with a task
    covered: set[int] = field(default_factory=set)  # features wholly inside the tiles of some raster
    bare_tiles: set[str] = field(default_factory=set)


def _place(
    features: Sequence[_Feature],
    source_crs: object,
    project: ProjectTiles,
    schema: ProjectSchema,
    live: set[int],
    report: LabelImportReport,
    bar: Progress,
) -> _Placement:
    """Place every feature on every tile it covers part of, raster by raster.

    Only the features near a raster (their extent meets the raster's footprint, in the file's CRS) are
    reprojected and placed on it, so a file covering a whole territory costs each raster its own part.
    """
    placement = _Placement()
    near = STRtree([f.geometry for f in features])
    for raster in project.rasters.values():
        tiles = [t for t in project.tiles if t.raster_id == raster.id]
        chosen = _near(near, raster, source_crs)
        if not tiles or not len(chosen):
            continue
        layout = _Layout(tiles)
        pixels = _to_raster_pixels(
            _in_crs([features[i].geometry for i in chosen], source_crs, raster.grid.crs), raster
        )
        brush: _BrushPieces = {}
        bar.start(f"placing {Path(report.source).name} on {raster.name}", len(chosen))
        for start in range(0, len(chosen), CHUNK):
            chunk = range(start, min(start + CHUNK, len(chosen)))
            for k in chunk:
                index = int(chosen[k])
                _place_feature(
                    index, features[index].label, pixels[k], layout, schema, live, placement, brush
                )
            bar.advance(len(chunk))
        _brush_regions(brush, layout, schema, placement)
    _count(features, placement, report)
    return placement


def _near(tree: STRtree, raster: RasterRecord, source_crs: object) -> npt.NDArray[np.intp]:
    """Indices (ascending) of the features whose extent meets ``raster``'s extent in the file's CRS.

    The extent is that of the raster's outline (16 points an edge, as edges bend under reprojection) in
    the file's CRS, widened by 2 % of its size; a raster whose outline the file's CRS cannot hold keeps
    every feature. The exact test, tile by tile, follows.
    """
    steps = np.linspace(0.0, 1.0, 17)
    width, height = raster.grid.width, raster.grid.height
    outline = np.concatenate([
        np.column_stack((steps * width, np.zeros_like(steps))),
        np.column_stack((np.full_like(steps, width), steps * height)),
        np.column_stack((steps[::-1] * width, np.full_like(steps, height))),
        np.column_stack((np.zeros_like(steps), steps[::-1] * height)),
    ])  # fmt: skip
    world = raster.grid.pixel_to_world(outline)
    every = np.arange(len(tree.geometries), dtype=np.intp)
    target = CRS.from_user_input(source_crs)
    if target != raster.grid.crs:
        xs, ys = transform_points(raster.grid.crs, target, world[:, 0].tolist(), world[:, 1].tolist())
        world = np.column_stack((xs, ys))
    if not np.isfinite(world).all():
        return every
    (left, bottom), (right, top) = world.min(axis=0), world.max(axis=0)
    margin = 0.02 * max(right - left, top - bottom)
    extent = shapely.box(left - margin, bottom - margin, right + margin, top + margin)
    return np.sort(np.asarray(tree.query(extent), dtype=np.intp))


def _count(features: Sequence[_Feature], placement: _Placement, report: LabelImportReport) -> None:
    for index in range(len(features)):
        if index in placement.placed:
            report.features_placed += 1
            if index not in placement.covered:
                report.partly_outside += 1
        elif index not in placement.touched:
            report.skip(OUTSIDE)
        elif index not in placement.on_task:
            report.skip(NO_TASK)
        else:
            report.skip(TOO_SMALL)
    report.tiles_without_task = len(placement.bare_tiles)
    report.regions = sum(len(r) for r in placement.results.values())
    report.tasks_touched = len(placement.results)


class _Layout:
    """A raster's tiles with their windows as boxes in raster pixels, indexed (STRtree)."""

    def __init__(self, tiles: Sequence[TileRecord]) -> None:
        self.tiles = list(tiles)
        self.windows = [box(t.window.col_off, t.window.row_off, t.window.col_end, t.window.row_end)
                        for t in tiles]  # fmt: skip
        self.tree = STRtree(self.windows)


#: Brush mode: per tile id and label, the (feature index, piece in tile pixels) to rasterise.
_BrushPieces = dict[str, dict[str, list[tuple[int, BaseGeometry]]]]


def _in_crs(geometries: Sequence[BaseGeometry], source: object, target: CRS) -> npt.NDArray[np.object_]:
    """The geometries reprojected (vertex by vertex, as the export reprojects) to ``target``."""
    series = gpd.GeoSeries(list(geometries), crs=source)
    if series.crs is not None and CRS.from_user_input(series.crs) == target:
        return np.asarray(series.values, dtype=object)
    return np.asarray(series.to_crs(target.to_wkt()).values, dtype=object)


def _to_raster_pixels(world: npt.NDArray[np.object_], raster: RasterRecord) -> list[BaseGeometry | None]:
    """World geometries -> continuous raster pixel ``(col, row)``, snapped (None: not projectable here)."""

    def to_pixel(points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        return _snap(raster.grid.world_to_pixel(points))

    out: list[BaseGeometry | None] = []
    for geometry in shapely.transform(world, to_pixel):
        if geometry is None or geometry.is_empty or not np.isfinite(shapely.get_coordinates(geometry)).all():
            out.append(None)
            continue
        out.append(geometry if geometry.is_valid else _areal(shapely.make_valid(geometry)))
    return out


def _snap(points: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
    whole = np.rint(points)
    return np.where(np.abs(points - whole) < SNAP_PX, whole, points)


def _place_feature(
    index: int,
    label: str,
    geometry: BaseGeometry | None,
    layout: _Layout,
    schema: ProjectSchema,
    live: set[int],
    placement: _Placement,
    brush: _BrushPieces,
) -> None:
    """Clip one feature (raster pixels) to the tiles it covers; polygon regions, or pieces for the brush."""
    if geometry is None:
        return
    hits = [int(i) for i in layout.tree.query(geometry, predicate="intersects")]
    clipped = {i: _polygons(geometry.intersection(layout.windows[i])) for i in hits}
    hits = [i for i in hits if clipped[i]]
    if not hits:
        return
    placement.touched.add(index)
    if shapely.difference(geometry, shapely.union_all([layout.windows[i] for i in hits])).area == 0:
        placement.covered.add(index)
    for i in hits:
        tile = layout.tiles[i]
        if tile.task_id is None or tile.task_id not in live:
            placement.bare_tiles.add(tile.id)
            continue
        placement.on_task.add(index)
        pieces = [_to_tile(p, tile) for p in clipped[i]]
        if schema.polygon is None:
            brush.setdefault(tile.id, {}).setdefault(label, []).extend((index, p) for p in pieces)
            continue
        regions = _polygon_regions(pieces, tile, label, schema)
        if regions:
            placement.results.setdefault(tile.task_id, []).extend(regions)
            placement.placed.add(index)


def _to_tile(geometry: BaseGeometry, tile: TileRecord) -> BaseGeometry:
    """Raster pixels -> the tile's pixels (the inverse of the export's ``pixel + offset``)."""
    offset = np.array([tile.window.col_off, tile.window.row_off], dtype=np.float64)
    return shapely.transform(geometry, lambda points: points - offset)


def _polygon_regions(
    pieces: Sequence[BaseGeometry], tile: TileRecord, label: str, schema: ProjectSchema
) -> list[dict[str, Any]]:
    """``polygonlabels`` results for the pieces of a feature on a tile, holes cut away."""
    size = ImageSize(tile.window.width, tile.window.height)
    regions = []
    for piece in pieces:
        for polygon in without_holes(piece):
            ring = np.asarray(polygon.exterior.coords, dtype=np.float64)[:-1]  # no closing point
            if len(ring) >= 3 and polygon.area > 0:
                result = polygon_result(ring, size, label, str(schema.polygon), schema.image)
                regions.append({"id": _region_id(), **result})
    return regions


def _brush_regions(
    brush: _BrushPieces, layout: _Layout, schema: ProjectSchema, placement: _Placement
) -> None:
    """One brush region per class and tile (pixel centres inside the pieces), for projects without polygons.

    A feature counts as placed when a pixel centre of some tile lies inside it.
    """
    tiles = {t.id: t for t in layout.tiles}
    for tile_id, by_label in brush.items():
        tile = tiles[tile_id]
        shape = (tile.window.height, tile.window.width)
        for label, pieces in by_label.items():
            mask = _mask([p for _, p in pieces], shape)
            if not mask.any():
                continue
            result = brush_result(mask, label, schema.brush, schema.image)
            placement.results.setdefault(int(tile.task_id or 0), []).append({"id": _region_id(), **result})
            for index, piece in pieces:
                if index not in placement.placed and _mask([piece], shape).any():
                    placement.placed.add(index)


def _mask(pieces: Sequence[BaseGeometry], shape: tuple[int, int]) -> npt.NDArray[np.bool_]:
    """Pixels whose centre lies inside the pieces (tile pixel coordinates), as GDAL rasterises."""
    burnt = rasterize([(p, 1) for p in pieces], out_shape=shape, transform=Affine.identity(), dtype=np.uint8)
    return np.asarray(burnt, dtype=bool)


def _region_id() -> str:
    return secrets.token_hex(5)


# --- pushing to Label Studio ------------------------------------------------------


def _push_predictions(
    client: LabelStudioClient,
    project_id: int,
    version: str,
    placement: _Placement,
    report: LabelImportReport,
    bar: Progress,
) -> None:
    """Replace this version's predictions with the placed regions; show them if no model version is set.

    Label Studio's labelling stream pre-fills a task only with predictions of the project's model
    version (``project.model_version``; none when it is empty), so the imported version becomes the
    project's when it has none (or when Label Studio cleared it because it was this version). A project
    already showing another version (a trained model's) keeps it: the report says how to switch.
    """
    report.replaced = client.delete_predictions(project_id, version)
    predictions = [{"task": task_id, "result": results, "model_version": version}
                   for task_id, results in sorted(placement.results.items())]  # fmt: skip
    bar.start(f"importing predictions {version!r}", len(predictions))
    report.created = client.import_predictions(project_id, predictions)
    bar.advance(len(predictions))
    if not predictions:
        return
    current = str(client.project(project_id).get("model_version") or "")
    if not current:
        client.set_model_version(project_id, version)
        report.notes.append(
            f"the project's model version is now {version!r}: its tasks open pre-filled with these"
        )
    elif current != version:
        report.notes.append(
            f"the project shows model version {current!r}'s pre-annotations; to show these instead choose "
            f"{version!r} in the project's settings (Annotation > Prelabeling / model version)"
        )


def _create_annotations(
    config: Config,
    client: LabelStudioClient,
    options: LabelImportOptions,
    placement: _Placement,
    report: LabelImportReport,
    bar: Progress,
) -> None:
    """One annotation per task holding its regions; tasks the ledger lists for this file are left alone."""
    ledger = _Ledger(config.project_dir / LEDGER_NAME, f"{file_digest(options.source)}:{options.layer or ''}")
    bar.start("creating annotations", len(placement.results))
    for task_id, results in sorted(placement.results.items()):
        if task_id in ledger.done:
            report.kept += 1
        else:
            ledger.record(task_id, client.create_annotation(task_id, results))
            report.created += 1
        bar.advance(1)


class _Ledger:
    """Annotations created from one source (file digest and layer): a JSON line per task, appended."""

    def __init__(self, path: Path, source: str) -> None:
        self.path = path
        self.source = source
        self.done: dict[int, int] = {}
        for entry in _entries(path):
            if entry.get("source") == source:
                self.done[int(entry["task"])] = int(entry["annotation"])

    def record(self, task_id: int, annotation_id: int) -> None:
        """Append that ``annotation_id`` was created on ``task_id`` (flushed to disk before returning)."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"source": self.source, "task": task_id, "annotation": annotation_id})
        with self.path.open("a", encoding="utf-8") as handle:
            handle.write(line + "\n")
            handle.flush()
            os.fsync(handle.fileno())
        self.done[task_id] = annotation_id


def _entries(path: Path) -> Iterator[dict[str, Any]]:
    if not path.is_file():
        return
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            entry = json.loads(line)
        except json.JSONDecodeError:
            continue  # a line cut short by a crash: that annotation may exist once more (said in the docs)
        if isinstance(entry, dict) and {"source", "task", "annotation"} <= entry.keys():
            yield entry
