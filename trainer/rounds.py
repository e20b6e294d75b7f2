"""The record of active-learning rounds, kept beside the tile registry (same SQLite file, own tables).

Rounds are kept per project: ``number`` counts a project's rounds from 1 (``id`` is the row's
key, shared by every project of the data folder). A round row is written when the round starts
(``running``) and completed when it ends (``promoted``, ``kept`` or ``failed``), so a round
killed midway is seen as interrupted and marked failed by the next one. The frozen list of the next
tiles to label, with their scores, lives in ``round_queue``.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import Any


class RoundStatus(StrEnum):
    """How a round ended (or that it is still running)."""

    RUNNING = "running"
    PROMOTED = "promoted"  # the new version is active
    KEPT = "kept"  # the new version was worse on validation: the previous one stays active
    FAILED = "failed"


@dataclass(frozen=True)
class QueueEntry:
    """A tile of a round's next batch: rank (0 = first), tile, task, and what the model said of it."""

    rank: int
    tile_id: str
    task_id: int
    uncertainty: float
    confidence: float


class LabelState(StrEnum):
    """What is known of a tile's labelling: the one set of tile states (rounds, dashboard, exports)."""

    LABELLED = "labelled"  # at least one submitted annotation
    SKIPPED = "skipped"  # only cancelled annotations (skips in Label Studio)
    UNLABELLED = "unlabelled"
    NO_DATA = "no data"  # every pixel is nodata: no image, no task
    ANNOTATED = "annotated"  # annotated since the last round (the dashboard's live view)


@dataclass(frozen=True)
class TileState:
    """What a round knew of a tile: ``labelled``, ``skipped`` (cancelled in Label Studio) or ``unlabelled``.

    ``uncertainty`` is the promoted model's score of an unlabelled tile (None for the others).
    """

    tile_id: str
    state: LabelState
    uncertainty: float | None = None


@dataclass(frozen=True)
class RoundRecord:
    """One active-learning round as recorded."""

    id: int
    project_id: int
    status: RoundStatus
    trigger: str
    started: str
    ended: str | None = None
    events_upto: int = 0
    labelled_tiles: int = 0
    class_pixels: dict[str, int] = field(default_factory=dict)
    annotators: dict[str, int] = field(default_factory=dict)
    model_version: str | None = None
    metrics: dict[str, float] = field(default_factory=dict)
    previous_metrics: dict[str, float] = field(default_factory=dict)
    validation_tiles: int = 0
    problems: list[str] = field(default_factory=list)
    error: str | None = None
    number: int = 0  # the project's round number (1, 2, ...)


_JSON_FIELDS = ("class_pixels", "annotators", "metrics", "previous_metrics", "problems")

SCHEMA = """
CREATE TABLE IF NOT EXISTS rounds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    project_id INTEGER NOT NULL,
    status TEXT NOT NULL,
    trigger TEXT NOT NULL,
    started TEXT NOT NULL,
    ended TEXT,
    events_upto INTEGER NOT NULL DEFAULT 0,
    labelled_tiles INTEGER NOT NULL DEFAULT 0,
    class_pixels TEXT NOT NULL DEFAULT '{}',
    annotators TEXT NOT NULL DEFAULT '{}',
    model_version TEXT,
    metrics TEXT NOT NULL DEFAULT '{}',
    previous_metrics TEXT NOT NULL DEFAULT '{}',
    validation_tiles INTEGER NOT NULL DEFAULT 0,
    problems TEXT NOT NULL DEFAULT '[]',
    error TEXT,
    number INTEGER
);
CREATE TABLE IF NOT EXISTS round_queue (
    round_id INTEGER NOT NULL REFERENCES rounds(id),
    rank INTEGER NOT NULL,
    tile_id TEXT NOT NULL,
    task_id INTEGER NOT NULL,
    uncertainty REAL NOT NULL,
    confidence REAL NOT NULL,
    PRIMARY KEY (round_id, rank)
);
CREATE TABLE IF NOT EXISTS round_tiles (
    round_id INTEGER NOT NULL REFERENCES rounds(id),
    tile_id TEXT NOT NULL,
    state TEXT NOT NULL,
    uncertainty REAL,
    PRIMARY KEY (round_id, tile_id)
);
"""


def now() -> str:
    """UTC time as ISO 8601 (seconds)."""
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


class RoundStore:
    """The rounds tables in the registry's SQLite file."""

    def __init__(self, path: str | Path) -> None:
        self.conn = sqlite3.connect(str(path), timeout=30)
        self.conn.row_factory = sqlite3.Row
        self.conn.execute("PRAGMA journal_mode=WAL")
        with self.conn:
            self.conn.executescript(SCHEMA)
        _migrate(self.conn)

    def __enter__(self) -> RoundStore:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.conn.close()

    def start(self, project_id: int, trigger: str) -> int:
        """Record a new running round; rounds left ``running`` by a killed process are marked failed first."""
        with self.conn:
            self.conn.execute(
                "UPDATE rounds SET status = ?, ended = ?, error = ? WHERE status = ? AND project_id = ?",
                (
                    RoundStatus.FAILED,
                    now(),
                    "interrupted (the process stopped)",
                    RoundStatus.RUNNING,
                    project_id,
                ),
            )
            cursor = self.conn.execute(
                "INSERT INTO rounds (project_id, number, status, trigger, started) VALUES"
                " (?, (SELECT COALESCE(MAX(number), 0) + 1 FROM rounds WHERE project_id = ?), ?, ?, ?)",
                (project_id, project_id, RoundStatus.RUNNING, trigger, now()),
            )
        return int(cursor.lastrowid or 0)

    def update(self, round_id: int, **values: Any) -> None:
        """Set columns of a round (JSON columns take Python values)."""
        if not values:
            return
        encoded = {k: json.dumps(v) if k in _JSON_FIELDS else v for k, v in values.items()}
        columns = ", ".join(f"{k} = ?" for k in encoded)
        with self.conn:
            self.conn.execute(f"UPDATE rounds SET {columns} WHERE id = ?", (*encoded.values(), round_id))

    def finish(self, round_id: int, status: RoundStatus, **values: Any) -> None:
        """Close a round with ``status`` and the end time."""
        self.update(round_id, status=str(status), ended=now(), **values)

    def rounds(self, project_id: int) -> list[RoundRecord]:
        """Every round of a project, oldest first."""
        rows = self.conn.execute("SELECT * FROM rounds WHERE project_id = ? ORDER BY id", (project_id,))
        return [_record(row) for row in rows]

    def get(self, round_id: int) -> RoundRecord:
        """One round.

        Raises:
            KeyError: if there is no such round.
        """
        row = self.conn.execute("SELECT * FROM rounds WHERE id = ?", (round_id,)).fetchone()
        if row is None:
            raise KeyError(f"no round {round_id}")
        return _record(row)

    def harvested_upto(self, project_id: int) -> int:
        """Last annotation-event id a finished (not failed) round had seen (0 before the first)."""
        row = self.conn.execute(
            "SELECT MAX(events_upto) FROM rounds WHERE project_id = ? AND status IN (?, ?)",
            (project_id, RoundStatus.PROMOTED, RoundStatus.KEPT),
        ).fetchone()
        return int(row[0] or 0)

    def set_queue(self, round_id: int, entries: list[QueueEntry]) -> None:
        """Freeze the next batch of a round."""
        with self.conn:
            self.conn.execute("DELETE FROM round_queue WHERE round_id = ?", (round_id,))
            self.conn.executemany(
                "INSERT INTO round_queue VALUES (?, ?, ?, ?, ?, ?)",
                [(round_id, e.rank, e.tile_id, e.task_id, e.uncertainty, e.confidence) for e in entries],
            )

    def queue(self, round_id: int) -> list[QueueEntry]:
        """The frozen next batch of a round, in order."""
        rows = self.conn.execute(
            "SELECT rank, tile_id, task_id, uncertainty, confidence FROM round_queue"
            " WHERE round_id = ? ORDER BY rank",
            (round_id,),
        )
        return [QueueEntry(*row) for row in rows]

    def set_tile_states(self, round_id: int, states: list[TileState]) -> None:
        """Record every tile's state and uncertainty as a round left them."""
        with self.conn:
            self.conn.execute("DELETE FROM round_tiles WHERE round_id = ?", (round_id,))
            self.conn.executemany(
                "INSERT INTO round_tiles VALUES (?, ?, ?, ?)",
                [(round_id, t.tile_id, t.state, t.uncertainty) for t in states],
            )

    def tile_states(self, round_id: int) -> dict[str, TileState]:
        """The tiles' states recorded by a round, by tile id (empty for a round that scored nothing)."""
        rows = self.conn.execute(
            "SELECT tile_id, state, uncertainty FROM round_tiles WHERE round_id = ?", (round_id,)
        )
        return {row[0]: TileState(row[0], LabelState(row[1]), row[2]) for row in rows}


def _migrate(conn: sqlite3.Connection) -> None:
    """Give registries from before per-project round numbers a ``number`` column, numbering old rounds.

    Existing rounds are kept: each is numbered by its place among its project's rounds.
    """
    columns = {row[1] for row in conn.execute("PRAGMA table_info(rounds)")}
    indexed = conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'rounds_project_number'").fetchone()
    if (
        "number" in columns
        and indexed
        and not conn.execute("SELECT 1 FROM rounds WHERE number IS NULL").fetchone()
    ):
        return
    with conn:
        if "number" not in columns:
            conn.execute("ALTER TABLE rounds ADD COLUMN number INTEGER")
        conn.execute(
            "UPDATE rounds SET number = (SELECT COUNT(*) FROM rounds AS r"
            " WHERE r.project_id = rounds.project_id AND r.id <= rounds.id) WHERE number IS NULL"
        )
        conn.execute("CREATE UNIQUE INDEX IF NOT EXISTS rounds_project_number ON rounds (project_id, number)")


def _record(row: sqlite3.Row) -> RoundRecord:
    values = dict(row)
    for key in _JSON_FIELDS:
        values[key] = json.loads(values[key])
    values["status"] = RoundStatus(values["status"])
    return RoundRecord(**values)
