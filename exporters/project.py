"""``geolabel export``: a project's labels, predictions and tile map, written for GIS teams.

Everything is written into a work folder beside ``out`` and moved into place
only when complete, so a failed or interrupted export never leaves a half
written (or half overwritten) folder. Predictions computed for the export are
kept per tile (:mod:`trainer.predictions`), so a rerun after an interruption
only predicts the tiles still missing.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import geopandas as gpd
import pandas as pd
from rasterio.crs import CRS
from shapely.geometry.base import BaseGeometry

from exporters import gpkg, labels, rasters, styles, tilemap, vectors
from exporters.errors import ExportInputError, OutputExistsError
from exporters.mosaic import ARGMAX_NODATA, MosaicTile, plan_blocks
from geolabel.compute import DaskEngine, InProcess, open_engine
from geolabel.config import Config
from geolabel.locks import hold_lock, is_locked, process_alive
from geolabel.lsclient import LabelStudioClient
from geolabel.lsmodels import LabelledTask
from geolabel.progress import Progress, SilentProgress
from georef.errors import InvalidGeometryError
from georef.grid import Grid, covering_grid, crs_from_text, crs_to_text, reprojected_grid, union_grid
from georef.registry import RasterRecord, TileRecord, TileRegistry
from importers.project import ProjectTiles, load_project_tiles
from trainer.agreement import RasterValidity, class_names, measure, save_agreement
from trainer.harvest import Problem
from trainer.legacy import adopt_legacy_stores
from trainer.predict import PREDICTABLE, predict_missing
from trainer.predictions import PredictionStore
from trainer.rounds import RoundStore, now
from trainer.versions import ModelStore

WHAT = ("labels", "predictions", "tiles")
#: Label features written to the GeoPackage per append.
LABEL_CHUNK = 2000
#: Lock file inside an export's work folder, held while the export lives.
WORK_LOCK = ".export.lock"


@dataclass(frozen=True)
class ExportOptions:
    """What to export, where, and in which CRS (None: the rasters' own)."""

    out: Path
    crs: CRS | None = None
    what: tuple[str, ...] = WHAT
    explicit: bool = False  # ``what`` was asked for: a part that cannot be made is an error, not a note
    overwrite: bool = False
    workers: int = 2  # threads of the in-process engine and of GDAL's COG writer
    announce: Callable[[str], None] | None = None  # told where the work runs (a Dask dashboard link)
    version: str | None = None  # model version whose predictions to export (None: the active one)
    clip_to_valid: bool = False  # cut labels to the pixels that hold image data
    vectors: vectors.VectorOptions = field(default_factory=vectors.VectorOptions)  # predictions.gpkg shaping


@dataclass
class ExportReport:
    """What an export wrote, and what it could not use."""

    out: Path
    crs: str
    files: list[str] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)
    model_version: str | None = None
    problems: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def export_project(
    config: Config, client: LabelStudioClient, options: ExportOptions, progress: Progress | None = None
) -> ExportReport:
    """Write the export folder ``options.out``.

    Raises:
        OutputExistsError: if ``out`` exists and ``overwrite`` is false (checked before any work).
        ExportInputError: for a project with nothing imported, rasters that need ``--crs``, or a part
            asked for explicitly that cannot be made (predictions without a model version).
        LabelStudioError: if Label Studio cannot be read.
    """
    bar = progress or SilentProgress()
    out = options.out.resolve()
    if out.exists() and not options.overwrite:
        raise OutputExistsError(
            f"{out} already exists; choose another --out or add --overwrite to replace it"
        )
    project = _load_project(config)
    target_crs = options.crs or _common_crs(project.rasters.values())
    report = ExportReport(out, crs_to_text(target_crs))
    remove_abandoned_work(out)
    work = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    lock = hold_lock(work / WORK_LOCK)
    try:
        tasks = client.labelled_tasks(project.project_id) if {"labels", "tiles"} & set(options.what) else []
        if "labels" in options.what:
            _export_labels(config, project, tasks, target_crs, work, report, options.clip_to_valid)
        if "predictions" in options.what:
            _export_predictions(config, project, options, target_crs, work, report, bar)
        if "tiles" in options.what:
            _export_tiles(config, project, tasks, target_crs, work, report)
        _write_manifest(config, work, report)
        (work / WORK_LOCK).unlink()  # held until the end; the published folder carries no lock file
        _publish(work, out, options.overwrite)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        lock.close()
    return report


def remove_abandoned_work(out: Path) -> list[Path]:
    """Remove the work folders that killed exports to ``out`` left beside it; return them.

    An export writes into ``.<name>.partial-<pid>`` (and, while publishing over an old export, moves
    that to ``.<name>.old-<pid>``); ``kill -9`` leaves them behind. A folder is abandoned when its
    process is gone, or when the process now holding that pid does not hold the folder's lock (the pid
    was reused). A live export's folder, or an old export still needed because ``out`` is missing, is
    never touched.
    """
    if not out.parent.is_dir():
        return []
    pattern = re.compile(rf"\.{re.escape(out.name)}\.(partial|old)-([0-9]{{1,10}})")
    removed = []
    for path in out.parent.iterdir():
        match = pattern.fullmatch(path.name)
        if match is None or path.is_symlink() or not path.is_dir():
            continue
        kind, pid = match.group(1), int(match.group(2))
        if pid == os.getpid() or (kind == "old" and not out.exists()) or _in_use(path, pid):
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    return removed


def _in_use(work: Path, pid: int) -> bool:
    if not process_alive(pid):
        return False
    lock = work / WORK_LOCK
    return is_locked(lock) or not lock.exists()  # no lock file: a folder being set up, or older geolabel


def _load_project(config: Config) -> ProjectTiles:
    project = load_project_tiles(config, ExportInputError)
    adopt_legacy_stores(config)  # models and predictions are the project's own (config.models_dir)
    return project


def _common_crs(rasters: Iterable[RasterRecord]) -> CRS:
    crss = {crs_to_text(r.grid.crs): r.grid.crs for r in rasters}
    if len(crss) != 1:
        raise ExportInputError(
            f"the project's rasters are in {len(crss)} CRSs ({', '.join(sorted(crss))}); "
            "give --crs to export them in one"
        )
    return next(iter(crss.values()))


# --- labels -------------------------------------------------------------------


def _export_labels(
    config: Config,
    project: ProjectTiles,
    tasks: Sequence[LabelledTask],
    crs: CRS,
    work: Path,
    report: ExportReport,
    clip_to_valid: bool,
) -> None:
    path = work / "labels.gpkg"
    class_ids = {c.name: c.id for c in config.classes}
    names = {c.id: c.name for c in config.classes}
    tiles_by_task = {t.task_id: t for t in project.tiles if t.task_id is not None}
    problems: list[Problem] = []
    by_class: dict[int, list[BaseGeometry]] = {}
    pending: list[labels.LabelFeature] = []
    written = 0
    gpkg.write_layer(
        path, "labels", gpkg.frame([], [], labels.LABELS_SCHEMA, crs), "MultiPolygon", append=False
    )
    for task in [*tasks, None]:  # None: flush the last features
        if task is not None:
            pending += _task_features(task, tiles_by_task, project, class_ids, problems, clip_to_valid)
        if len(pending) < LABEL_CHUNK and task is not None:
            continue
        frame = _in_crs(pending, crs)
        gpkg.write_layer(path, "labels", frame, "MultiPolygon", append=True)
        written += len(frame)
        for class_id, geometry in zip(frame["class_id"], frame.geometry, strict=True):
            by_class.setdefault(int(class_id), []).append(geometry)
        pending = []
    merged = labels.merge(by_class, names)
    rows = [{"class_id": m.class_id, "class_name": m.class_name, "regions": m.regions,
             "area": m.geometry.area}
            for m in merged]  # fmt: skip
    frame = gpkg.frame(rows, [m.geometry for m in merged], labels.MERGED_SCHEMA, crs)
    gpkg.write_layer(path, "labels_merged", frame, "Polygon", append=False)
    categories = [styles.Category(str(c.id), c.name, c.color) for c in config.classes]
    qml = styles.categorized_fill_qml("class_id", categories)
    gpkg.write_styles(path, [gpkg.LayerStyle("labels", "geolabel classes", qml),
                             gpkg.LayerStyle("labels_merged", "geolabel classes", qml)])  # fmt: skip
    report.files.append(path.name)
    report.counts.update(labels=written, labels_merged=len(merged))
    report.problems.extend(str(p) for p in problems)
    if not written:
        report.notes.append("no labels yet: labels.gpkg holds empty layers (annotate tiles in Label Studio)")


def _task_features(
    task: LabelledTask,
    tiles_by_task: Mapping[int, TileRecord],
    project: ProjectTiles,
    class_ids: Mapping[str, int],
    problems: list[Problem],
    clip_to_valid: bool,
) -> list[labels.LabelFeature]:
    tile = tiles_by_task.get(task.id)
    if tile is not None:
        raster = project.rasters[tile.raster_id]
        return labels.task_features(task, tile, raster, class_ids, problems, clip_to_valid)
    if task.submitted:
        problems.append(Problem(task.id, None, "no tile in the registry for this task; not exported"))
    return []


def _in_crs(features: Sequence[labels.LabelFeature], crs: CRS) -> gpd.GeoDataFrame:
    """The features as one GeoDataFrame in ``crs``, reprojected from each raster's CRS."""
    frames = []
    for source in sorted({f.crs_text for f in features}):
        group = [f for f in features if f.crs_text == source]
        frame = gpkg.frame([f.attributes for f in group], [f.geometry for f in group], labels.LABELS_SCHEMA,
                           crs_from_text(source))  # fmt: skip
        frames.append(frame.to_crs(crs))
    if not frames:
        return gpkg.frame([], [], labels.LABELS_SCHEMA, crs)
    return frames[0] if len(frames) == 1 else gpd.GeoDataFrame(pd.concat(frames, ignore_index=True), crs=crs)


# --- predictions --------------------------------------------------------------


def _export_predictions(
    config: Config,
    project: ProjectTiles,
    options: ExportOptions,
    crs: CRS,
    work: Path,
    report: ExportReport,
    bar: Progress,
) -> None:
    version = _prediction_version(config, options, report)
    if version is None:
        return
    tiles = [t for t in project.tiles if t.status in PREDICTABLE]
    store = PredictionStore(config.predictions_dir, version)
    manifest = ModelStore(config.models_dir).manifest(version)
    bands = [rasters.Band(0, "background", "#000000")] + [
        rasters.Band(c.id, c.name, c.color) for c in manifest.classes
    ]
    if any(b.class_id == ARGMAX_NODATA for b in bands):
        raise ExportInputError(
            f"class id {ARGMAX_NODATA} is the class-id raster's nodata; renumber that class"
        )
    vectors.check_regularize(options.vectors, bands)  # before the long work, not after it
    out_grid = _output_grid(list(project.rasters.values()), options.crs)
    with open_engine(config.compute, len(tiles), options.workers, options.announce) as engine:
        model_engine = engine if isinstance(engine, DaskEngine) else None  # in this process: one model pass
        with TileRegistry(config.registry_path) as registry:  # at a time, torch uses the cores itself
            report.notes += predict_missing(
                config, registry, version, tiles, bar, engine=model_engine
            ).problems
        tiles = [t for t in tiles if store.has(t.id)]  # tiles whose raster cannot feed the model are left out
        mosaic_tiles = [MosaicTile(t.id, t.grid, project.rasters[t.raster_id].overlap) for t in tiles]
        blocks = plan_blocks(out_grid, mosaic_tiles)
        bar.start("mosaicking predictions", len(blocks))
        files = rasters.write_mosaic(out_grid, blocks, store.load, bands, work, engine, bar.advance)
    bar.start("vectorising predictions", vectors.vector_blocks(files.argmax))
    polygons = vectors.write_predictions_gpkg(  # in this process: a remote worker cannot see the work folder
        files.argmax, files.proba, bands, work / "predictions.gpkg", options.vectors,
        InProcess(options.workers), bar.advance,
    )  # fmt: skip
    bar.start("writing Cloud-Optimized GeoTIFFs", 2)
    rasters.to_cog(files.proba, work / "predictions_proba.tif", "AVERAGE", options.workers)
    bar.advance(1)
    rasters.to_cog(files.argmax, work / "predictions_argmax.tif", "NEAREST", options.workers)
    bar.advance(1)
    files.proba.unlink()
    files.argmax.unlink()
    categories = [styles.Category(str(b.class_id), b.name, b.color) for b in bands]
    (work / "predictions_argmax.qml").write_text(styles.paletted_raster_qml(categories), encoding="utf-8")
    report.files += [
        "predictions_proba.tif",
        "predictions_argmax.tif",
        "predictions_argmax.qml",
        "predictions.gpkg",
    ]
    report.notes += polygons.notes
    report.files += _probability_styles(bands, work)
    report.model_version = version
    report.counts.update(predicted_tiles=len(tiles), prediction_pixels=files.valid_pixels,
                         prediction_polygons=polygons.features)  # fmt: skip


def _prediction_version(config: Config, options: ExportOptions, report: ExportReport) -> str | None:
    """The model version to export (``--version``, else the active one); None (with a note) when none.

    Raises:
        ExportInputError: for an unknown ``--version``, or predictions asked for without any version.
    """
    models = ModelStore(config.models_dir)
    if options.version is not None:
        known = models.versions()
        if options.version not in known:
            listed = ", ".join(known[-10:]) or "none yet (run geolabel train --now)"
            raise ExportInputError(
                f"model version {options.version!r} not found in {config.models_dir}; versions: {listed}"
            )
        return options.version
    version = models.active_name()
    if version is None:
        message = (
            "no model version yet, so no predictions: run geolabel train --now after labelling a few tiles"
        )
        if options.explicit:
            raise ExportInputError(message)
        report.notes.append(message)
    return version


def _probability_styles(bands: Sequence[rasters.Band], work: Path) -> list[str]:
    """QGIS styles of the probability bands: the first class's as the default, one file per class.

    QGIS applies ``predictions_proba.qml`` when the raster is opened; the others
    (``predictions_proba.<class>.qml``) are loaded from the layer's style menu.
    """
    files = []
    for band_number, band in enumerate(bands[1:], start=2):
        name = f"predictions_proba.{_file_safe(band.name)}.qml"
        (work / name).write_text(styles.probability_raster_qml(band_number, band.color, band.name), "utf-8")
        files.append(name)
        if band_number == 2:
            (work / "predictions_proba.qml").write_text((work / name).read_text("utf-8"), "utf-8")
            files.append("predictions_proba.qml")
    return files


def _file_safe(name: str) -> str:
    """A class name usable in a file name on every system."""
    return re.sub(r"[^A-Za-z0-9_-]+", "_", name).strip("_") or "class"


def _output_grid(records: Sequence[RasterRecord], crs: CRS | None) -> Grid:
    """The rasters' own grid (their union when aligned), or GDAL's default grid in ``crs``."""
    grids = [r.grid for r in records]
    try:
        if crs is None:
            return union_grid(grids)
        projected = [reprojected_grid(g, crs) for g in grids]
        return projected[0] if len(projected) == 1 else covering_grid(projected)
    except InvalidGeometryError as exc:
        raise ExportInputError(f"{exc}; give --crs to resample the predictions onto one grid") from None


# --- tiles --------------------------------------------------------------------


def _export_tiles(
    config: Config,
    project: ProjectTiles,
    tasks: Sequence[LabelledTask],
    crs: CRS,
    work: Path,
    report: ExportReport,
) -> None:
    path = work / "tiles.gpkg"
    summaries = tilemap.summarise(tasks)
    with RoundStore(config.registry_path) as store:
        view = tilemap.round_view(store, project.project_id)
    names = class_names(config.classes)
    schema = tilemap.tiles_schema(names)
    tiles_by_task = {t.task_id: t for t in project.tiles if t.task_id is not None}
    validity = RasterValidity(project.rasters)
    measured = measure(tasks, tiles_by_task, config.classes, config.trainer.labelling, validity)
    save_agreement(config.registry_path, project.project_id, measured.tiles, now())  # the dashboard's too
    agreement = {a.task_id: a for a in measured.tiles}
    gpkg.write_layer(path, "tiles", gpkg.frame([], [], schema, crs), "Polygon", append=False)
    for raster in project.rasters.values():
        tiles = [t for t in project.tiles if t.raster_id == raster.id]
        rows = [tilemap.tile_row(t, raster.path, summaries.get(t.task_id or -1), view,
                                 agreement.get(t.task_id or -1), names) for t in tiles]  # fmt: skip
        frame = gpkg.frame(rows, [tilemap.footprint(t) for t in tiles], schema, raster.grid.crs)
        gpkg.write_layer(path, "tiles", frame.to_crs(crs), "Polygon", append=True)
    report.problems.extend(str(p) for p in [*measured.problems, *validity.problems])
    qml = styles.categorized_fill_qml("state", styles.TILE_STATES, fill_alpha=60)
    gpkg.write_styles(path, [gpkg.LayerStyle("tiles", "tile states", qml)])
    report.files.append(path.name)
    report.counts["tiles"] = len(project.tiles)


# --- manifest and publishing ---------------------------------------------------


def _write_manifest(config: Config, work: Path, report: ExportReport) -> None:
    manifest = {
        "project": config.project.name,
        "created": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "crs": report.crs,
        "classes": [{"id": c.id, "name": c.name, "color": c.color} for c in config.classes],
        "model_version": report.model_version,
        "files": sorted(report.files),
        "counts": report.counts,
        "problems": report.problems,
        "notes": report.notes,
    }
    (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    (work / "README.txt").write_text(_readme(manifest), encoding="utf-8")


def _readme(manifest: Mapping[str, Any]) -> str:
    classes = "\n".join(f"  {c['id']:>3}  {c['name']}  {c['color']}" for c in manifest["classes"])
    counts = "\n".join(f"  {k}: {v}" for k, v in manifest["counts"].items())
    return f"""geolabel export of project {manifest["project"]!r}, {manifest["created"]}
CRS: {manifest["crs"]}    model version: {manifest["model_version"] or "(none)"}

Classes (id, name, colour; 0 is background):
{classes}

Counts:
{counts}

Files:
  labels.gpkg             layer labels: one polygon per annotated region (class, annotator, task, tile,
                          raster, times); layer labels_merged: regions merged per class across tiles
  predictions_proba.tif   one uint8 band per class (background first), probability 0-255; pixels
                          without image are masked (per-dataset mask)
  predictions_argmax.tif  class id of the most probable class, colour table, nodata 255
  predictions.gpkg        layer predictions: the class ids vectorised, one polygon per connected region
                          of a class (merged across tiles), mean class probability, pixels, area
  tiles.gpkg              tile footprints: state, uncertainty, selection round, annotation counts,
                          agreement between annotators (agreement, iou_<class>)
  *.qml, layer_styles     QGIS styles, applied when the layers are opened
                          (predictions_proba.<class>.qml: one per class band, from the Style menu)
  manifest.json           this information, machine-readable, with every problem met

Problems (regions not exported, repairs): {len(manifest["problems"])}; see manifest.json.
"""


def _publish(work: Path, out: Path, overwrite: bool) -> None:
    """Move the finished work folder to ``out``; an old ``out`` is removed once the new one is in place."""
    if not out.exists():
        os.replace(work, out)
        return
    if not overwrite:
        raise OutputExistsError(f"{out} appeared during the export; nothing was overwritten ({work} removed)")
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    os.replace(out, old)
    os.replace(work, out)
    shutil.rmtree(old, ignore_errors=True)
