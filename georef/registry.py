"""The tile registry: the one place tile geometry is read from.

A SQLite database in WAL mode (several processes can read while one writes),
through the standard library's ``sqlite3``, with three tables:

- ``projects``: Label Studio projects geolabel created or adopted;
- ``project_inputs``: each project's model input, fixed at its first import
  (:class:`~georef.inputs.ProjectInput`: input bands, resolution range);
- ``rasters``: source rasters (path, content hash, CRS, transform, size,
  bands, dtype, nodata, display bands and stretch, tiling parameters and plan,
  which of its bands feed the project's inputs);
- ``tiles``: one row per planned tile (window in its raster, tile transform,
  CRS, display image path, Label Studio task id, status);
- ``annotation_events``: annotations created, updated or deleted in Label Studio,
  recorded by the ML backend's webhook for the trainer (a queue read by id).

Transforms are stored as the six affine coefficients ``[a, b, c, d, e, f]``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import sqlite3
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any

from affine import Affine

from georef.errors import RegistryError
from georef.grid import (
    Grid,
    PixelWindow,
    crs_from_text,
    crs_to_text,
    transform_from_list,
    transform_to_list,
)
from georef.inputs import ProjectInput
from georef.tiling import TilePlan, TilingPlan

SCHEMA_VERSION = 1


class TileStatus(StrEnum):
    """Life cycle of a tile row."""

    PLANNED = "planned"  # row exists, display image not written yet
    RENDERED = "rendered"  # display image written, no Label Studio task yet
    SKIPPED = "skipped"  # every pixel is nodata: no image, no task
    IMPORTED = "imported"  # Label Studio task created; task_id set


class RasterStatus(StrEnum):
    """Life cycle of a raster row."""

    IMPORTING = "importing"
    COMPLETE = "complete"


@dataclass(frozen=True)
class RasterSpec:
    """What the registry records about a raster when it is first imported."""

    path: str
    name: str
    content_hash: str
    grid: Grid
    band_count: int
    dtype: str
    nodata: float | None
    display_bands: tuple[int, ...]
    stretch: tuple[tuple[float, float], ...]
    tile_size: int
    overlap: int
    project_id: int
    #: Bands of this raster feeding the project's model inputs, in input order (None: imported before
    #: projects recorded their input; the model's own bands are tried).
    input_bands: tuple[int, ...] | None = field(default=None, kw_only=True)
    #: How its tiles were laid out; rows from before plans were recorded read as the shifted plan.
    tiling: TilingPlan = field(default=TilingPlan.EXACT, kw_only=True)


@dataclass(frozen=True)
class RasterRecord(RasterSpec):
    """A raster row: its spec plus registry id, import status and time."""

    id: int
    status: RasterStatus
    imported_at: str

    @property
    def uid(self) -> str:
        """Short stable identifier of this raster (path and content), used in tile ids and paths."""
        return raster_uid(self.path, self.content_hash)


@dataclass(frozen=True)
class TileRecord:
    """A tile row."""

    id: str
    raster_id: int
    tile_row: int
    tile_col: int
    window: PixelWindow
    grid: Grid
    image_path: str | None
    task_id: int | None
    status: TileStatus
    crs_text: str


@dataclass(frozen=True)
class AnnotationEvent:
    """An annotation created, updated or deleted in Label Studio (``action`` as Label Studio names it)."""

    project_id: int
    task_id: int | None
    annotation_id: int | None
    action: str


@dataclass(frozen=True)
class RecordedEvent(AnnotationEvent):
    """An annotation event as stored: with its queue position ``id`` and reception time."""

    id: int
    received_at: str


def raster_uid(path: str, content_hash: str) -> str:
    """Deterministic short id of a raster file: 12 hex digits of SHA-256 over its path and content hash."""
    return hashlib.sha256(f"{path}\0{content_hash}".encode()).hexdigest()[:12]


def tile_id_for(uid: str, window: PixelWindow) -> str:
    """Deterministic tile id: the raster's uid and the window's top-left pixel."""
    return f"{uid}_r{window.row_off}_c{window.col_off}"


class TileRegistry:
    """Context-managed access to the registry database at ``path``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(self.path, timeout=10.0)
        self.conn.execute("PRAGMA journal_mode = WAL")
        self.conn.execute("PRAGMA foreign_keys = ON")
        self._create_schema()

    def __enter__(self) -> TileRegistry:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the database connection."""
        self.conn.close()

    def _create_schema(self) -> None:
        with self.conn:
            self.conn.execute("CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
            self.conn.execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('schema_version', ?)",
                [str(SCHEMA_VERSION)],
            )
            self.conn.execute(_PROJECTS_DDL)
            self.conn.execute(_RASTERS_DDL)
            self.conn.execute(_TILES_DDL)
            self.conn.execute(_EVENTS_DDL)
            self.conn.execute(_PROJECT_INPUTS_DDL)
            self._add_missing_columns("rasters", _RASTER_COLUMNS_ADDED)
            self.conn.execute("CREATE INDEX IF NOT EXISTS tiles_raster ON tiles (raster_id, status)")
            self.conn.execute("CREATE INDEX IF NOT EXISTS tiles_task ON tiles (task_id)")
            self.conn.execute(
                "CREATE INDEX IF NOT EXISTS events_annotation "
                "ON annotation_events (project_id, annotation_id)"
            )
        version = self.conn.execute("SELECT value FROM meta WHERE key = 'schema_version'").fetchone()[0]
        if int(version) != SCHEMA_VERSION:
            raise RegistryError(
                f"registry {self.path} has schema version {version}, this geolabel reads {SCHEMA_VERSION}"
            )

    def _add_missing_columns(self, table: str, columns: Mapping[str, str]) -> None:
        """Add columns newer geolabel versions use to a table of an older registry (within a transaction)."""
        present = {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})").fetchall()}
        for name, declaration in columns.items():
            if name not in present:
                try:
                    self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {name} {declaration}")
                except sqlite3.OperationalError as exc:  # another process added it meanwhile
                    if "duplicate column" not in str(exc):
                        raise

    # projects -----------------------------------------------------------------

    def record_project(self, ls_id: int, title: str) -> None:
        """Remember that the Label Studio project titled ``title`` is ``ls_id`` (one id per title)."""
        with self.conn:
            self.conn.execute("DELETE FROM projects WHERE title = ? AND id != ?", [title, ls_id])
            self.conn.execute(
                "INSERT INTO projects (id, title, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (id) DO UPDATE SET title = excluded.title",
                [ls_id, title, _now()],
            )

    def project_id(self, title: str) -> int | None:
        """Label Studio id of the project recorded under ``title``, if any."""
        row = self.conn.execute("SELECT id FROM projects WHERE title = ?", [title]).fetchone()
        return int(row[0]) if row else None

    def project_title(self, ls_id: int) -> str | None:
        """Title under which project ``ls_id`` was recorded, if any."""
        row = self.conn.execute("SELECT title FROM projects WHERE id = ?", [ls_id]).fetchone()
        return str(row[0]) if row else None

    # project inputs -------------------------------------------------------------

    def project_input(self, title: str) -> ProjectInput | None:
        """The model input project ``title`` fixed at its first import, if it has recorded one."""
        row = self._one("SELECT * FROM project_inputs WHERE project = ?", [title])
        if row is None:
            return None
        low, high = row["resolution_min"], row["resolution_max"]
        return ProjectInput(
            project=str(row["project"]),
            source_bands=tuple(int(b) for b in json.loads(row["source_bands"])),
            source=str(row["source"]),
            resolution=None if low is None or high is None else (float(low), float(high)),
        )

    def record_project_input(self, project_input: ProjectInput) -> ProjectInput:
        """Record a project's input unless it has one already; return the one recorded (the first wins)."""
        low, high = project_input.resolution or (None, None)
        with self.conn:
            self.conn.execute(
                "INSERT OR IGNORE INTO project_inputs (project, source_bands, source, resolution_min, "
                "resolution_max, created_at) VALUES (?, ?, ?, ?, ?, ?)",
                [project_input.project, json.dumps(list(project_input.source_bands)), project_input.source,
                 low, high, _now()],
            )  # fmt: skip
        recorded = self.project_input(project_input.project)
        if recorded is None:  # pragma: no cover - the row was just written
            raise RegistryError(f"could not record the input of project {project_input.project!r}")
        return recorded

    def set_input_bands(self, raster_id: int, bands: Sequence[int]) -> None:
        """Record which bands of a raster feed its project's inputs."""
        with self.conn:
            text = json.dumps([int(b) for b in bands])
            self.conn.execute("UPDATE rasters SET input_bands = ? WHERE id = ?", [text, raster_id])

    # rasters ------------------------------------------------------------------

    def add_raster(self, raster: RasterSpec, plans: Sequence[TilePlan]) -> RasterRecord:
        """Record a raster and all its planned tiles in one transaction.

        Raises:
            RegistryError: if a raster with the same path is already recorded.
        """
        if self.raster_by_path(raster.path) is not None:
            raise RegistryError(f"raster {raster.path} is already in the registry")
        row = {
            "path": raster.path,
            "name": raster.name,
            "content_hash": raster.content_hash,
            "crs": _crs_text(raster.grid),
            "crs_wkt": str(raster.grid.crs.to_wkt()),
            "transform": json.dumps(transform_to_list(raster.grid.transform)),
            "width": raster.grid.width,
            "height": raster.grid.height,
            "band_count": raster.band_count,
            "dtype": raster.dtype,
            "nodata": json.dumps(raster.nodata),  # text: SQLite would store a NaN nodata as NULL
            "display_bands": json.dumps(list(raster.display_bands)),
            "stretch": json.dumps([list(pair) for pair in raster.stretch]),
            "tile_size": raster.tile_size,
            "overlap": raster.overlap,
            "project_id": raster.project_id,
            "input_bands": None if raster.input_bands is None else json.dumps(list(raster.input_bands)),
            "tiling": raster.tiling.value,
            "status": RasterStatus.IMPORTING.value,
            "imported_at": _now(),
        }
        with self.conn:
            cursor = self.conn.execute(
                f"INSERT INTO rasters ({', '.join(row)}) VALUES ({', '.join('?' for _ in row)})",
                list(row.values()),
            )
            raster_id = int(cursor.lastrowid or 0)
            uid = raster_uid(raster.path, raster.content_hash)
            crs = _crs_text(raster.grid)
            self.conn.executemany(
                "INSERT INTO tiles (id, raster_id, tile_row, tile_col, col_off, row_off, width, height, "
                "transform, crs, status) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (_tile_row(raster_id, uid, raster.grid, crs, plan) for plan in plans),
            )
        return self.raster(raster_id)

    def raster(self, raster_id: int) -> RasterRecord:
        """The raster row with id ``raster_id``.

        Raises:
            RegistryError: if there is none.
        """
        row = self._one("SELECT * FROM rasters WHERE id = ?", [raster_id])
        if row is None:
            raise RegistryError(f"no raster with id {raster_id} in the registry")
        return _raster_record(row)

    def raster_by_path(self, path: str) -> RasterRecord | None:
        """The raster recorded at ``path``, if any."""
        row = self._one("SELECT * FROM rasters WHERE path = ?", [path])
        return _raster_record(row) if row else None

    def raster_by_hash(self, content_hash: str, project_id: int | None) -> RasterRecord | None:
        """A raster of project ``project_id`` recorded with this content hash, if any."""
        row = self._one(
            "SELECT * FROM rasters WHERE content_hash = ? AND project_id IS ? ORDER BY id LIMIT 1",
            [content_hash, project_id],
        )
        return _raster_record(row) if row else None

    def rasters(self, project_id: int | None = None) -> list[RasterRecord]:
        """Every raster row (or those of one project), oldest first."""
        if project_id is None:
            return [_raster_record(row) for row in self._all("SELECT * FROM rasters ORDER BY id", [])]
        sql = "SELECT * FROM rasters WHERE project_id = ? ORDER BY id"
        return [_raster_record(row) for row in self._all(sql, [project_id])]

    def set_raster_status(self, raster_id: int, status: RasterStatus) -> None:
        """Set a raster's status."""
        with self.conn:
            self.conn.execute("UPDATE rasters SET status = ? WHERE id = ?", [status.value, raster_id])

    def delete_raster(self, raster_id: int) -> None:
        """Delete a raster and its tiles (only for imports that created nothing in Label Studio).

        Raises:
            RegistryError: if one of its tiles already has a Label Studio task.
        """
        with self.conn:
            imported = self.conn.execute(
                "SELECT COUNT(*) FROM tiles WHERE raster_id = ? AND task_id IS NOT NULL", [raster_id]
            ).fetchone()[0]
            if imported:
                raise RegistryError(f"raster {raster_id} has {imported} Label Studio tasks; not deleting it")
            self.conn.execute("DELETE FROM tiles WHERE raster_id = ?", [raster_id])
            self.conn.execute("DELETE FROM rasters WHERE id = ?", [raster_id])

    def forget_raster(self, raster_id: int) -> int:
        """Delete a raster and every tile of it, tasks or not (``geolabel forget``); return the tile count.

        The caller deletes the tiles' Label Studio tasks first.
        """
        with self.conn:
            count = self.conn.execute("DELETE FROM tiles WHERE raster_id = ?", [raster_id]).rowcount
            self.conn.execute("DELETE FROM rasters WHERE id = ?", [raster_id])
        return int(count)

    # tiles --------------------------------------------------------------------

    def tiles(
        self, raster_id: int | None = None, status: TileStatus | None = None, project_id: int | None = None
    ) -> list[TileRecord]:
        """Tile rows, optionally of one raster, one status and/or one project, in row-major order."""
        clauses: list[str] = []
        params: list[Any] = []
        if project_id is not None:
            clauses.append("t.raster_id IN (SELECT id FROM rasters WHERE project_id = ?)")
            params.append(project_id)
        if raster_id is not None:
            clauses.append("t.raster_id = ?")
            params.append(raster_id)
        if status is not None:
            clauses.append("t.status = ?")
            params.append(status.value)
        where = f"WHERE {' AND '.join(clauses)}" if clauses else ""
        sql = f"SELECT t.* FROM tiles t {where} ORDER BY t.raster_id, t.tile_row, t.tile_col"
        return [_tile_record(row) for row in self._all(sql, params)]

    def tile(self, tile_id: str) -> TileRecord:
        """The tile row ``tile_id``.

        Raises:
            RegistryError: if there is none.
        """
        row = self._one("SELECT * FROM tiles WHERE id = ?", [tile_id])
        if row is None:
            raise RegistryError(f"no tile {tile_id!r} in the registry")
        return _tile_record(row)

    def tile_by_task(self, task_id: int) -> TileRecord:
        """The tile whose Label Studio task is ``task_id``.

        Raises:
            RegistryError: if no tile has that task.
        """
        row = self._one("SELECT * FROM tiles WHERE task_id = ?", [task_id])
        if row is None:
            raise RegistryError(f"no tile for Label Studio task {task_id}")
        return _tile_record(row)

    def grid(self, tile_id: str) -> Grid:
        """The grid (size, transform, CRS) of tile ``tile_id``."""
        return self.tile(tile_id).grid

    def mark_rendered(self, results: Iterable[tuple[str, str | None]]) -> None:
        """Record rendered tiles: ``(tile_id, image_path)``, or ``(tile_id, None)`` for skipped ones."""
        rows = [
            (path, (TileStatus.RENDERED if path else TileStatus.SKIPPED).value, tile_id)
            for tile_id, path in results
        ]
        with self.conn:
            self.conn.executemany(
                "UPDATE tiles SET image_path = ?, status = ? WHERE id = ? AND task_id IS NULL", rows
            )

    def set_task_ids(self, task_ids: Mapping[str, int]) -> None:
        """Record the Label Studio task of each tile (``tile_id -> task_id``).

        Label Studio is the truth about which tile a task shows: another tile
        still holding one of these task ids (a stale id, e.g. from a Label Studio
        database that was reset) is detached from it.

        Raises:
            RegistryError: if a tile is unknown or has no display image.
        """
        with self.conn:
            for tile_id, task_id in task_ids.items():
                self.conn.execute(
                    "UPDATE tiles SET task_id = NULL, status = ? WHERE task_id = ? AND id != ?",
                    [TileStatus.RENDERED.value, task_id, tile_id],
                )
                cursor = self.conn.execute(
                    "UPDATE tiles SET task_id = ?, status = ? WHERE id = ? AND image_path IS NOT NULL",
                    [task_id, TileStatus.IMPORTED.value, tile_id],
                )
                if cursor.rowcount != 1:
                    raise RegistryError(f"cannot attach task {task_id}: no rendered tile {tile_id!r}")

    def reset_tasks(self, tile_ids: Iterable[str]) -> None:
        """Forget the Label Studio tasks of tiles (their tasks were deleted in Label Studio)."""
        rows = [(TileStatus.RENDERED.value, tile_id) for tile_id in tile_ids]
        with self.conn:
            self.conn.executemany(
                "UPDATE tiles SET task_id = NULL, status = ? WHERE id = ? AND image_path IS NOT NULL", rows
            )

    def set_raster_project(self, raster_id: int, project_id: int) -> None:
        """Move a raster to another Label Studio project (its old project was deleted)."""
        with self.conn:
            self.conn.execute("UPDATE rasters SET project_id = ? WHERE id = ?", [project_id, raster_id])

    def status_counts(self, raster_id: int) -> dict[TileStatus, int]:
        """Number of tiles of a raster in each status."""
        counts = {status: 0 for status in TileStatus}
        for status, count in self.conn.execute(
            "SELECT status, COUNT(*) FROM tiles WHERE raster_id = ? GROUP BY status", [raster_id]
        ).fetchall():
            counts[TileStatus(status)] = int(count)
        return counts

    def _one(self, sql: str, params: Sequence[Any]) -> dict[str, Any] | None:
        rows = self._all(sql, params)
        return rows[0] if rows else None

    def _all(self, sql: str, params: Sequence[Any]) -> list[dict[str, Any]]:
        cursor = self.conn.execute(sql, list(params))
        names = [col[0] for col in cursor.description]
        return [dict(zip(names, row, strict=True)) for row in cursor.fetchall()]

    # annotation events --------------------------------------------------------

    def record_annotation_events(self, events: Iterable[AnnotationEvent]) -> int:
        """Append annotation events; returns how many were recorded."""
        rows = [(e.project_id, e.task_id, e.annotation_id, e.action, _now()) for e in events]
        with self.conn:
            self.conn.executemany(
                "INSERT INTO annotation_events (project_id, task_id, annotation_id, action, received_at) "
                "VALUES (?, ?, ?, ?, ?)",
                rows,
            )
        return len(rows)

    def annotation_events(self, project_id: int, after_id: int = 0) -> list[RecordedEvent]:
        """Events of a project recorded after event ``after_id``, oldest first."""
        rows = self._all(
            "SELECT * FROM annotation_events WHERE project_id = ? AND id > ? ORDER BY id",
            [project_id, after_id],
        )
        return [
            RecordedEvent(
                r["project_id"], r["task_id"], r["annotation_id"], r["action"], int(r["id"]), r["received_at"]
            )
            for r in rows
        ]

    def count_changed_annotations(self, project_id: int, after_id: int = 0) -> int:
        """Number of distinct annotations of a project changed after event ``after_id``.

        An annotation saved ten times (or reported by ten copies of one webhook) counts once.
        """
        row = self.conn.execute(
            "SELECT COUNT(DISTINCT annotation_id) FROM annotation_events "
            "WHERE project_id = ? AND id > ? AND annotation_id IS NOT NULL",
            [project_id, after_id],
        ).fetchone()
        return int(row[0])

    def annotation_task(self, project_id: int, annotation_id: int) -> int | None:
        """The task of an annotation recorded for a project (its latest event), or None if never recorded."""
        row = self.conn.execute(
            "SELECT task_id FROM annotation_events WHERE project_id = ? AND annotation_id = ? "
            "AND task_id IS NOT NULL ORDER BY id DESC LIMIT 1",
            [project_id, annotation_id],
        ).fetchone()
        return None if row is None else int(row[0])

    def iter_tile_ids(self, raster_id: int) -> Iterator[str]:
        """Ids of a raster's tiles, in row-major order."""
        for (tile_id,) in self.conn.execute(
            "SELECT id FROM tiles WHERE raster_id = ? ORDER BY tile_row, tile_col", [raster_id]
        ).fetchall():
            yield str(tile_id)


_PROJECTS_DDL = """
CREATE TABLE IF NOT EXISTS projects (
    id INTEGER PRIMARY KEY,
    title TEXT NOT NULL UNIQUE,
    created_at TEXT NOT NULL
)"""

_RASTERS_DDL = """
CREATE TABLE IF NOT EXISTS rasters (
    id INTEGER PRIMARY KEY,
    path TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    content_hash TEXT NOT NULL,
    crs TEXT NOT NULL,
    crs_wkt TEXT NOT NULL,
    transform TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    band_count INTEGER NOT NULL,
    dtype TEXT NOT NULL,
    nodata TEXT NOT NULL,
    display_bands TEXT NOT NULL,
    stretch TEXT NOT NULL,
    tile_size INTEGER NOT NULL,
    overlap INTEGER NOT NULL,
    project_id INTEGER NOT NULL,
    status TEXT NOT NULL,
    imported_at TEXT NOT NULL
)"""

#: Columns added to ``rasters`` after the first release (NULL in rows written before them).
_RASTER_COLUMNS_ADDED = {"input_bands": "TEXT", "tiling": "TEXT"}

_PROJECT_INPUTS_DDL = """
CREATE TABLE IF NOT EXISTS project_inputs (
    project TEXT PRIMARY KEY,
    source_bands TEXT NOT NULL,
    source TEXT NOT NULL,
    resolution_min REAL,
    resolution_max REAL,
    created_at TEXT NOT NULL
)"""

_TILES_DDL = """
CREATE TABLE IF NOT EXISTS tiles (
    id TEXT PRIMARY KEY,
    raster_id INTEGER NOT NULL REFERENCES rasters (id),
    tile_row INTEGER NOT NULL,
    tile_col INTEGER NOT NULL,
    col_off INTEGER NOT NULL,
    row_off INTEGER NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    transform TEXT NOT NULL,
    crs TEXT NOT NULL,
    image_path TEXT,
    task_id INTEGER UNIQUE,
    status TEXT NOT NULL
)"""


_EVENTS_DDL = """
CREATE TABLE IF NOT EXISTS annotation_events (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id INTEGER NOT NULL,
    task_id INTEGER,
    annotation_id INTEGER,
    action TEXT NOT NULL,
    received_at TEXT NOT NULL
)"""


def _now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def _crs_text(grid: Grid) -> str:
    return crs_to_text(grid.crs)


def _tile_row(raster_id: int, uid: str, grid: Grid, crs: str, plan: TilePlan) -> tuple[Any, ...]:
    window = plan.window
    tile_grid = grid.window_grid(window)
    return (
        tile_id_for(uid, window),
        raster_id,
        plan.tile_row,
        plan.tile_col,
        window.col_off,
        window.row_off,
        window.width,
        window.height,
        json.dumps(transform_to_list(tile_grid.transform)),
        crs,
        TileStatus.PLANNED.value,
    )


def _nodata(text: str) -> float | None:
    value = json.loads(text)
    return None if value is None else float(value)


def _grid(width: int, height: int, transform_json: str, crs: str) -> Grid:
    transform: Affine = transform_from_list(json.loads(transform_json))
    return Grid(width, height, transform, crs_from_text(crs))


def _raster_record(row: Mapping[str, Any]) -> RasterRecord:
    return RasterRecord(
        id=int(row["id"]),
        path=str(row["path"]),
        name=str(row["name"]),
        content_hash=str(row["content_hash"]),
        grid=_grid(row["width"], row["height"], row["transform"], row["crs"]),
        band_count=int(row["band_count"]),
        dtype=str(row["dtype"]),
        nodata=_nodata(row["nodata"]),
        display_bands=tuple(int(b) for b in json.loads(row["display_bands"])),
        stretch=tuple((float(lo), float(hi)) for lo, hi in json.loads(row["stretch"])),
        tile_size=int(row["tile_size"]),
        overlap=int(row["overlap"]),
        project_id=int(row["project_id"]),
        input_bands=None if row.get("input_bands") is None else tuple(json.loads(row["input_bands"])),
        tiling=TilingPlan(row["tiling"]) if row.get("tiling") else TilingPlan.SHIFTED,
        status=RasterStatus(row["status"]),
        imported_at=str(row["imported_at"]),
    )


def _tile_record(row: Mapping[str, Any]) -> TileRecord:
    return TileRecord(
        id=str(row["id"]),
        raster_id=int(row["raster_id"]),
        tile_row=int(row["tile_row"]),
        tile_col=int(row["tile_col"]),
        window=PixelWindow(int(row["col_off"]), int(row["row_off"]), int(row["width"]), int(row["height"])),
        grid=_grid(row["width"], row["height"], row["transform"], row["crs"]),
        image_path=row["image_path"],
        task_id=None if row["task_id"] is None else int(row["task_id"]),
        status=TileStatus(row["status"]),
        crs_text=str(row["crs"]),
    )
