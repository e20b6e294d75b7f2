"""Import one raster into a Label Studio project: plan, render, register, create tasks.

The order makes every step resumable and keeps the registry and Label Studio
in agreement:

1. check the raster (and that it can provide the project's model input) and reach
   Label Studio before writing anything;
2. record the raster, its display stretch, the bands feeding the model and every
   planned tile (exact-overlap plan) in one transaction;
3. render display tiles (in parallel), recording each chunk as it completes;
4. reconcile with the project's tasks (adopt tasks an interrupted run created,
   forget tasks deleted in Label Studio), then create the missing tasks in batches,
   recording their ids after each batch.

Re-running an import after a crash or Ctrl-C at any point completes it without
duplicates: tile ids are deterministic and every task carries its tile id.
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

import rasterio

from geolabel.classes import LabelClass
from geolabel.locks import exclusive_lock
from geolabel.lsclient import IMPORT_BATCH, UNCERTAINTY_SAMPLING, LabelStudioClient, ProjectRef
from geolabel.paths import private_dir
from geolabel.progress import Progress, SilentProgress
from georef.inputs import ProjectInput, resolution_mismatch
from georef.registry import RasterRecord, RasterSpec, RasterStatus, TileRecord, TileRegistry, TileStatus
from georef.taskgeo import TileGeo
from georef.tiling import TilingPlan, plan_tiles
from importers.display import Stretch, StretchMethod, choose_bands, compute_stretch
from importers.errors import AllNodataError, ImportFailedError, RasterChangedError
from importers.inputs import legacy_project_input, new_project_input, raster_input_bands, record_legacy_input
from importers.labelconfig import apply_labelling, has_sam_tools, project_labelling, same_config
from importers.raster import RasterInfo, content_hash, inspect_raster
from importers.render import GDAL_CACHE_MB, RenderJob, TileTask, render_tiles


@dataclass(frozen=True)
class ImportOptions:
    """Settings of an import (from ``geolabel.toml`` and the command line)."""

    project: str
    classes: Sequence[LabelClass]
    data_dir: Path
    document_root: Path
    tile_size: int = 512
    overlap: int = 64
    bands: Sequence[int] | None = None
    #: Bands feeding the project's model (``--bands``); default: the project's own band numbers.
    input_bands: Sequence[int] | None = None
    #: Input bands of the project's active model, for a project created before inputs were recorded.
    model_bands: Sequence[int] | None = None
    stretch: StretchMethod = "auto"
    percentiles: tuple[float, float] = (2.0, 98.0)
    workers: int = 2
    #: Sparse labelling (undrawn pixels are unknown, not background): the annotators' instructions say so.
    sparse: bool = False

    @property
    def tiles_dir(self) -> Path:
        """Folder of display tiles."""
        return self.data_dir / "tiles"


@dataclass
class ImportReport:
    """What an import did."""

    raster: str
    project_id: int
    tiles: int = 0
    skipped: int = 0
    rendered_now: int = 0
    tasks_created: int = 0
    tasks_adopted: int = 0
    tasks_lost: int = 0
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def prepare_project(client: LabelStudioClient, registry: TileRegistry, options: ImportOptions) -> ProjectRef:
    """Find or create the Label Studio project and let it serve the display tiles.

    Raises:
        ImportFailedError: if the tiles folder is not under Label Studio's document root.
        LabelStudioError: if Label Studio is unreachable or refuses.
    """
    tiles_dir = options.tiles_dir.resolve()
    if not tiles_dir.is_relative_to(options.document_root.resolve()):
        raise ImportFailedError(
            f"display tiles go to {tiles_dir}, outside Label Studio's document root "
            f"{options.document_root}; set label_studio.document_root to a parent of paths.data_dir"
        )
    new = project_labelling(options.classes, sam=False, sparse=options.sparse)  # SAM: when serve finds it
    ref = client.ensure_project(
        options.project,
        new.config,
        known_id=registry.project_id(options.project),
        instructions=new.instructions,
    )
    tiles_dir.mkdir(parents=True, exist_ok=True)
    client.ensure_local_storage(ref.id, tiles_dir)
    registry.record_project(ref.id, options.project)
    return ref


def import_raster(
    path: str | Path,
    options: ImportOptions,
    registry: TileRegistry,
    client: LabelStudioClient,
    progress: Progress | None = None,
) -> ImportReport:
    """Import one raster into the project named in ``options`` (idempotent and resumable).

    Raises:
        ImportFailedError: for bad rasters (the message says what to fix).
        LabelStudioError: if Label Studio is unreachable or refuses a request.
    """
    progress = progress or SilentProgress()
    info = inspect_raster(path)
    digest = content_hash(info.path)
    with import_lock(options.data_dir):
        notes: list[str] = []
        record = _unless_replaced(registry.raster_by_path(str(info.path)), digest, options, registry, notes)
        twin = _check_known(info, digest, record, options, registry, client)
        if twin is not None:
            return twin
        display = _display_settings(info, options) if record is None else None
        model_input = None if display is None else _model_input(info, options, registry, display[0])
        project = prepare_project(client, registry, options)
        if record is None:
            record = _register(info, digest, project.id, options, registry, display, model_input)
        report = ImportReport(str(info.path), project.id, notes=notes)
        if model_input is not None:
            report.warnings += [f"{info.path.name}: {w}" for w in model_input.warnings]
        _check_project(project, record, options, report)
        _sync_labelling(client, project, options, report)
        _check_same_display(record, options, report)
        return _TileSync(record, project.id, options, registry, client, report, progress).run()


@contextmanager
def import_lock(data_dir: Path) -> Iterator[None]:
    """Hold the data folder's import lock (one import at a time per registry); the folder is made private.

    Raises:
        ImportFailedError: if another import holds it.
        PermissionError: if the data folder belongs to another user.
    """
    message = f"another geolabel import is running on {data_dir}; wait for it to finish, then run again"
    with exclusive_lock(private_dir(data_dir) / ".import.lock", lambda: ImportFailedError(message)):
        yield


def _unless_replaced(
    record: RasterRecord | None,
    digest: str,
    options: ImportOptions,
    registry: TileRegistry,
    notes: list[str],
) -> RasterRecord | None:
    """The raster's record, unless its content changed before any task was created (then it is dropped).

    Raises:
        RasterChangedError: if the content changed and Label Studio already has tasks of it.
    """
    if record is None or record.content_hash == digest:
        return record
    counts = registry.status_counts(record.id)
    if counts[TileStatus.IMPORTED]:
        raise RasterChangedError(
            f"{record.path} was imported before with different content (sha256 {record.content_hash[:12]}, "
            f"now {digest[:12]}); its {counts[TileStatus.IMPORTED]} tasks and their labels refer to the old "
            "pixels. Import the new file under another path (copy or rename it) to add it as a new raster"
        )
    registry.delete_raster(record.id)
    shutil.rmtree(options.tiles_dir / record.uid, ignore_errors=True)
    notes.append("replaced an unfinished earlier import of different content (it had created no task)")
    return None


def _check_project(
    project: ProjectRef, record: RasterRecord, options: ImportOptions, report: ImportReport
) -> None:
    if project.sampling != UNCERTAINTY_SAMPLING:
        report.notes.append(
            f"the project samples tasks by {project.sampling!r}, not {UNCERTAINTY_SAMPLING!r}; "
            "active learning needs uncertainty sampling (project settings in Label Studio)"
        )
    if record.project_id != project.id:
        report.notes.append(f"moved from project {record.project_id} (no longer found) to {project.id}")


def _sync_labelling(
    client: LabelStudioClient, project: ProjectRef, options: ImportOptions, report: ImportReport
) -> None:
    """Give an existing project the labelling config and instructions of the classes (its SAM state kept).

    ``geolabel serve`` switches the SAM tools when it finds SAM on or off; an import keeps them as they are.
    """
    if project.created:
        return
    wanted = project_labelling(options.classes, has_sam_tools(project.label_config), options.sparse)
    warning = apply_labelling(client, project.id, wanted)
    if warning is not None:
        report.warnings.append(warning)
    elif not same_config(project.label_config, wanted.config):
        report.notes.append("the project's labelling config now shows geolabel.toml's classes")


def _check_known(
    info: RasterInfo,
    digest: str,
    record: RasterRecord | None,
    options: ImportOptions,
    registry: TileRegistry,
    client: LabelStudioClient,
) -> ImportReport | None:
    """Refuse a raster of another live project; return a report when a copy is already imported."""
    wanted = registry.project_id(options.project)
    if record is None:
        twin = registry.raster_by_hash(digest, wanted)
        if twin is not None:
            report = ImportReport(str(info.path), twin.project_id)
            report.notes.append(f"same content as the already imported {twin.path}; nothing added")
            return report
    elif record.project_id != wanted and _project_alive(client, registry, record.project_id):
        raise ImportFailedError(
            f"{info.path} is already imported into Label Studio project {record.project_id} "
            f"({registry.project_title(record.project_id)!r}); a raster path belongs to one project. "
            f"To label it in {options.project!r} too, import a copy of the file from another path"
        )
    return None


def _project_alive(client: LabelStudioClient, registry: TileRegistry, project_id: int) -> bool:
    title = registry.project_title(project_id)
    return title is not None and client.project_title(project_id) == title


def _display_settings(info: RasterInfo, options: ImportOptions) -> tuple[tuple[int, ...], Stretch]:
    """Display bands and stretch of a new raster (before anything is created anywhere)."""
    bands = choose_bands(info, options.bands)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(info.path) as src:
        stretch = compute_stretch(src, info, bands, options.stretch, options.percentiles)
    return bands, stretch


@dataclass(frozen=True)
class _ModelInput:
    """A new raster's bands feeding the model and the project's input.

    ``record``: the input is not recorded yet (a new project, or one from before inputs were recorded);
    it is recorded with the raster, once every check passed.
    """

    bands: tuple[int, ...]
    project: ProjectInput
    record: Literal["new", "legacy"] | None
    warnings: tuple[str, ...] = ()


def _model_input(
    info: RasterInfo, options: ImportOptions, registry: TileRegistry, display_bands: tuple[int, ...]
) -> _ModelInput:
    """Which bands of a new raster feed the project's model (checked before anything is written).

    Raises:
        InputMismatchError: if the raster cannot provide the project's input.
    """
    title = options.project
    known = registry.project_input(title)
    record: Literal["legacy"] | None = None
    if known is None:
        known = legacy_project_input(registry, title, registry.project_id(title), options.model_bands)
        record = "legacy"
    if known is None:
        fresh = new_project_input(title, info, display_bands, options.input_bands)
        return _ModelInput(fresh.source_bands, fresh, record="new")
    bands = raster_input_bands(known, info, options.input_bands)
    mismatch = resolution_mismatch(known, info.grid)
    return _ModelInput(bands, known, record, warnings=(mismatch,) if mismatch else ())


def _register(
    info: RasterInfo,
    digest: str,
    project_id: int,
    options: ImportOptions,
    registry: TileRegistry,
    display: tuple[tuple[int, ...], Stretch] | None = None,
    model_input: _ModelInput | None = None,
) -> RasterRecord:
    bands, stretch = display or _display_settings(info, options)
    model_input = model_input or _model_input(info, options, registry, bands)
    if model_input.record == "new":
        registry.record_project_input(model_input.project)
    elif model_input.record == "legacy":
        record_legacy_input(registry, model_input.project, project_id)
    plans = plan_tiles(
        info.grid.width, info.grid.height, options.tile_size, options.overlap, TilingPlan.EXACT
    )
    raster = RasterSpec(
        path=str(info.path),
        name=info.path.name,
        content_hash=digest,
        grid=info.grid,
        band_count=info.band_count,
        dtype=info.dtype,
        nodata=info.nodata,
        display_bands=bands,
        stretch=stretch,
        tile_size=options.tile_size,
        overlap=options.overlap,
        project_id=project_id,
        input_bands=model_input.bands,
        tiling=TilingPlan.EXACT,
    )
    return registry.add_raster(raster, plans)


def _check_same_display(record: RasterRecord, options: ImportOptions, report: ImportReport) -> None:
    if (record.tile_size, record.overlap) != (options.tile_size, options.overlap):
        report.notes.append(
            f"tiled at first import with size {record.tile_size} and overlap {record.overlap}; "
            "those are kept (the config now says otherwise)"
        )
    if options.bands and tuple(options.bands) != record.display_bands:
        report.notes.append(f"display bands fixed at first import: {list(record.display_bands)}")


def _render_pending(
    record: RasterRecord, options: ImportOptions, registry: TileRegistry, progress: Progress
) -> int:
    pending = [t for t in registry.tiles(record.id) if _needs_render(t, options.data_dir)]
    if not pending:
        return 0
    job = RenderJob(str(record.path), record.display_bands, record.stretch, str(options.data_dir))
    tasks = [TileTask(t.id, t.window, t.image_path or _image_path(record, t)) for t in pending]
    progress.start(f"tiling {record.name}", len(tasks))
    for results in render_tiles(job, tasks, options.workers):
        registry.mark_rendered(results)
        progress.advance(len(results))
    return len(tasks)


def _needs_render(tile: TileRecord, data_dir: Path) -> bool:
    if tile.status is TileStatus.PLANNED:
        return True
    return tile.image_path is not None and not (data_dir / tile.image_path).is_file()


def _image_path(record: RasterRecord, tile: TileRecord) -> str:
    return f"tiles/{record.uid}/r{tile.window.row_off}_c{tile.window.col_off}.png"


@dataclass
class _TileSync:
    """Render a registered raster's pending tiles and make its Label Studio tasks match them."""

    record: RasterRecord
    project_id: int
    options: ImportOptions
    registry: TileRegistry
    client: LabelStudioClient
    report: ImportReport
    progress: Progress

    def run(self) -> ImportReport:
        """Render, reconcile, create the missing tasks; mark the raster complete."""
        record, registry, report = self.record, self.registry, self.report
        report.rendered_now = _render_pending(record, self.options, registry, self.progress)
        counts = registry.status_counts(record.id)
        report.tiles, report.skipped = sum(counts.values()), counts[TileStatus.SKIPPED]
        if report.skipped == report.tiles:
            registry.delete_raster(record.id)
            raise AllNodataError(f"{record.path}: every tile is entirely nodata; there is nothing to label")
        self.reconcile()
        self.create_missing_tasks()
        registry.set_raster_status(record.id, RasterStatus.COMPLETE)
        return report

    def create_missing_tasks(self) -> None:
        """Create tasks for rendered tiles that have none, recording ids after each batch."""
        missing = self.registry.tiles(self.record.id, status=TileStatus.RENDERED)
        if not missing:
            return
        self.progress.start(f"creating tasks for {self.record.name}", len(missing))
        for start in range(0, len(missing), IMPORT_BATCH):
            batch = missing[start : start + IMPORT_BATCH]
            payloads = [task_payload(self.record, t, self.options) for t in batch]
            ids = self.client.import_tasks(self.project_id, payloads)
            self.registry.set_task_ids({tile.id: task_id for tile, task_id in zip(batch, ids, strict=True)})
            self.report.tasks_created += len(batch)
            self.progress.advance(len(batch))

    def reconcile(self) -> None:
        """Make the registry agree with the tasks Label Studio has for this raster's tiles."""
        states = self.client.tasks(self.project_id)
        shown = {s.task_id: s.tile_id for s in states}
        tiles = self.registry.tiles(self.record.id)
        own = {t.id for t in tiles}
        by_tile: dict[str, int] = {}
        extra: list[int] = []
        for state in sorted(states, key=lambda s: s.task_id):
            if state.tile_id in own:
                if state.tile_id in by_tile:
                    extra.append(state.task_id)
                by_tile.setdefault(state.tile_id, state.task_id)
        lost = [t.id for t in tiles if t.task_id is not None and shown.get(t.task_id) != t.id]
        self._note_lost_and_extra(lost, extra)
        adopt = {
            t.id: by_tile[t.id]
            for t in tiles
            if t.id in by_tile and (t.task_id is None or t.id in lost) and t.image_path is not None
        }
        self.registry.set_task_ids(adopt)
        self.report.tasks_adopted = len(adopt)
        if self.record.project_id != self.project_id:
            self.registry.set_raster_project(self.record.id, self.project_id)

    def _note_lost_and_extra(self, lost: list[str], extra: list[int]) -> None:
        if lost:
            self.registry.reset_tasks(lost)
            self.report.tasks_lost = len(lost)
            self.report.notes.append(
                f"{len(lost)} tasks were deleted in Label Studio (or show other tiles now); "
                "they are created again"
            )
        if extra:
            self.report.notes.append(
                f"{len(extra)} tasks duplicate tiles of this raster (ids {extra[:10]}); geolabel uses the "
                "oldest task of each tile. Delete the duplicates in Label Studio if they hold no labels"
            )


def task_payload(record: RasterRecord, tile: TileRecord, options: ImportOptions) -> dict[str, Any]:
    """The Label Studio task of one tile: its display image URL, tile id and ``geo`` object."""
    if tile.image_path is None:
        raise ImportFailedError(f"tile {tile.id} has no display image")
    relative = (options.data_dir / tile.image_path).resolve().relative_to(options.document_root.resolve())
    geo = TileGeo.from_grid(tile.id, tile.grid, tile.window, record.path, record.content_hash, tile.crs_text)
    return {
        "data": {
            "image": f"/data/local-files/?d={quote(relative.as_posix())}",
            "tile_id": tile.id,
            "raster": record.name,
            "geo": geo.model_dump(mode="json"),
        }
    }
