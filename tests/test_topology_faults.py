"""Faults in the deployment's topology (:mod:`geolabel.topology`), for real: a backend worker killed
mid-request, the scheduler killed mid-round, Label Studio stopped mid-round, PostgreSQL restarted.

The tests share one topology and run in order: each leaves it serving for the next. Rounds start at 3
annotation changes (the scheduler looks every 2 s).
"""

from __future__ import annotations

import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from geolabel.topology import EMBEDDER, LABEL_STUDIO, ML_BACKEND, SCHEDULER, Topology, postgres_problem
from tests.test_topology import (
    embedded,
    event_count,
    sam_mask,
    start_topology,
    submit,
    task_ids,
    wait_for,
)
from trainer.rounds import RoundRecord, RoundStatus, RoundStep, RoundStore

pytestmark = pytest.mark.labelstudio
THRESHOLD = 3
DONE = (RoundStatus.PROMOTED, RoundStatus.KEPT)


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory, random_sam_vit_b: Path) -> Iterator[Topology]:
    topology = start_topology(tmp_path_factory.mktemp("faults"), random_sam_vit_b, threshold=THRESHOLD)
    try:
        yield topology
    finally:
        topology.stop()


def rounds(topo: Topology) -> list[RoundRecord]:
    with RoundStore(topo.config.registry_path) as store:
        return store.rounds(int(topo.project_id or 0))


def active_version(topo: Topology) -> str | None:
    model = (topo.backend_health() or {}).get("model")
    return model.get("active_version") if isinstance(model, dict) else None


def submit_round(topo: Topology, first: int) -> list[int]:
    """Submit THRESHOLD annotations on tasks ``first``.. (enough for a round); return the tasks."""
    tasks = task_ids(topo)[first : first + THRESHOLD]
    before = event_count(topo)
    for task_id in tasks:
        submit(topo, task_id)
    wait_for("the webhook's events", lambda: event_count(topo) == before + THRESHOLD, timeout=60)
    return tasks


def round_at(topo: Topology, number: int, steps: tuple[RoundStep, ...]) -> RoundRecord | None:
    """Round ``number`` while it is running at one of ``steps``."""
    found = [r for r in rounds(topo) if r.number == number]
    if found and found[0].status == RoundStatus.RUNNING and found[0].step in steps:
        return found[0]
    return None


def finished(topo: Topology, number: int) -> RoundRecord | None:
    found = [r for r in rounds(topo) if r.number == number and r.status != RoundStatus.RUNNING]
    return found[0] if found else None


def busiest(pids: list[int], seconds: float = 2.0) -> tuple[int, float]:
    """The process among ``pids`` that used the most CPU over ``seconds``, and its CPU percent."""
    procs = [psutil.Process(pid) for pid in pids]
    for proc in procs:
        proc.cpu_percent(None)
    time.sleep(seconds)
    usage = [(proc.pid, proc.cpu_percent(None)) for proc in procs]
    return max(usage, key=lambda item: item[1])


def test_a_backend_worker_killed_mid_click_is_replaced_and_nothing_is_lost(topo: Topology) -> None:
    for task_id in task_ids(topo)[:2]:  # recorded before the crash
        submit(topo, task_id)
    wait_for("2 events", lambda: event_count(topo) == 2, timeout=60)
    queue = topo.client().queue(int(topo.project_id or 0))
    cold = next(t.task_id for t in reversed(queue) if not embedded(topo, t.task_id))
    outcome: dict[str, object] = {}

    def click() -> None:
        try:
            outcome["mask"] = sam_mask(topo, cold)
        except Exception as exc:  # the request may fail: it must fail, not hang
            outcome["error"] = exc

    clicker = threading.Thread(target=click, daemon=True)
    clicker.start()
    workers = topo.backend_worker_pids()
    victim, cpu = wait_for("a worker running SAM's encoder", lambda: _busy(workers), timeout=60, every=0)
    psutil.Process(victim).kill()  # kill -9 one worker mid-request
    clicker.join(timeout=300)
    assert not clicker.is_alive(), "the click hung after its worker was killed"
    assert outcome, f"the click neither failed nor answered (worker {victim} at {cpu:.0f} % CPU)"
    replaced = wait_for("gunicorn replacing the worker", lambda: _replaced(topo, victim), timeout=120)
    assert set(replaced) & set(workers), "only the killed worker is replaced"
    assert topo.backend_health() is not None
    assert sam_mask(topo, cold).any()  # the next click succeeds
    assert event_count(topo) == 2  # nothing recorded before was lost
    log = (topo.log_dir / f"{ML_BACKEND}.log").read_text(errors="replace")
    assert f"Worker (pid:{victim}) was sent SIGKILL" in log  # gunicorn saw the crash


def _replaced(topo: Topology, victim: int) -> list[int] | None:
    pids = topo.backend_worker_pids()
    return pids if len(pids) == 2 and victim not in pids else None


def _busy(workers: list[int]) -> tuple[int, float] | None:
    pid, cpu = busiest(workers, 1.0)
    return (pid, cpu) if cpu > 50 else None


def test_the_first_round_runs_through_the_whole_topology(topo: Topology) -> None:
    submit_round(topo, 2)  # with the 2 earlier changes: a round is due
    record = wait_for("round 1", lambda: finished(topo, 1), timeout=300, every=1)
    assert record.status == RoundStatus.PROMOTED, record.error
    wait_for("the backend serving round 1's version", lambda: active_version(topo) == record.model_version)


def test_the_scheduler_killed_mid_round_leaves_the_active_version_and_the_next_round_succeeds(
    topo: Topology,
) -> None:
    active = active_version(topo)
    assert active is not None
    topo.update_settings({"trainer": {"epochs": 200}})  # the kill lands in training
    submit_round(topo, 5)
    wait_for("round 2 training", lambda: round_at(topo, 2, (RoundStep.TRAINING,)), timeout=300, every=0.3)
    scheduler = topo.pids()[SCHEDULER]
    topo.kill(SCHEDULER)  # SIGKILL to its process group
    assert not psutil.pid_exists(scheduler) or psutil.Process(scheduler).status() == psutil.STATUS_ZOMBIE
    assert active_version(topo) == active  # the active version keeps serving
    topo.update_settings({"trainer": {"epochs": 1}})
    topo.restart_scheduler()
    killed = wait_for("round 2 marked failed", lambda: finished(topo, 2), timeout=120)
    assert killed.status == RoundStatus.FAILED
    assert "interrupted" in (killed.error or "")
    record = wait_for("round 3", lambda: finished(topo, 3), timeout=300, every=1)
    assert record.status in DONE, record.error
    assert active_version(topo) is not None


def test_label_studio_down_during_a_round_fails_it_cleanly_and_the_next_one_succeeds(
    topo: Topology,
) -> None:
    # Label Studio stops after the annotations are recorded and before the round harvests them: a round
    # kept (not better) calls Label Studio only while harvesting, so a stop during training may miss it.
    topo.update_settings({"trainer": {"threshold": 1_000_000}})
    submit_round(topo, 8)
    topo.stop_label_studio()
    topo.update_settings({"trainer": {"threshold": THRESHOLD}})
    failed = wait_for("round 4 failing", lambda: finished(topo, 4), timeout=300, every=1)
    assert failed.status == RoundStatus.FAILED
    assert "unreachable" in (failed.error or ""), failed.error
    assert topo.token not in (failed.error or "")
    assert {SCHEDULER, EMBEDDER, ML_BACKEND} <= set(topo.pids())  # nothing else fell over
    topo.start_label_studio()
    record = wait_for("round 5", lambda: finished(topo, 5), timeout=300, every=1)
    assert record.status in DONE, record.error
    assert {SCHEDULER, EMBEDDER, ML_BACKEND, LABEL_STUDIO} <= set(topo.pids())


def restart_postgres() -> None:
    """Restart the PostgreSQL 15 cluster the topology's database lives on (and make sure it is back)."""
    restart = ["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "restart"]
    done = subprocess.run(restart, capture_output=True, text=True, timeout=120, check=False)
    if postgres_problem() is not None:  # the machine's own start command (python-svc.md)
        start = ["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "start"]
        subprocess.run(start, capture_output=True, timeout=120, check=False)
    assert done.returncode == 0, f"pg_ctlcluster restart failed: {done.stderr}"
    assert postgres_problem() is None


def test_after_a_postgresql_restart_everything_answers_again_without_a_manual_step(topo: Topology) -> None:
    log = topo.log_dir / f"{LABEL_STUDIO}.log"
    restart_postgres()
    offset = log.stat().st_size
    path = f"/api/projects/{topo.project_id}/"
    headers = {"Authorization": f"Token {topo.token}"}

    def both_app_processes_answer() -> bool:
        response = httpx.get(f"{topo.label_studio_url}{path}", headers=headers, timeout=30)
        lines = log.read_bytes()[offset:].decode(errors="replace").splitlines()
        ok = {line.split(">")[0].lstrip("<") for line in lines if f'"GET {path}" 200' in line}
        return response.status_code == 200 and ok >= {str(p) for p in topo.label_studio_worker_pids()}

    wait_for("both Label Studio processes answering", both_app_processes_answer, timeout=120, every=0.2)
    assert wait_for("the backend", topo.backend_health, timeout=60)
    before = event_count(topo)
    submit(topo, task_ids(topo)[11])
    wait_for("the annotation in the registry", lambda: event_count(topo) == before + 1, timeout=60)
    assert set(topo.pids()) == {LABEL_STUDIO, ML_BACKEND, SCHEDULER, EMBEDDER}
