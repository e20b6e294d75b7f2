"""Remove an imported raster: its Label Studio tasks, display tiles, stored predictions and registry rows.

The order makes ``geolabel forget`` resumable and idempotent: the registry rows go last, so an
interrupted run leaves the raster recorded and the next run finds it and completes the removal
(tasks already deleted are simply not found again); once it is gone, running again does nothing.
Tasks that carry annotations are deleted only when the caller says so explicitly.
"""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from geolabel.lsclient import LabelStudioClient, TaskState
from georef.registry import RasterRecord, TileRegistry
from importers.errors import ForgetRefusedError
from importers.pipeline import import_lock


@dataclass
class ForgetReport:
    """What ``forget`` did (``found``: the raster was in the registry)."""

    raster: str
    found: bool
    project_id: int | None = None
    tiles: int = 0
    tasks_deleted: int = 0
    annotated_deleted: int = 0
    images_deleted: int = 0
    predictions_deleted: int = 0
    notes: list[str] = field(default_factory=list)


def find_raster(registry: TileRegistry, raster: str | Path, project_id: int | None) -> RasterRecord | None:
    """The recorded raster at path ``raster`` (the file may be gone), else the one of that file name.

    Raises:
        ForgetRefusedError: if only a file name was matched and several rasters share it.
    """
    path = str(Path(raster).expanduser().resolve())
    record = registry.raster_by_path(path)
    if record is not None and project_id in (None, record.project_id):
        return record
    named = [
        r for r in registry.rasters() if r.name == Path(raster).name and project_id in (None, r.project_id)
    ]
    if len(named) > 1:
        raise ForgetRefusedError(
            f"{len(named)} imported rasters are named {Path(raster).name}: "
            f"{', '.join(r.path for r in named)}; give the full path of the one to forget"
        )
    return named[0] if named else None


def forget_raster(
    raster: str | Path,
    registry: TileRegistry,
    client: LabelStudioClient,
    data_dir: Path,
    prediction_roots: Sequence[Path] = (),
    project_id: int | None = None,
    with_annotations: bool = False,
) -> ForgetReport:
    """Remove raster ``raster`` (of project ``project_id`` when given) from Label Studio and the registry.

    Args:
        raster: the raster's path as imported (or its file name, when unique).
        registry: the tile registry.
        client: Label Studio.
        data_dir: the data folder (display tiles under ``tiles/<raster uid>``; its import lock is held).
        prediction_roots: folders of stored predictions (``<root>/<version>/<tile id>.npz``).
        project_id: only forget it if it belongs to this Label Studio project.
        with_annotations: delete tasks that carry annotations too (their labels are lost).

    Raises:
        ForgetRefusedError: if a task of the raster carries annotations and ``with_annotations`` is false
            (nothing is removed then).
        LabelStudioError: if Label Studio is unreachable or refuses (run again to complete).
    """
    with import_lock(data_dir):
        record = find_raster(registry, raster, project_id)
        if record is None:
            return ForgetReport(str(raster), found=False)
        report = ForgetReport(record.path, found=True, project_id=record.project_id)
        tasks = _tasks_of(record, registry, client, report)
        annotated = [t for t in tasks if t.annotations]
        if annotated and not with_annotations:
            raise ForgetRefusedError(
                f"{record.name} has {len(annotated)} annotated task{'s' if len(annotated) != 1 else ''} in "
                f"Label Studio project {record.project_id} (ids {[t.task_id for t in annotated[:10]]}); "
                "forgetting it would delete those labels. Export them first (geolabel export), then run "
                "again with --with-annotations to delete them too. Nothing was removed"
            )
        if tasks:
            report.tasks_deleted = client.delete_tasks(record.project_id, [t.task_id for t in tasks])
            report.annotated_deleted = len(annotated)
        report.predictions_deleted = _remove_predictions(record, prediction_roots)
        report.images_deleted = _remove_images(data_dir / "tiles" / record.uid)
        report.tiles = registry.forget_raster(record.id)
        return report


def _tasks_of(
    record: RasterRecord, registry: TileRegistry, client: LabelStudioClient, report: ForgetReport
) -> list[TaskState]:
    """The raster's tasks in Label Studio: tasks showing one of its tiles (also ones the registry lost)."""
    title = registry.project_title(record.project_id)
    if title is None or client.project_title(record.project_id) != title:
        report.notes.append(f"Label Studio project {record.project_id} no longer exists: no task to delete")
        return []
    tile_ids = {t.id for t in registry.tiles(record.id)}
    return [t for t in client.tasks(record.project_id) if t.tile_id in tile_ids]


def _remove_predictions(record: RasterRecord, roots: Sequence[Path]) -> int:
    removed = 0
    for root in roots:
        for file in root.glob(f"*/{record.uid}_*.npz"):
            file.unlink(missing_ok=True)
            removed += 1
    return removed


def _remove_images(folder: Path) -> int:
    if not folder.is_dir():
        return 0
    count = sum(1 for _ in folder.glob("*.png"))
    shutil.rmtree(folder)
    return count
