"""``geolabel import-predictions``: a probability raster made elsewhere becomes the project's predictions.

A one-band-per-class probability raster (IGN's CoSIA / OCS GE publish one uint8 band per class, 0-255;
float rasters hold 0..1), in any CRS and resolution, is resampled onto every tile of the project
(bilinear, from a window of the source around the tile: the source is never read whole) and stored
like a model version's predictions (:class:`~trainer.predictions.PredictionStore`, under its own
version name, ``import-<file stem>`` by default). Then each tile with a task gets its Label Studio
prediction from the probabilities as stored (:func:`trainer.preannotations.prediction`: editable
regions and the confidence ``score``), and, while the project has no promoted model version yet,
Label Studio's model version is set to the import's, so uncertainty sampling serves the least
confident tile first before the first round.

Band to class: each band is named by ``classes`` (in band order) or, without them, by the raster's
band descriptions. A band named ``background`` or a name the catalogue does not have is summed into
background (IGN rasters have many more classes than a project; the report names them); a catalogue
class without a band gets probability 0. Per pixel the bands are renormalised to sum to 1, so a
uint8 raster may hold 0-255 or percent. A pixel is valid where the source covers it (its nodata,
mask or alpha), its bands do not all read 0 and the tile's imagery has a pixel there (its nodata, alpha or
mask, as the display tiles and a round's predictions).

Resumable: each tile is stored atomically as it is resampled, and a rerun resamples only the tiles
still missing, unless the file (path, size, time) or the band-to-class plan changed since the
stored ones were made (``import.json`` in the version's folder): then they are all made again. A
rerun replaces the version's predictions in Label Studio (those of other versions are kept).
"""

from __future__ import annotations

import functools
import json
import logging
import math
import os
import re
import shutil
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.enums import ColorInterp, Resampling
from rasterio.errors import RasterioIOError
from rasterio.io import DatasetReader
from rasterio.warp import reproject, transform_bounds
from rasterio.warp import transform as transform_points
from rasterio.windows import Window

from geolabel.classes import BACKGROUND_NAME, LabelClass
from geolabel.compute import open_engine
from geolabel.config import Config
from geolabel.lsclient import LabelStudioClient, QueuedTask
from geolabel.lsmodels import read_schema
from geolabel.progress import Progress, SilentProgress
from georef.grid import Grid, crs_to_text
from georef.registry import TileRecord, TileRegistry
from importers.display import window_valid
from trainer.errors import ProbabilityImportError, TrainerError
from trainer.preannotations import prediction
from trainer.predict import predictable_tiles
from trainer.predictions import PredictionStore
from trainer.serving import keep_queue_view
from trainer.versions import ModelStore

logger = logging.getLogger(__name__)
__all__ = [
    "IMPORT_PREFIX",
    "BandPlan",
    "ProbabilityImport",
    "ProbabilityImportReport",
    "band_plan",
    "default_version",
    "import_probabilities",
    "push_probabilities",
    "resample_probabilities",
    "resample_tile",
    "split_class_names",
]

#: Default version names are ``import-<file stem>``: never a round's (``v<date>-<time>``).
IMPORT_PREFIX = "import-"
#: What a version name may hold (a folder name; the same rule as model versions).
VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
#: The names rounds give their versions (:func:`trainer.versions.new_version_name`): not for imports.
ROUND_VERSION = re.compile(r"^v\d{8}-\d{6}$")
#: The import's record in its version's prediction folder (what the stored tiles were made from).
RECORD_NAME = "import.json"
#: Float probabilities may stray this far outside 0..1 (rounding in the producer) before it is an error.
FLOAT_SLACK = 1e-3
#: Tiles' predictions built and sent to Label Studio at a time (bounds memory on large projects).
PUSH_BATCH = 200
#: Tasks of the queue's head in the report.
QUEUE_HEAD = 5


@dataclass(frozen=True)
class ProbabilityImport:
    """What to import.

    Attributes:
        source: the probability raster (GeoTIFF / COG, one band per class; an alpha band is its mask).
        classes: one name per probability band, in band order (``background`` allowed); empty: the
            raster's band descriptions.
        version: the version name its predictions carry (default ``import-<file stem>``).
    """

    source: Path
    classes: tuple[str, ...] = ()
    version: str | None = None


@dataclass(frozen=True)
class BandPlan:
    """How the source's bands become the stored bands (background first, then the catalogue's classes).

    Attributes:
        bands: the source's probability bands (1-based), in band order (alpha bands left out).
        targets: for each of ``bands``, its stored band: 0 background, ``k`` the catalogue's ``k``-th class.
        outputs: stored bands (catalogue classes + 1).
        scale: what a band's value is multiplied by to read 0..1 (1/255 for uint8, 1 for floats).
    """

    bands: tuple[int, ...]
    targets: tuple[int, ...]
    outputs: int
    scale: float


@dataclass
class ProbabilityImportReport:
    """What an import did.

    Attributes:
        version: the version its predictions carry in Label Studio and in the prediction store.
        source: the raster, as given.
        tiles: tiles of the project with an image.
        resampled: tiles resampled and stored by this run.
        already: tiles stored by an earlier run of the same import (not resampled again).
        uncovered: tiles the raster covers nowhere (no prediction).
        pushed: predictions sent to Label Studio (tiles with a task and a stored prediction).
        replaced: predictions of this version deleted from Label Studio first (an earlier run's).
        queue_taken: whether Label Studio's model version was set to this version (its scores order
            the queue).
        queue_head: the first unlabelled tasks in serving order after the import.
        notes: what the user should know (classes summed into background, a model version that keeps
            the queue, a Data Manager tab that could not be kept).
    """

    version: str
    source: str
    tiles: int = 0
    resampled: int = 0
    already: int = 0
    uncovered: int = 0
    pushed: int = 0
    replaced: int = 0
    queue_taken: bool = False
    queue_head: list[QueuedTask] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def split_class_names(text: str) -> tuple[str, ...]:
    """Class names of a ``--classes`` option: comma-separated, blanks around names ignored.

    Raises:
        ProbabilityImportError: if a name is empty (two commas in a row, a trailing comma).
    """
    names = tuple(name.strip() for name in text.split(","))
    if any(not name for name in names):
        raise ProbabilityImportError(
            f"--classes {text!r} has an empty name; give one name per band, separated by commas, "
            "e.g. --classes background,building,water"
        )
    return names


def default_version(source: Path) -> str:
    """``import-<file stem>``, characters a folder name should not hold replaced by ``-``."""
    stem = re.sub(r"[^A-Za-z0-9._-]+", "-", source.stem).strip("-.") or "raster"
    return f"{IMPORT_PREFIX}{stem}"


def import_probabilities(
    config: Config,
    client: LabelStudioClient,
    options: ProbabilityImport,
    progress: Progress | None = None,
) -> ProbabilityImportReport:
    """Resample a probability raster onto the project's tiles, store it and push it to Label Studio.

    See the module docstring. Resampling (:func:`resample_probabilities`) is resumable; the push
    (:func:`push_probabilities`) replaces this version's earlier predictions.

    Raises:
        ProbabilityImportError: if the raster cannot be the project's predictions (unreadable, no CRS,
            band count or class names that do not fit, a data type that is not uint8 or float, values
            outside 0..1, no overlap with the project's tiles, a version name taken by a model version).
        TrainerError: if the project has no tiles yet.
        LabelStudioError: if Label Studio refuses or cannot be reached.
    """
    report = resample_probabilities(config, options, progress)
    push_probabilities(config, client, report, progress)
    return report


def resample_probabilities(
    config: Config, options: ProbabilityImport, progress: Progress | None = None
) -> ProbabilityImportReport:
    """Resample the raster onto every tile of the project not stored yet and store it (no Label Studio).

    Raises:
        ProbabilityImportError, TrainerError: as :func:`import_probabilities` says.
    """
    bar = progress or SilentProgress()
    version = _version(config, options)
    with TileRegistry(config.registry_path) as registry:
        tiles = predictable_tiles(config, registry)
        rasters = {r: registry.raster(r) for r in sorted({t.raster_id for t in tiles})}
    grids = [r.grid for r in rasters.values()]
    images = {r.id: ImageRef(r.path, r.display_bands) for r in rasters.values()}
    with _opened(options.source) as src:
        plan, summed = band_plan(src, options.classes, config.classes)
        _check_overlap(src, grids, config.project.name)
    report = ProbabilityImportReport(version, str(options.source), len(tiles))
    report.notes += _class_notes(summed, plan, config.classes)
    store = PredictionStore(config.predictions_dir, version)
    if _prepare_store(store, _record(options.source, plan, config.classes)):
        report.notes.append(f"{options.source} or its classes changed since {version} was stored: "
                            "every tile is resampled again")  # fmt: skip
    missing = [t for t in tiles if not store.has(t.id)]
    report.already = len(tiles) - len(missing)
    job = ResampleJob(str(options.source.resolve()), plan, config.predictions_dir, version, images)
    chunks = [missing[i : i + config.compute.chunk] for i in range(0, len(missing), config.compute.chunk)]
    with open_engine(config.compute, len(missing), threads=min(4, os.cpu_count() or 1)) as engine:
        bar.start(f"resampling {options.source.name} onto {len(missing)} tiles", len(missing))
        for stored in engine.map_ordered(functools.partial(resample_chunk, job), chunks):
            report.resampled += sum(stored)
            report.uncovered += len(stored) - sum(stored)
            bar.advance(len(stored))
    return report


def push_probabilities(
    config: Config,
    client: LabelStudioClient,
    report: ProbabilityImportReport,
    progress: Progress | None = None,
) -> None:
    """Send the stored predictions of ``report.version`` to Label Studio (replacing its earlier ones).

    Every tile with a task and a stored prediction gets one. Label Studio's model version is set to
    ``report.version`` (so its scores order the queue) only while the project has no promoted model
    version; otherwise the pre-annotations are imported but the queue stays the model's (a note
    says so). The project's "Next to label" Data Manager tab is kept. ``report`` is completed.

    Raises:
        LabelStudioError: if Label Studio refuses or cannot be reached.
        TrainerError: if the project has no tiles, or its active model version is unreadable.
    """
    bar = progress or SilentProgress()
    store = PredictionStore(config.predictions_dir, report.version)
    with TileRegistry(config.registry_path) as registry:
        project_id = registry.project_id(config.project.name)
        tiles = [t for t in predictable_tiles(config, registry) if t.task_id is not None and store.has(t.id)]
    if project_id is None:  # predictable_tiles raised already; for the type checker
        raise TrainerError(f"project {config.project.name!r} has no tiles yet; run geolabel import")
    schema = read_schema(client.project(project_id)["label_config"])
    report.replaced = client.delete_predictions(project_id, report.version)
    bar.start(f"pushing {len(tiles)} predictions of {report.version}", len(tiles))
    for start in range(0, len(tiles), PUSH_BATCH):
        batch = tiles[start : start + PUSH_BATCH]
        predictions = [
            {"task": t.task_id, **prediction(store.load(t.id), config.classes, schema,
                                             config.trainer.uncertainty, report.version)}
            for t in batch
        ]  # fmt: skip
        report.pushed += client.import_predictions(project_id, predictions)
        bar.advance(len(batch))
    _take_queue(config, client, project_id, report)


def _take_queue(
    config: Config, client: LabelStudioClient, project_id: int, report: ProbabilityImportReport
) -> None:
    """Make the import's scores order the queue when no model version was promoted; say what was done.

    Label Studio itself makes imported predictions' version the project's when it has none (after a
    round that pushed nothing, say): the report says whose scores order the queue as Label Studio has it.
    """
    active = ModelStore(config.models_dir).active_name() if config.models_dir.is_dir() else None
    if report.pushed and active is None:
        client.set_model_version(project_id, report.version)
    current = str(client.project(project_id).get("model_version") or "")
    report.queue_taken = bool(report.pushed) and current == report.version
    if not report.pushed:
        report.notes.append(
            "no tile with a Label Studio task is covered by the raster: nothing pushed, the queue is "
            "unchanged"
        )
    elif report.queue_taken:
        problem = keep_queue_view(client, project_id)
        if problem:
            report.notes.append(problem)
    else:
        report.notes.append(
            f"model version {active} was promoted already, so the import does not take the queue over: Label "
            f"Studio ranks tasks and shows pre-annotations of model version {current or '(none)'}; the "
            f"imported predictions are there as {report.version} (pick that model version in the project's "
            "settings to use them)"
        )
    report.queue_head = client.queue(project_id)[:QUEUE_HEAD]


# the band plan ---------------------------------------------------------------------------------


def band_plan(
    src: DatasetReader, names: Sequence[str], catalogue: Sequence[LabelClass]
) -> tuple[BandPlan, list[str]]:
    """How ``src``'s bands, named ``names`` (empty: its band descriptions), become the stored bands.

    Returns the plan and the band names summed into background that are neither ``background`` nor a
    catalogue class.

    Raises:
        ProbabilityImportError: if the raster has no CRS, a data type other than uint8 or float, a band
            count other than the names', a name twice, or no band for any catalogue class.
    """
    if src.crs is None:
        raise ProbabilityImportError(
            f"{src.name} has no CRS, so it cannot be placed on the tiles; set it "
            "(gdal_edit.py -a_srs EPSG:2154 FILE) and import again"
        )
    bands = tuple(i for i, c in enumerate(src.colorinterp, start=1) if c != ColorInterp.alpha)
    names = tuple(names) or _descriptions(src, bands)
    if len(names) != len(bands):
        raise ProbabilityImportError(
            f"{src.name} has {len(bands)} probability bands but {len(names)} class names were given "
            f"({', '.join(names)}); give one name per band, in band order"
        )
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:
        raise ProbabilityImportError(f"class names given twice: {', '.join(repeated)}; name each band once")
    index = {c.name: k for k, c in enumerate(catalogue, start=1)}
    targets = tuple(index.get(name, 0) for name in names)
    if not any(targets):
        raise ProbabilityImportError(
            f"no band of {src.name} is a class of the project ({', '.join(c.name for c in catalogue)}); "
            f"the bands were named {', '.join(names)}: name the bands of the project's classes so"
        )
    summed = [n for n, t in zip(names, targets, strict=True) if t == 0 and n != BACKGROUND_NAME]
    return BandPlan(bands, targets, len(catalogue) + 1, _scale(src, bands)), summed


def _descriptions(src: DatasetReader, bands: Sequence[int]) -> tuple[str, ...]:
    """The band descriptions of ``bands``, when every one has one."""
    names = tuple((src.descriptions[b - 1] or "").strip() for b in bands)
    if not all(names):
        raise ProbabilityImportError(
            f"{src.name} does not name its bands (band descriptions); give --classes with one name per "
            f"band, in band order ({len(bands)} bands)"
        )
    return names


def _scale(src: DatasetReader, bands: Sequence[int]) -> float:
    """What the bands' values are multiplied by to read 0..1: 1/255 for uint8, 1 for floats."""
    dtypes = {np.dtype(src.dtypes[b - 1]) for b in bands}
    if dtypes == {np.dtype(np.uint8)}:
        return 1.0 / 255.0
    if all(d.kind == "f" for d in dtypes):
        return 1.0
    raise ProbabilityImportError(
        f"{src.name} holds {', '.join(sorted(d.name for d in dtypes))} bands; probabilities are read from "
        "uint8 (0-255) or float (0..1) bands: convert it (gdal_translate -ot Byte -scale MIN MAX 0 255)"
    )


def _class_notes(summed: Sequence[str], plan: BandPlan, catalogue: Sequence[LabelClass]) -> list[str]:
    """Report lines: bands summed into background, catalogue classes without a band."""
    notes = []
    if summed:
        notes.append(f"not classes of the project, summed into background: {', '.join(summed)}")
    absent = [c.name for k, c in enumerate(catalogue, start=1) if k not in plan.targets]
    if absent:
        notes.append(f"no band for {', '.join(absent)}: probability 0 everywhere")
    return notes


# resampling ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ImageRef:
    """Where a tile's imagery is read to know which of its pixels hold an image: path, display bands."""

    path: str
    bands: tuple[int, ...]


@dataclass(frozen=True)
class ResampleJob:
    """What every chunk of an import shares (values only: Dask workers need no registry)."""

    source: str
    plan: BandPlan
    predictions_dir: Path
    version: str
    images: Mapping[int, ImageRef]  # by raster id


def resample_chunk(job: ResampleJob, tiles: Sequence[TileRecord]) -> list[bool]:
    """Resample and store a chunk of tiles; for each, whether the raster covers it (it is stored).

    Raises:
        ProbabilityImportError: if the raster cannot be read or holds float values outside 0..1.
    """
    store = PredictionStore(job.predictions_dir, job.version)
    done = []
    with _opened(Path(job.source)) as src:
        for tile in tiles:
            resampled = resample_tile(src, tile.grid, job.plan, image_valid(job.images[tile.raster_id], tile))
            if resampled is not None:
                store.save(tile.id, *resampled)
            done.append(resampled is not None)
    return done


def image_valid(image: ImageRef, tile: TileRecord) -> npt.NDArray[np.bool_]:
    """The tile's pixels that hold an image (the display tiles' rule: nodata, alpha, mask, NaN).

    Raises:
        ProbabilityImportError: if the tile's raster cannot be read.
    """
    try:
        return window_valid(image.path, image.bands, tile.window)
    except RasterioIOError as exc:
        raise ProbabilityImportError(
            f"cannot read {image.path}, the imagery of tile {tile.id}, to know where it has pixels ({exc}); "
            "restore the raster (or geolabel forget it) and run again"
        ) from None


def resample_tile(
    src: DatasetReader, grid: Grid, plan: BandPlan, image: npt.NDArray[np.bool_] | None = None
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.bool_]] | None:
    """The source's probabilities on ``grid`` (``(classes + 1, height, width)``, background first) and valid.

    Bilinear from a window of the source around the tile (pixel centres, GDAL's exact transformer);
    source pixels outside its mask are not used, nor tile pixels without image (``image``: the tile's
    :func:`image_valid`, as a round's predictions leave them out). Returns None when no pixel is valid.

    Raises:
        ProbabilityImportError: if the window cannot be read or holds float values outside 0..1.
    """
    window = _source_window(src, grid)
    if window is None:
        return None
    data = _read(src, window, plan)
    warped = np.full((len(plan.bands), grid.height, grid.width), np.nan, dtype=np.float32)
    reproject(data, warped, src_transform=src.window_transform(window), src_crs=src.crs, src_nodata=np.nan,
              dst_transform=grid.transform, dst_crs=grid.crs, dst_nodata=np.nan,
              resampling=Resampling.bilinear, tolerance=0.0)  # fmt: skip
    valid = np.isfinite(warped).all(axis=0)
    if image is not None:
        valid &= image
    proba = np.zeros((plan.outputs, grid.height, grid.width), dtype=np.float32)
    for band, target in enumerate(plan.targets):
        proba[target] += np.where(valid, warped[band], 0.0)
    total = proba.sum(axis=0)
    valid &= total > 0
    if not valid.any():
        return None
    normalised = np.where(valid, proba / np.where(valid, total, 1.0), 0.0).astype(np.float32)
    return normalised, valid


def _source_window(src: DatasetReader, grid: Grid) -> Window | None:
    """The source pixels bilinear needs for ``grid`` (its footprint, padded), or None if none are there."""
    steps = np.linspace(0.0, 1.0, 17)
    edge = np.concatenate([
        np.column_stack((steps * grid.width, np.zeros_like(steps))),
        np.column_stack((steps * grid.width, np.full_like(steps, grid.height))),
        np.column_stack((np.zeros_like(steps), steps * grid.height)),
        np.column_stack((np.full_like(steps, grid.width), steps * grid.height)),
    ])  # fmt: skip
    world = grid.pixel_to_world(edge)
    xs, ys = transform_points(grid.crs, src.crs, world[:, 0].tolist(), world[:, 1].tolist())
    finite = np.isfinite(xs) & np.isfinite(ys)
    if not finite.any():
        return None
    source = Grid(src.width, src.height, src.transform, src.crs)
    cols, rows = source.world_to_pixel(np.column_stack((xs, ys))[finite]).T
    # bilinear needs the next pixel centre; downsampling widens GDAL's kernel by the ratio of pixel sizes
    pad = 2 + math.ceil(max(np.ptp(cols) / grid.width, np.ptp(rows) / grid.height))
    col0, row0 = max(math.floor(cols.min()) - pad, 0), max(math.floor(rows.min()) - pad, 0)
    col1, row1 = min(math.ceil(cols.max()) + pad, src.width), min(math.ceil(rows.max()) + pad, src.height)
    if col1 <= col0 or row1 <= row0:
        return None
    return Window(col0, row0, col1 - col0, row1 - row0)


def _read(src: DatasetReader, window: Window, plan: BandPlan) -> npt.NDArray[np.float32]:
    """The plan's bands in ``window`` as 0..1 floats, NaN outside the source's mask.

    Raises:
        ProbabilityImportError: if the window cannot be read or holds float values outside 0..1.
    """
    try:
        data = src.read(list(plan.bands), window=window, out_dtype=np.float32)
        mask = src.dataset_mask(window=window) > 0
    except RasterioIOError as exc:
        raise ProbabilityImportError(f"cannot read {src.name}: {exc}") from None
    data *= np.float32(plan.scale)
    mask &= np.isfinite(data).all(axis=0)
    values = data[:, mask]
    if values.size and (values.min() < -FLOAT_SLACK or values.max() > 1 + FLOAT_SLACK):
        raise ProbabilityImportError(
            f"{src.name} holds values from {values.min():g} to {values.max():g}; float probabilities "
            "must lie in 0..1 (set its nodata value if those are nodata: gdal_edit.py -a_nodata VALUE FILE)"
        )
    data = np.clip(data, 0.0, 1.0)
    data[:, ~mask] = np.nan
    return np.asarray(data, dtype=np.float32)


# checks and helpers ----------------------------------------------------------------------------


def _version(config: Config, options: ProbabilityImport) -> str:
    """The import's version name, checked: a folder name, never one of the project's model versions."""
    version = options.version or default_version(options.source)
    if not VERSION_PATTERN.match(version):
        raise ProbabilityImportError(
            f"version {version!r} is not a valid name: use letters, digits, '.', '_' and '-', starting with "
            "a letter or digit"
        )
    if ROUND_VERSION.match(version) or (
        config.models_dir.is_dir() and version in ModelStore(config.models_dir).versions()
    ):
        raise ProbabilityImportError(
            f"{version!r} is, or could be, the name of a model version of project {config.project.name!r}; "
            "give the import another name (--version)"
        )
    return version


@contextmanager
def _opened(path: Path) -> Iterator[DatasetReader]:
    """``rasterio.open(path)``, its failure a :class:`ProbabilityImportError` saying what to do."""
    try:
        dataset = rasterio.open(path)
    except RasterioIOError as exc:
        raise ProbabilityImportError(
            f"cannot open {path} as a raster ({exc}); give a GeoTIFF or COG with one band per class"
        ) from None
    with dataset:
        yield dataset


def _check_overlap(src: DatasetReader, grids: Sequence[Grid], project: str) -> None:
    """Raise unless the raster overlaps at least one of the project's rasters."""
    left, bottom, right, top = src.bounds
    for grid in grids:
        try:
            x0, y0, x1, y1 = transform_bounds(grid.crs, src.crs, *grid.bounds(), densify_pts=21)
        except Exception as exc:  # a raster GDAL cannot project into the source's CRS overlaps nothing
            logger.info("cannot project %s bounds into %s: %s", crs_to_text(grid.crs), src.crs, exc)
            continue
        if x0 < right and left < x1 and y0 < top and bottom < y1:
            return
    extent = ", ".join(f"{crs_to_text(g.crs)} {tuple(round(v, 2) for v in g.bounds())}" for g in grids[:3])
    raise ProbabilityImportError(
        f"{src.name} ({crs_to_text(src.crs)} {tuple(round(v, 6) for v in src.bounds)}) does not overlap any "
        f"raster of project {project!r} ({extent}); check that it covers the project's area and that its "
        "CRS is right"
    )


def _record(source: Path, plan: BandPlan, catalogue: Sequence[LabelClass]) -> dict[str, Any]:
    """What the stored tiles are made from: the file (path, size, time), the plan and the catalogue."""
    stat = source.stat()
    return {
        "source": str(source.resolve()),
        "size": stat.st_size,
        "mtime_ns": stat.st_mtime_ns,
        "plan": asdict(plan) | {"bands": list(plan.bands), "targets": list(plan.targets)},
        "catalogue": [c.name for c in catalogue],
    }


def _prepare_store(store: PredictionStore, record: dict[str, Any]) -> bool:
    """Make the version's folder hold only tiles made from ``record``; True when stale ones were removed.

    Raises:
        ProbabilityImportError: if the folder holds predictions that no import made (another producer's).
    """
    path = store.folder / RECORD_NAME
    if path.is_file():
        if json.loads(path.read_text()) == record:
            return False
        shutil.rmtree(store.folder)
        stale = True
    elif store.folder.is_dir() and any(store.folder.iterdir()):
        raise ProbabilityImportError(
            f"{store.folder} holds predictions that geolabel import-predictions did not make; give the "
            "import another name (--version)"
        )
    else:
        stale = False
    store.folder.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{RECORD_NAME}.{os.getpid()}.partial")
    partial.write_text(json.dumps(record, indent=1))
    os.replace(partial, path)
    return stale
