"""The record of active-learning rounds, kept beside the tile registry (same SQLite file, own tables).

Rounds are kept per project: ``number`` counts a project's rounds from 1 (``id`` is the row's
key, shared by every project of the data folder). A round row is written when the round starts
(``running``, with the step it has reached) and completed when it ends (``promoted``, ``kept`` or
``failed``). A round whose process died (``kill -9``, a crash, power loss) stays ``running`` until the
next process takes the project's round lock (the lock dies with its holder, so a ``running`` round
seen under it is dead): :func:`recover_interrupted` then marks it failed, with the step it reached,
and removes the version and stored predictions it wrote but never promoted. The frozen list of the
next tiles to label, with their scores, lives in ``round_queue``.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import shutil
import sqlite3
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any

from geolabel.errors import LabelStudioError
from trainer.predictions import PredictionStore
from trainer.versions import ModelStore

if TYPE_CHECKING:
    from geolabel.lsclient import LabelStudioClient

logger = logging.getLogger(__name__)


class RoundStatus(StrEnum):
    """How a round ended (or that it is still running)."""

    RUNNING = "running"
    PROMOTED = "promoted"  # the new version is active
    KEPT = "kept"  # the new version was worse on validation: the previous one stays active
    FAILED = "failed"


class RoundStep(StrEnum):
    """How far a running round has got (recorded as it goes: an interrupted round says where it died)."""

    HARVESTING = "harvesting annotations"
    PREPARING = "reading the training tiles"
    TRAINING = "training"
    VALIDATING = "validating"
    SAVING = "saving the version"
    SCORING = "scoring and pushing predictions"
    PROMOTING = "promoting"


#: The project's round lock, in its trainer folder: held by the process running a round (dies with it).
ROUND_LOCK = "round.lock"
#: The error of a round whose process died; ``{step}``: the step it had reached.
INTERRUPTED = "interrupted: the process running it stopped (killed or crashed) at {step}"


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
    step: str | None = None  # the last step a round reached (RoundStep)
    origin: str | None = None  # what the new version's weights started from (trainer.transfer)
    winner: str | None = None  # the model that validated best: "unet" or a contender's name
    #: Validation scores of each contender of the U-Net (trainer.contender), by name, with a "detail".
    contenders: dict[str, dict[str, Any]] = field(default_factory=dict)


_JSON_FIELDS = ("class_pixels", "annotators", "metrics", "previous_metrics", "problems", "contenders")
#: Columns added after the first release, with their SQL type (added to older registries).
_ADDED = {"step": "TEXT", "origin": "TEXT", "winner": "TEXT", "contenders": "TEXT NOT NULL DEFAULT '{}'"}

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
    number INTEGER,
    step TEXT,
    origin TEXT,
    winner TEXT,
    contenders TEXT NOT NULL DEFAULT '{}'
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
        """Record a new running round; rounds left ``running`` by a dead process are marked failed first.

        Call it under the project's round lock, after :func:`recover_interrupted` (which also cleans up).
        """
        self.fail_interrupted(project_id)
        with self.conn:
            cursor = self.conn.execute(
                "INSERT INTO rounds (project_id, number, status, trigger, started, step) VALUES"
                " (?, (SELECT COALESCE(MAX(number), 0) + 1 FROM rounds WHERE project_id = ?), ?, ?, ?, ?)",
                (project_id, project_id, RoundStatus.RUNNING, trigger, now(), RoundStep.HARVESTING),
            )
        return int(cursor.lastrowid or 0)

    def fail_interrupted(self, project_id: int) -> list[RoundRecord]:
        """Mark the project's ``running`` rounds failed (:data:`INTERRUPTED`); return them as they were.

        Only call it under the project's round lock: then no live process runs them.
        """
        dead = [r for r in self.rounds(project_id) if r.status == RoundStatus.RUNNING]
        for record in dead:
            step = record.step or "its start"
            self.finish(record.id, RoundStatus.FAILED, error=INTERRUPTED.format(step=step))
        return dead

    def set_step(self, round_id: int, step: RoundStep) -> None:
        """Record the step a running round has reached."""
        self.update(round_id, step=str(step))

    def finished_versions(self, project_id: int) -> set[str]:
        """The versions of the project's promoted and kept rounds (never to be removed)."""
        rows = self.conn.execute(
            "SELECT model_version FROM rounds WHERE project_id = ? AND status IN (?, ?)"
            " AND model_version IS NOT NULL",
            (project_id, RoundStatus.PROMOTED, RoundStatus.KEPT),
        )
        return {str(row[0]) for row in rows}

    def add_problem(self, round_id: int, problem: str) -> None:
        """Append one problem to a round's list."""
        self.update(round_id, problems=[*self.get(round_id).problems, problem])

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
    with conn:  # registries from before rounds recorded their step, origin, winner and contenders
        for name, kind in _ADDED.items():
            if name not in columns:
                conn.execute(f"ALTER TABLE rounds ADD COLUMN {name} {kind}")
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


def recover_interrupted(
    store: RoundStore,
    project_id: int,
    models: ModelStore,
    predictions_root: Path,
    client: LabelStudioClient | None = None,
) -> list[RoundRecord]:
    """Close the project's rounds whose process died, and remove what they wrote but never promoted.

    Only call it under the project's round lock (:func:`trainer.loop.run_round` and the scheduler
    at its start do): a ``running`` round seen then is dead. A round that died after its version
    became active (the very last steps) is recorded as promoted; any other is marked failed
    (:data:`INTERRUPTED`), its version folder and stored predictions removed, and, if it died
    while promoting, Label Studio's model version set back to the active one (with ``client``).
    ``ACTIVE`` is never changed. Returns the rounds as now recorded.
    """
    active = models.active_name()
    running = [r for r in store.rounds(project_id) if r.status == RoundStatus.RUNNING]
    for record in running:
        if record.model_version is not None and record.model_version == active:
            store.finish(record.id, RoundStatus.PROMOTED)  # only the record's last line was missing
            logger.warning("round %d of project %d died once promoted: recorded promoted", record.number,
                           project_id)  # fmt: skip
    for record in store.fail_interrupted(project_id):
        logger.warning(
            "round %d of project %d was left running by a process that died (at %s): marked failed",
            record.number, project_id, record.step or "its start",
        )  # fmt: skip
        if record.model_version is None:
            continue
        discard_unpromoted(store, project_id, models, predictions_root, record.model_version)
        if record.step == RoundStep.PROMOTING and client is not None:
            _restore_label_studio_version(client, project_id, record.model_version, active)
    for name in models.remove_staging():
        logger.warning("removed %s, left by a round killed while writing its version", name)
    return [store.get(r.id) for r in running]


def discard_unpromoted(
    store: RoundStore, project_id: int, models: ModelStore, predictions_root: Path, version: str
) -> bool:
    """Remove a version a failed round wrote (folder and stored predictions); return whether it did.

    The active version and those of promoted or kept rounds are never removed.
    """
    if version == models.active_name() or version in store.finished_versions(project_id):
        return False
    removed = models.discard(version)
    folder = PredictionStore(predictions_root, version).folder
    if folder.is_dir():
        shutil.rmtree(folder)
        removed = True
    if removed:
        logger.info("removed version %s of a failed round (never promoted) and its predictions", version)
    return removed


def _restore_label_studio_version(
    client: LabelStudioClient, project_id: int, dead: str, active: str | None
) -> None:
    """Set Label Studio's model version back to ``active`` if a dead round had set it to ``dead``."""
    try:
        if str(client.project(project_id).get("model_version") or "") == dead:
            client.set_model_version(project_id, active or "")
    except LabelStudioError as exc:
        logger.error(
            "Label Studio project %d may still rank tasks by the dead round's version %s: %s; set the "
            "model version to %s in the project's settings (Machine Learning)",
            project_id, dead, exc, active,
        )  # fmt: skip
