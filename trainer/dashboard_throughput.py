"""Annotator throughput for the dashboard: tiles each annotator labelled, per day (UTC).

A round's harvest streams every labelled task of the project past a
:class:`ThroughputTally`, which counts, for each annotator and day of creation of
their submitted annotations, the distinct tasks (tiles) of the project they
labelled. The counts are stored per project beside the rounds (table
``annotator_days`` of the registry file), replacing the previous harvest's, and
the dashboard reads them without asking Label Studio. They are as fresh as the
newest harvest.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from geolabel.lsmodels import LabelledTask
from trainer.tables import connect

SCHEMA = """
CREATE TABLE IF NOT EXISTS annotator_days (
    project_id INTEGER NOT NULL,
    annotator TEXT NOT NULL,
    day TEXT NOT NULL,
    tiles INTEGER NOT NULL,
    PRIMARY KEY (project_id, annotator, day)
);
"""


@dataclass(frozen=True)
class AnnotatorDay:
    """Tiles an annotator labelled on one day (UTC, ``YYYY-MM-DD``)."""

    annotator: str
    day: str
    tiles: int


class ThroughputTally:
    """Counts distinct tasks per (annotator, day) of the tasks streamed through :meth:`watch`."""

    def __init__(self, task_ids: Collection[int]) -> None:
        """Count only the tasks in ``task_ids`` (the project's tiles)."""
        self._task_ids = task_ids
        self._seen: dict[tuple[str, str], set[int]] = {}

    def watch(self, tasks: Iterable[LabelledTask]) -> Iterator[LabelledTask]:
        """Yield ``tasks`` unchanged, counting each one's submitted annotations on the way."""
        for task in tasks:
            self.add(task)
            yield task

    def add(self, task: LabelledTask) -> None:
        """Count ``task`` once per annotator and day on which they submitted an annotation of it."""
        if task.id not in self._task_ids:
            return
        for annotation in task.submitted:
            day = _day(annotation.created_at)
            if day is not None:
                self._seen.setdefault((annotation.annotator, day), set()).add(task.id)

    def counts(self) -> list[AnnotatorDay]:
        """The counts, by annotator then day."""
        return [AnnotatorDay(who, day, len(tasks)) for (who, day), tasks in sorted(self._seen.items())]


def _day(timestamp: str | None) -> str | None:
    """The UTC day of a Label Studio timestamp (``2026-11-30T01:05:09.5Z``), None when there is none."""
    if not timestamp:
        return None
    try:
        moment = dt.datetime.fromisoformat(timestamp)
    except ValueError:
        return None
    if moment.tzinfo is not None:
        moment = moment.astimezone(dt.UTC)
    return moment.date().isoformat()


def save_throughput(path: str | Path, project_id: int, counts: Iterable[AnnotatorDay]) -> None:
    """Replace the project's stored counts with ``counts`` (one transaction)."""
    with connect(path, SCHEMA) as conn:
        conn.execute("DELETE FROM annotator_days WHERE project_id = ?", (project_id,))
        conn.executemany(
            "INSERT INTO annotator_days (project_id, annotator, day, tiles) VALUES (?, ?, ?, ?)",
            [(project_id, c.annotator, c.day, c.tiles) for c in counts],
        )


def load_throughput(path: str | Path, project_id: int) -> list[AnnotatorDay]:
    """The project's stored counts, by annotator then day (empty before the first harvest)."""
    if not Path(path).is_file():
        return []
    with connect(path, SCHEMA) as conn:
        rows = conn.execute(
            "SELECT annotator, day, tiles FROM annotator_days WHERE project_id = ? ORDER BY annotator, day",
            (project_id,),
        ).fetchall()
    return [AnnotatorDay(str(who), str(day), int(tiles)) for who, day, tiles in rows]
