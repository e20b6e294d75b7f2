"""The round scheduler: a new active-learning round once enough annotations have changed.

A scheduler watches one project. APScheduler runs one interval job, kept in a SQLite job store
in the project's folder (``<data_dir>/projects/<project>/trainer/scheduler.sqlite``), so its
next run time survives a restart. Every ``trainer.check_interval`` seconds the job counts the
project's annotation events recorded (Label Studio's webhooks) since its last round harvested;
at ``trainer.threshold`` or more it runs :func:`trainer.loop.run_round` for that project.

No overlap, at three levels: the job has ``max_instances=1`` and coalesces
missed runs; one scheduler per project (a lock held for the process's
life); and ``run_round`` itself takes the project's round lock, so ``geolabel train
--now`` and the scheduler never train the same project at the same time.

At its start the scheduler takes the round lock once to close the rounds a killed process left
``running`` (:func:`trainer.rounds.recover_interrupted`: marked failed, their unpromoted version
removed), so a scheduler killed mid-round and started again shows that round failed at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from apscheduler.jobstores.sqlalchemy import SQLAlchemyJobStore
from apscheduler.schedulers.blocking import BlockingScheduler

from geolabel.config import Config, load_config
from geolabel.errors import GeolabelError
from geolabel.locks import exclusive_lock
from geolabel.lsclient import LabelStudioClient, client_for
from georef.registry import TileRegistry
from trainer.contender import Contender
from trainer.errors import RoundBusyError, SchedulerBusyError, TrainerError
from trainer.legacy import adopt_legacy_stores
from trainer.rounds import ROUND_LOCK, RoundRecord, RoundStatus, RoundStore, recover_interrupted
from trainer.versions import ModelStore

logger = logging.getLogger(__name__)
JOB_ID = "active-learning-round"


@dataclass(frozen=True)
class Check:
    """What one look found: annotation changes since the last round, and whether a round is due."""

    project_id: int | None
    changes: int
    threshold: int
    #: Seconds still to wait after failed rounds before the next try (0: none).
    retry_in: float = 0.0

    @property
    def due(self) -> bool:
        """True when a project exists, at least ``threshold`` annotations changed and no back-off runs."""
        return self.project_id is not None and self.changes >= self.threshold and self.retry_in <= 0


#: Longest wait between two tries after failed rounds.
MAX_RETRY_WAIT_S = 3600.0


def retry_wait(rounds: list[RoundRecord], interval: float, now: datetime) -> float:
    """Seconds to wait before a new round after the last ones failed (0 when the last did not fail).

    A failed round does not count its annotations as harvested, so without a wait every check would
    train again (a round that fails for a lasting reason would take the CPU forever). After ``n``
    failed rounds in a row the next one waits ``interval * 2**(n-1)`` seconds after the last failure,
    at most :data:`MAX_RETRY_WAIT_S`; ``geolabel train --now`` is never held back.
    """
    failures = 0
    for record in reversed(rounds):
        if record.status != RoundStatus.FAILED:
            break
        failures += 1
    if not failures or rounds[-1].ended is None:
        return 0.0
    wait = min(interval * 2.0 ** (failures - 1), MAX_RETRY_WAIT_S)
    elapsed = (now - datetime.fromisoformat(rounds[-1].ended)).total_seconds()
    return max(0.0, wait - elapsed)


def check(config: Config) -> Check:
    """Count the project's annotation events recorded since the events its last round harvested."""
    threshold = config.trainer.threshold
    if not config.registry_path.is_file():
        return Check(None, 0, threshold)
    with TileRegistry(config.registry_path) as registry, RoundStore(config.registry_path) as rounds:
        project_id = registry.project_id(config.project.name)
        if project_id is None:
            return Check(None, 0, threshold)
        changes = registry.count_changed_annotations(project_id, rounds.harvested_upto(project_id))
        history = rounds.rounds(project_id)
    wait = retry_wait(history, config.trainer.check_interval, datetime.now(UTC))
    return Check(project_id, changes, threshold, wait)


#: Given the round's configuration, the models that compete with its U-Net (:mod:`trainer.contender`).
Contenders = Callable[[Config], Sequence[Contender]]


def round_if_due(
    config_path: str,
    project: str | None = None,
    scheduler: str | None = None,
    contenders: Contenders | None = None,
) -> str:
    """The scheduled job: run a round of ``project`` if enough of its annotations changed.

    Returns what it did, in words. The configuration is read again at every run, so edits to
    ``[trainer]`` apply from the next round. Failures are logged (the round is recorded as failed)
    and the next check tries again. ``project`` None: ``project.name`` of the file; ``scheduler``: the
    ``--scheduler`` given to ``geolabel train --schedule`` (None: ``[compute] scheduler`` of the file);
    ``contenders``: a module-level function (the job store keeps it by name) giving the models that
    compete with the round's U-Net.
    """
    from trainer.loop import Start, run_round  # torch: loaded by the first round, not by every check

    config = load_config(Path(config_path)).for_project(project).with_scheduler(scheduler)
    found = check(config)
    if not found.due:
        text = f"{found.changes} annotation change(s) since the last round; a round at {found.threshold}"
        if found.retry_in > 0 and found.changes >= found.threshold:
            text += f"; the last round failed: next try in {found.retry_in:.0f} s"
        logger.info(text)
        return text
    logger.info("%d annotation change(s): starting a round", found.changes)
    try:
        start = Start(contenders=contenders(config) if contenders is not None else ())
        record = run_round(config, client_for(config), trigger="scheduled", start=start)
    except (TrainerError, GeolabelError) as exc:
        logger.error("scheduled round of %s failed: %s", config.project.name, exc)
        return f"round failed: {exc}"
    miou = record.metrics.get("miou")
    text = (
        f"{config.project.name}: round {record.number} {record.status}: version {record.model_version}, "
        f"validation mIoU {miou}"
    )
    logger.info(text)
    return text


def scheduler_for(
    config: Config, config_path: Path, compute: str | None = None, contenders: Contenders | None = None
) -> BlockingScheduler:
    """A blocking scheduler with the project's round job in its own job store (interval from the config).

    ``compute``: the ``--scheduler`` the rounds use instead of the file's ``[compute] scheduler``;
    ``contenders``: see :func:`round_if_due`.
    """
    store_path = config.trainer_dir / "scheduler.sqlite"
    store_path.parent.mkdir(parents=True, exist_ok=True)
    scheduler = BlockingScheduler(
        jobstores={"default": SQLAlchemyJobStore(url=f"sqlite:///{store_path}")},
        job_defaults={"coalesce": True, "max_instances": 1, "misfire_grace_time": None},
    )
    scheduler.add_job(
        round_if_due,
        "interval",
        seconds=config.trainer.check_interval,
        args=[str(config_path.resolve()), config.project.name, compute, contenders],
        id=JOB_ID,
        name="active-learning round when enough annotations changed",
        next_run_time=datetime.now(UTC),  # look at once, then every check_interval
        replace_existing=True,  # a changed check_interval replaces the stored job
    )
    return scheduler


def run_scheduler(
    config: Config, config_path: Path, compute: str | None = None, contenders: Contenders | None = None
) -> None:
    """Run the project's scheduler in the foreground until interrupted (Ctrl-C, SIGTERM).

    ``compute``: the ``--scheduler`` of the rounds (None: ``[compute] scheduler`` of the file);
    ``contenders``: see :func:`round_if_due`.

    Raises:
        SchedulerBusyError: if another scheduler runs for the same project.
    """
    lock = config.trainer_dir / "scheduler.lock"
    busy = SchedulerBusyError(
        f"a round scheduler already runs for project {config.project.name!r} of {config.data_dir}"
    )
    with exclusive_lock(lock, lambda: busy):
        recover_at_start(config)
        scheduler = scheduler_for(config, config_path, compute, contenders)
        logger.info(
            "round scheduler of %s: every %.0f s, a round at %d annotation change(s)",
            config.project.name,
            config.trainer.check_interval,
            config.trainer.threshold,
        )
        try:
            scheduler.start()
        except (KeyboardInterrupt, SystemExit):
            logger.info("round scheduler stopped")
        finally:
            if scheduler.running:
                scheduler.shutdown(wait=True)


def recover_at_start(config: Config) -> list[RoundRecord]:
    """Close the project's rounds a dead process left ``running``; return them as now recorded.

    Does nothing while a round runs (``geolabel train --now`` holds the round lock: it recovers them).
    """
    if not config.registry_path.is_file():
        return []
    try:
        with (
            exclusive_lock(config.trainer_dir / ROUND_LOCK, lambda: RoundBusyError("a round is running")),
            TileRegistry(config.registry_path) as registry,
            RoundStore(config.registry_path) as store,
        ):
            project_id = registry.project_id(config.project.name)
            if project_id is None:
                return []
            adopt_legacy_stores(config)
            models = ModelStore(config.models_dir)
            closed = recover_interrupted(store, project_id, models, config.predictions_dir, _client(config))
    except RoundBusyError:
        logger.info("a round of %s is running: it closes any interrupted round itself", config.project.name)
        return []
    for record in closed:
        if record.status == RoundStatus.FAILED:
            logger.warning("%s: round %d %s: %s", config.project.name, record.number, record.status,
                           record.error)  # fmt: skip
    return closed


def _client(config: Config) -> LabelStudioClient | None:
    """The configured Label Studio client, or None without a token (then Label Studio is left as it is)."""
    try:
        return client_for(config)
    except GeolabelError:
        return None
