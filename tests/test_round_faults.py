"""Faults during active-learning rounds, with real components: a round's process killed (``kill -9``),
Label Studio stopped mid-round, and Label Studio calls retried against a real HTTP server."""

from __future__ import annotations

import http.server
import itertools
import logging
import os
import shutil
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from geolabel.config import TOKEN_ENV, Config
from geolabel.credentials import read_credentials
from geolabel.errors import LabelStudioError, LabelStudioUnreachableError
from geolabel.lsclient import LabelStudioClient, Retry
from geolabel.stack import LocalLabelStudio, spawn, terminate
from georef.labelstudio import brush_result
from georef.registry import TileRecord
from tests.conftest import LabelStudioServer, config_toml, free_port, import_scene
from trainer.errors import HarvestError, LabelStudioDownError
from trainer.loop import run_round
from trainer.predictions import PredictionStore
from trainer.rounds import INTERRUPTED, RoundRecord, RoundStatus, RoundStep, RoundStore
from trainer.scheduler import recover_at_start
from trainer.versions import ModelStore

pytestmark = pytest.mark.labelstudio

FAST = Retry(3, 0.05)
TRAINER: dict[str, object] = {"epochs": 2, "batch_size": 4, "block_tiles": 1, "batch": 2, "crop": 128}
_names = itertools.count()


# retries against a real HTTP server ---------------------------------------------------------------


class _Scripted(http.server.BaseHTTPRequestHandler):
    """Answers each request with the next status of the server's script (then 200 with a user)."""

    def _answer(self) -> None:
        server = self.server
        assert isinstance(server, ScriptedServer)
        server.requests.append((self.command, self.path, self.headers.get("Authorization", "")))
        length = int(self.headers.get("Content-Length") or 0)
        self.rfile.read(length)
        status = server.script.pop(0) if server.script else 200
        body = b'{"id": 1, "email": "a@b.test", "username": "a"}' if status == 200 else b'{"detail": "x"}'
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        self._answer()

    def do_POST(self) -> None:
        self._answer()

    def log_message(self, format: str, *args: object) -> None:
        pass


class ScriptedServer(http.server.ThreadingHTTPServer):
    def __init__(self, script: list[int]) -> None:
        super().__init__(("127.0.0.1", 0), _Scripted)
        self.script = script
        self.requests: list[tuple[str, str, str]] = []

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


@pytest.fixture
def scripted() -> Iterator[ScriptedServer]:
    server = ScriptedServer([])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


TOKEN = "f00dfeedf00dfeedf00dfeedf00dfeedf00dfeed"


def test_a_call_answered_503_twice_then_200_succeeds_and_each_retry_is_logged_without_the_token(
    scripted: ScriptedServer, caplog: pytest.LogCaptureFixture
) -> None:
    scripted.script[:] = [503, 503]
    client = LabelStudioClient(scripted.url, TOKEN, retry=FAST)
    with caplog.at_level(logging.WARNING, logger="geolabel.lsclient"):
        assert client.check() == "a@b.test"
    assert len(scripted.requests) == 3
    assert all(TOKEN in auth for _, _, auth in scripted.requests)  # the token was sent...
    retries = [r for r in caplog.records if "trying again" in r.getMessage()]
    assert len(retries) == 2
    assert "HTTP 503" in retries[0].getMessage()
    assert scripted.url in retries[0].getMessage()
    assert TOKEN not in caplog.text  # ...and never logged


def test_a_404_is_not_retried_and_a_lasting_503_says_label_studio_is_unavailable(
    scripted: ScriptedServer,
) -> None:
    client = LabelStudioClient(scripted.url, TOKEN, retry=FAST)
    scripted.script[:] = [404]
    with pytest.raises(LabelStudioError, match="HTTP 404") as refused:
        client.project(7)
    assert not isinstance(refused.value, LabelStudioUnreachableError)
    assert len(scripted.requests) == 1
    scripted.script[:] = [503, 503, 503, 503]
    with pytest.raises(LabelStudioUnreachableError, match=r"unavailable \(HTTP 503\)") as down:
        client.project(7)
    assert len(scripted.requests) == 1 + FAST.attempts
    assert scripted.url in str(down.value)
    assert "unreachable after 3 attempts" in str(down.value)
    assert TOKEN not in str(down.value)


def test_a_request_that_creates_something_is_retried_only_when_it_cannot_have_been_carried_out(
    scripted: ScriptedServer,
) -> None:
    client = LabelStudioClient(scripted.url, TOKEN, retry=FAST)
    prediction = {"task": 1, "result": [], "score": 0.5, "model_version": "v1"}
    scripted.script[:] = [503, 201]
    client.import_predictions(3, [prediction])
    assert [method for method, _, _ in scripted.requests] == ["POST", "POST"]
    scripted.requests.clear()
    scripted.script[:] = [504]  # the gateway gave up waiting: Label Studio may have imported them
    with pytest.raises(LabelStudioUnreachableError, match="HTTP 504"):
        client.import_predictions(3, [prediction])
    assert len(scripted.requests) == 1
    scripted.requests.clear()
    scripted.script[:] = [504, 504, 504]
    with pytest.raises(LabelStudioUnreachableError, match="HTTP 504"):
        client.project(3)  # a read is retried on a 504
    assert len(scripted.requests) == 3


def test_nothing_listening_is_retried_then_named_unreachable(caplog: pytest.LogCaptureFixture) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    with (
        caplog.at_level(logging.WARNING, logger="geolabel.lsclient"),
        pytest.raises(
            LabelStudioUnreachableError, match=r"cannot reach Label Studio at .* unreachable after 3 attempts"
        ),
    ):
        LabelStudioClient(url, TOKEN, retry=FAST).project(1)
    assert len([r for r in caplog.records if "ConnectError" in r.getMessage()]) == 2
    with pytest.raises(LabelStudioUnreachableError, match="cannot reach Label Studio") as once:
        LabelStudioClient(url, TOKEN).project(1)  # the default: one attempt, at once
    assert "attempts" not in str(once.value)


# projects with a promoted version ---------------------------------------------------------------


@dataclass
class Trained:
    config: Config
    client: LabelStudioClient
    project_id: int
    first: str  # the promoted version


def scene(size: int) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.uint8]]:
    """Bright roofs (building) on dark noisy ground, ``size`` x ``size`` RGB."""
    rng = np.random.default_rng(11)
    image = rng.normal(60, 8, (3, size, size))
    truth = np.zeros((size, size), dtype=np.uint8)
    for row in range(20, size - 24, 64):
        for col in range(20, size - 30, 72):
            truth[row : row + 24, col : col + 30] = 1
    image[:, truth == 1] += 150
    return np.clip(image, 0, 255).astype(np.uint8), truth


def trained_project(server: LabelStudioServer, folder: Path, size: int) -> Trained:
    """A project of ``size``-px square raster (256 px tiles), one tile labelled, its first version promoted.

    One labelled tile: no validation tile, so every round promotes its version.
    """
    image, truth = scene(size)
    title = f"faults {next(_names)} {os.getpid()}"
    imported = import_scene(server, folder / "scene.tif", image, title, overlap=0, trainer=TRAINER)
    client = server.client()
    tile: TileRecord = imported.tiles[0]
    w = tile.window
    answer = truth[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width]
    client.create_annotation(
        int(tile.task_id or 0), [brush_result(answer == 1, "building", "label_brush", "image")]
    )
    record = run_round(imported.config, client, retry=FAST)
    assert record.status == RoundStatus.PROMOTED, record.error
    assert record.model_version is not None
    return Trained(imported.config, client, imported.report.project_id, record.model_version)


def rounds_of(trained: Trained) -> list[RoundRecord]:
    with RoundStore(trained.config.registry_path) as store:
        return store.rounds(trained.project_id)


def wait_for(
    condition: Callable[[], bool],
    what: str,
    timeout: float,
    process: subprocess.Popen[bytes] | None = None,
    log: Path | None = None,
) -> None:
    """Poll ``condition`` every 50 ms; fail if ``process`` exits first or after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        if process is not None and process.poll() is not None:
            raise AssertionError(f"the process exited before {what}: {log.read_text() if log else ''}")
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}: {log.read_text() if log else ''}")


# kill -9 mid-round ------------------------------------------------------------------------------


def test_a_round_killed_while_scoring_is_failed_by_the_next_start_and_its_version_removed(
    label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    trained = trained_project(label_studio, tmp_path, 1536)  # 36 tiles: 35 to score
    models = ModelStore(trained.config.models_dir)
    env = {**os.environ, TOKEN_ENV: label_studio.token}
    train_toml = config_toml(
        trained.config, tmp_path, "[trainer]\nepochs = 2\ncrop = 128\nblock_tiles = 1\n\n"
    )
    log = tmp_path / "train.log"
    command = [sys.executable, "-m", "geolabel.cli", "--config", str(train_toml), "train", "--now"]
    trainer = spawn(command, env, log)
    try:
        wait_for(
            lambda: rounds_of(trained)[-1].step == RoundStep.SCORING, "the round to score", 300, trainer, log
        )
    finally:
        os.killpg(trainer.pid, signal.SIGKILL)
        trainer.wait()
    killed = rounds_of(trained)[-1]
    assert (killed.status, killed.step) == (RoundStatus.RUNNING, RoundStep.SCORING)  # until the next start
    junk = killed.model_version
    assert junk is not None
    assert junk != trained.first
    assert (trained.config.models_dir / junk).is_dir()  # saved, scoring, never promoted
    assert models.active_name() == trained.first
    assert trained.client.project(trained.project_id)["model_version"] == trained.first

    # the scheduler's start closes the dead round (threshold never reached: it trains nothing)
    schedule_toml = tmp_path / "schedule" / "geolabel.toml"
    schedule_toml.parent.mkdir()
    config_toml(trained.config, schedule_toml.parent, "[trainer]\nthreshold = 1000\ncheck_interval = 1\n\n")
    log = tmp_path / "scheduler.log"
    command = [sys.executable, "-m", "geolabel.cli", "--config", str(schedule_toml), "train", "--schedule"]
    scheduler = spawn(command, env, log)
    try:
        wait_for(  # logged once recovered (the round is marked failed first, then its version removed)
            lambda: "round scheduler of" in log.read_text(), "the scheduler to start", 120, scheduler, log
        )
    finally:
        terminate(scheduler)
    closed = rounds_of(trained)[-1]
    assert closed.id == killed.id
    assert closed.status == RoundStatus.FAILED
    assert closed.error == INTERRUPTED.format(step="scoring and pushing predictions")
    assert closed.ended is not None
    assert not (trained.config.models_dir / junk).exists()
    assert not PredictionStore(trained.config.predictions_dir, junk).folder.exists()
    assert models.versions() == [trained.first]
    assert models.active_name() == trained.first
    assert trained.client.project(trained.project_id)["model_version"] == trained.first
    assert label_studio.token not in log.read_text()
    assert "marked failed" in log.read_text()

    record = run_round(trained.config, trained.client, retry=FAST)  # the next round succeeds
    assert record.status == RoundStatus.PROMOTED, record.error
    assert models.active_name() == record.model_version != trained.first
    assert trained.client.project(trained.project_id)["model_version"] == record.model_version
    assert models.versions() == sorted([trained.first, str(record.model_version)])


def test_a_round_whose_process_died_while_promoting_is_failed_and_label_studio_set_back(
    label_studio: LabelStudioServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a kill between Label Studio's model version and ``ACTIVE`` leaves, made by hand."""
    trained = trained_project(label_studio, tmp_path, 512)
    models = ModelStore(trained.config.models_dir)
    with RoundStore(trained.config.registry_path) as store:
        dead = store.start(trained.project_id, "manual")
        store.update(dead, step=str(RoundStep.PROMOTING), model_version="v20000101-000000")
    version_dir = trained.config.models_dir / "v20000101-000000"
    shutil.copytree(trained.config.models_dir / trained.first, version_dir)
    (version_dir / "manifest.json").write_text(
        (version_dir / "manifest.json").read_text().replace(trained.first, "v20000101-000000")
    )
    # predictions carrying that version, and Label Studio already ranking by it
    task_id = int(trained.client.tasks(trained.project_id)[1].task_id)
    trained.client.import_predictions(
        trained.project_id,
        [{"task": task_id, "result": [], "score": 0.1, "model_version": "v20000101-000000"}],
    )
    trained.client.set_model_version(trained.project_id, "v20000101-000000")
    monkeypatch.setenv(TOKEN_ENV, label_studio.token)
    (closed,) = recover_at_start(trained.config)  # what the scheduler does when it starts
    assert closed.id == dead
    assert closed.status == RoundStatus.FAILED
    assert closed.error == INTERRUPTED.format(step="promoting")
    assert not version_dir.exists()
    assert models.active_name() == trained.first
    assert trained.client.project(trained.project_id)["model_version"] == trained.first
    assert recover_at_start(trained.config) == []  # nothing left running
    assert models.versions() == [trained.first]


# Label Studio stopped mid-round -------------------------------------------------------------------


@pytest.fixture
def own_label_studio(label_studio: LabelStudioServer, tmp_path: Path) -> Iterator[LocalLabelStudio]:
    """A second real Label Studio this test may stop: a copy of the test run's (no migrations to wait for)."""
    state_dir = label_studio.document_root / f"label-studio-copy-{os.getpid()}-{next(_names)}"
    state_dir.mkdir(mode=0o700)
    shutil.copy2(label_studio.state_dir / "credentials.json", state_dir / "credentials.json")
    with (
        sqlite3.connect(label_studio.state_dir / "label_studio.sqlite3") as source,
        sqlite3.connect(state_dir / "label_studio.sqlite3") as copy,
    ):
        source.backup(copy)  # a consistent snapshot while the first server runs
    creds = read_credentials(state_dir)
    assert creds is not None
    server = LocalLabelStudio(f"http://127.0.0.1:{free_port()}", state_dir, label_studio.document_root, creds)
    server.start()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(state_dir, ignore_errors=True)


def test_label_studio_stopped_mid_round_fails_the_round_cleanly_and_the_next_round_succeeds(
    own_label_studio: LocalLabelStudio,
    label_studio: LabelStudioServer,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    server = LabelStudioServer(
        own_label_studio.url,
        own_label_studio.credentials.token,
        label_studio.document_root,
        own_label_studio.state_dir,
    )
    trained = trained_project(server, tmp_path, 512)
    models = ModelStore(trained.config.models_dir)

    # stopped before the round: the harvest retries, then the round fails naming Label Studio
    own_label_studio.stop()
    with pytest.raises(HarvestError, match="unreachable after 3 attempts") as harvest_error:
        run_round(trained.config, trained.client, retry=FAST)
    assert isinstance(harvest_error.value, LabelStudioError)
    failed = rounds_of(trained)[-1]
    assert failed.status == RoundStatus.FAILED
    assert f"cannot reach Label Studio at {own_label_studio.url}" in (failed.error or "")
    assert failed.step == RoundStep.HARVESTING
    assert models.active_name() == trained.first

    # stopped while the round trains: scoring cannot read the project; the saved version is removed
    own_label_studio.start()
    slow = trained.config.model_copy(
        update={"trainer": trained.config.trainer.model_copy(update={"epochs": 150})}
    )
    stopped = threading.Event()

    def stop_when_training() -> None:
        wait_for(lambda: rounds_of(trained)[-1].step == RoundStep.TRAINING, "training", 300)
        own_label_studio.stop()
        stopped.set()

    watcher = threading.Thread(target=stop_when_training)
    watcher.start()
    try:
        with pytest.raises(
            LabelStudioDownError, match=f"cannot reach Label Studio at {own_label_studio.url}"
        ) as stopped_round:
            run_round(slow, trained.client, retry=FAST)
    finally:
        watcher.join()
    assert stopped.is_set()
    assert isinstance(stopped_round.value, LabelStudioUnreachableError)
    failed = rounds_of(trained)[-1]
    assert failed.status == RoundStatus.FAILED
    assert failed.step == RoundStep.SCORING, failed.error  # trained and saved before it failed
    assert "Label Studio" in (failed.error or "")
    assert failed.model_version is not None
    assert not (trained.config.models_dir / failed.model_version).exists()
    assert not PredictionStore(trained.config.predictions_dir, failed.model_version).folder.exists()
    assert models.versions() == [trained.first]
    assert models.active_name() == trained.first

    own_label_studio.start()  # back: Label Studio still ranks by the active version, the next round works
    assert trained.client.project(trained.project_id)["model_version"] == trained.first
    record = run_round(trained.config, trained.client, retry=FAST)
    assert record.status == RoundStatus.PROMOTED, record.error
    assert models.active_name() == record.model_version
    assert trained.client.project(trained.project_id)["model_version"] == record.model_version

    # down when a round starts, back within its retry window: the retries carry the round through
    own_label_studio.stop()

    def start_soon() -> None:
        time.sleep(1.0)
        own_label_studio.start()

    restarter = threading.Thread(target=start_soon)
    caplog.clear()
    restarter.start()
    try:
        again = run_round(trained.config, trained.client, retry=Retry(6, 1.0))
    finally:
        restarter.join()
    assert again.status in (RoundStatus.PROMOTED, RoundStatus.KEPT), again.error
    assert "trying again" in caplog.text  # it did start while Label Studio was down
    assert models.active_name() in (record.model_version, again.model_version)
