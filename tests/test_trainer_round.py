"""Harvesting annotations and a whole active-learning round against a real Label Studio."""

from __future__ import annotations

import datetime
import errno
import itertools
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
from click.testing import CliRunner
from pydantic import SecretStr
from werkzeug.serving import make_server

from geolabel.classes import LabelClass
from geolabel.cli import cli
from geolabel.config import TOKEN_ENV, Config, load_config
from geolabel.lsclient import LabelStudioClient
from geolabel.lsmodels import LabelledTask
from geolabel.stack import spawn, terminate
from georef.labelstudio import ImageSize, brush_result, polygon_result
from georef.registry import AnnotationEvent, TileRecord, TileRegistry
from ml_backend.app import create_app
from tests.conftest import (
    CLASSES,
    LAMBERT93_20CM,
    LabelStudioServer,
    chromium_path,
    config_toml,
    free_port,
    import_scene,
)
from trainer.agreement import load_agreement
from trainer.contender import ContenderResult
from trainer.dashboard import PLOTS, MapTile, collect
from trainer.errors import HarvestError, TrainerError
from trainer.harvest import LabelledTile, harvest
from trainer.loop import Retry, Start, run_round
from trainer.metrics import IGNORE, confusion, metrics_from_confusion
from trainer.rounds import RoundRecord, RoundStatus, RoundStore
from trainer.scheduler import check, round_if_due
from trainer.versions import ModelStore

CATALOGUE = [LabelClass(id=c.id, name=c.name, color=c.color) for c in CLASSES]
SIZE = ImageSize(256, 256)
PASSWORD = "dashboard-test-password"


def brush(mask: np.ndarray, label: str = "building") -> dict:
    return brush_result(mask, label, "label_brush", "image")


def polygon(points: list[tuple[float, float]], label: str = "water") -> dict:
    return polygon_result(np.asarray(points, dtype=float), SIZE, label, "label_polygon", "image")


def fake_tile(task_id: int) -> TileRecord:
    from georef.grid import Grid, PixelWindow
    from georef.registry import TileStatus

    grid = Grid(256, 256, LAMBERT93_20CM, "EPSG:2154")  # type: ignore[arg-type]
    return TileRecord(
        f"t{task_id}",
        1,
        0,
        0,
        PixelWindow(0, 0, 256, 256),
        grid,
        None,
        task_id,
        TileStatus.IMPORTED,
        "EPSG:2154",
    )


# harvest, without Label Studio ------------------------------------------------------------------


def test_brush_and_polygon_land_on_the_right_pixels_and_sparse_labelling_ignores_undrawn_pixels() -> None:
    building = np.zeros((256, 256), dtype=bool)
    building[10:20, 30:50] = True  # rows 10..19, columns 30..49
    # polygon over columns 100..109, rows 200..204 (pixel edges): centres inside are exactly those pixels
    water = polygon([(100, 200), (110, 200), (110, 205), (100, 205)])
    task = {"id": 1, "annotations": [{"id": 11, "completed_by": 5, "result": [brush(building), water]}]}
    found = harvest([LabelledTask.model_validate(task)], {1: fake_tile(1)}, CATALOGUE, labelling="sparse")
    (tile,) = found.tiles
    expected = np.full((256, 256), IGNORE, dtype=np.uint8)
    expected[10:20, 30:50] = 1
    expected[200:205, 100:110] = 2
    assert np.array_equal(tile.target, expected)  # a one-pixel shift or swapped axis fails here
    assert found.class_pixels(["background", "building", "water"]) == {
        "background": 0,
        "building": 200,
        "water": 50,
    }
    assert tile.annotators == frozenset({"5"})
    assert found.problems == []


def test_annotators_who_disagree_leave_the_pixel_unlabelled() -> None:
    """Sparse labelling: what one annotator left undrawn, another decides (exhaustive: test_trainer_parts)."""
    first = np.zeros((256, 256), dtype=bool)
    first[0:10, 0:10] = True
    second = np.zeros((256, 256), dtype=bool)
    second[5:15, 0:10] = True
    task = {
        "id": 2,
        "annotations": [
            {"id": 1, "completed_by": 1, "result": [brush(first)]},
            {"id": 2, "completed_by": 2, "result": [brush(second, "water")]},
        ],
    }
    (tile,) = harvest([LabelledTask.model_validate(task)], {2: fake_tile(2)}, CATALOGUE, "sparse").tiles
    assert (tile.target[0:5, 0:10] == 1).all()
    assert (tile.target[5:10, 0:10] == IGNORE).all()  # building for one, water for the other
    assert (tile.target[10:15, 0:10] == 2).all()
    assert tile.annotators == frozenset({"1", "2"})


def test_bad_annotations_are_reported_and_repaired_never_silently_dropped() -> None:
    ok = np.zeros((256, 256), dtype=bool)
    ok[40:44, 10:14] = True  # inside the bow-tie's left triangle
    bowtie = polygon([(0, 0), (100, 100), (100, 0), (0, 100)])  # self-intersecting
    flat = polygon([(0, 0), (50, 0), (100, 0)])  # zero area
    unknown = polygon([(0, 0), (10, 0), (10, 10)], label="forest")
    smart_click = {
        "type": "keypointlabels", "from_name": "sam_point", "to_name": "image", "original_width": 256,
        "original_height": 256, "value": {"x": 5, "y": 5, "width": 1, "keypointlabels": ["building"]},
    }  # fmt: skip
    tasks = [
        {"id": 1, "annotations": [{"id": 1, "result": [brush(ok), bowtie, flat, unknown, smart_click]}]},
        {"id": 2, "annotations": [{"id": 2, "result": []}]},
        {"id": 3, "annotations": [{"id": 3, "result": [brush(ok)], "was_cancelled": True}]},
        {"id": 99, "annotations": [{"id": 4, "result": [brush(ok)]}]},  # deleted from the registry
    ]
    found = harvest(
        [LabelledTask.model_validate(t) for t in tasks],
        {1: fake_tile(1), 2: fake_tile(2), 3: fake_tile(3)},
        CATALOGUE,
    )
    messages = [str(p) for p in found.problems]
    assert any("task 1, annotation 1: self-intersecting polygon repaired" in m for m in messages)
    assert any("zero area" in m for m in messages)
    assert any("forest is not in the class catalogue" in m for m in messages)
    assert not any("task 2" in m for m in messages)  # submitted empty: all background (exhaustive)
    assert any("task 99: no tile in the registry" in m for m in messages)
    assert not any("keypoint" in m for m in messages)  # SAM prompts are not labels, and not problems
    assert found.skipped_tasks == [3]
    tile, empty = found.tiles
    assert (empty.tile.task_id, int(empty.target.max())) == (2, 0)
    assert (tile.target[0:10, 0:10][np.triu_indices(10, 1)] == IGNORE).all()  # the unknown class's pixels
    assert abs(int((tile.target == 2).sum()) - 5000) <= 200  # the repaired bow-tie: two triangles of 2500 px
    assert (tile.target[40:44, 10:14] == 2).all()  # painted after the brush: the later region wins


# a round against Label Studio -------------------------------------------------------------------


@dataclass
class Project:
    config: Config
    client: LabelStudioClient
    project_id: int
    tiles: list[TileRecord]
    truth: np.ndarray  # class ids of the whole raster


def scene() -> tuple[np.ndarray, np.ndarray]:
    """A 512 x 768 RGB scene: bright roofs (building), a blue lake (water), dark noisy ground."""
    rng = np.random.default_rng(3)
    image = rng.normal(60, 8, (3, 512, 768))
    truth = np.zeros((512, 768), dtype=np.uint8)
    for row in range(20, 500, 64):
        for col in range(20, 760, 72):
            truth[row : row + 24, col : col + 30] = 1
    truth[300:480, 500:740] = 2
    image[:, truth == 1] += 150
    image[2, truth == 2] += 120
    image[0, truth == 2] -= 40
    return np.clip(image, 0, 255).astype(np.uint8), truth


@pytest.fixture(scope="module")
def project(label_studio: LabelStudioServer, tmp_path_factory: pytest.TempPathFactory) -> Project:
    image, truth = scene()
    trainer = {"epochs": 6, "batch_size": 4, "validation_share": 0.25, "block_tiles": 1, "batch": 2}
    raster = tmp_path_factory.mktemp("trainer") / "scene.tif"
    imported = import_scene(label_studio, raster, image, "trainer project", overlap=0, trainer=trainer)
    config, report, tiles, client = imported.config, imported.report, imported.tiles, label_studio.client()
    labelled = Project(config, client, report.project_id, tiles, truth)
    for tile in tiles[:4]:  # 4 of the 6 tiles labelled, with the truth
        answer = tile_truth(labelled, tile)
        regions = [brush(answer == 1)] + ([brush(answer == 2, "water")] if (answer == 2).any() else [])
        client.create_annotation(int(tile.task_id or 0), regions)
    return labelled


def tile_truth(project: Project, tile: TileRecord) -> np.ndarray:
    w = tile.window
    return project.truth[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width]


def test_a_round_trains_promotes_scores_and_records(project: Project) -> None:
    assert len(project.tiles) == 6
    labelled = project.tiles[:4]
    record = run_round(project.config, project.client, retry=Retry(2, 0.01))
    assert record.status == RoundStatus.PROMOTED, record.error
    store = ModelStore(project.config.models_dir)
    assert store.active_name() == record.model_version
    assert record.labelled_tiles == 4
    measured = load_agreement(project.config.registry_path, project.project_id)  # the round measured it
    assert measured.measured_at >= record.started
    assert measured.tiles == []  # one annotator per tile: nothing to compare
    expected_buildings = sum(int((tile_truth(project, t) == 1).sum()) for t in labelled)
    assert record.class_pixels["building"] == expected_buildings  # no annotation lost
    assert record.validation_tiles >= 1
    assert {
        "miou",
        "accuracy",
        "building_iou",
        "building_f1",
        "building_precision",
        "building_recall",
    } <= set(record.metrics)
    unlabelled = {int(t.task_id or 0) for t in project.tiles[4:]}
    for task_id in unlabelled:
        (prediction,) = [
            p for p in project.client.predictions(task_id) if p["model_version"] == record.model_version
        ]
        assert 0 <= prediction["score"] <= 1
    assert project.client.project(project.project_id)["model_version"] == record.model_version
    queue = project.client.queue(project.project_id)
    assert {q.task_id for q in queue} == unlabelled
    with RoundStore(project.config.registry_path) as rounds:
        frozen = rounds.queue(record.id)
    assert {e.task_id for e in frozen} == unlabelled  # batch of 2 = both unlabelled tiles
    assert all(0 <= e.uncertainty <= 1 and e.confidence == pytest.approx(1 - e.uncertainty) for e in frozen)


class Oracle:
    """A contender that answers each validation tile with its own target: it validates perfectly."""

    name = "oracle"

    def fit(
        self,
        train: Sequence[LabelledTile],
        validation: Sequence[LabelledTile],
        classes: Sequence[LabelClass],
        seed: int,
    ) -> ContenderResult:
        names = ["background", *(c.name for c in classes)]
        matrix = sum(confusion(t.target, t.target, len(names)) for t in validation)
        metrics = metrics_from_confusion(np.asarray(matrix)).flat(names)
        saved = lambda folder: (folder / "oracle.json").write_text(f'{{"train": {len(train)}}}')  # noqa: E731
        return ContenderResult(self.name, metrics, saved, f"{len(train)} training tiles")


class Broken:
    name = "broken"

    def fit(self, *_: object) -> ContenderResult:
        raise RuntimeError("out of memory")


def test_a_round_started_from_a_prior_records_its_origin_the_contenders_and_the_winner(
    project: Project,
) -> None:
    store = ModelStore(project.config.models_dir)
    prior = (
        store.active_name() or run_round(project.config, project.client, retry=Retry(2, 0.01)).model_version
    )
    start = Start(init_from=str(prior), contenders=[Broken(), Oracle()])
    record = run_round(project.config, project.client, retry=Retry(2, 0.01), start=start)
    assert record.status in (RoundStatus.PROMOTED, RoundStatus.KEPT), record.error
    assert str(record.origin).startswith(f"from version {prior}")
    assert store.manifest(str(record.model_version)).origin == record.origin
    assert record.winner == "oracle"
    assert record.contenders["oracle"]["miou"] == 1.0
    assert (
        record.contenders["oracle"]["detail"]
        == f"{record.labelled_tiles - record.validation_tiles} training tiles"
    )
    assert "broken not trained: RuntimeError: out of memory" in record.problems
    folder = project.config.models_dir / str(record.model_version)
    assert (folder / "winner.txt").read_text() == "oracle\n"
    assert (folder / "oracle.json").is_file()
    with RoundStore(project.config.registry_path) as rounds:
        assert rounds.get(record.id).winner == "oracle"  # as recorded, not only as returned


def test_label_studio_down_fails_the_round_and_keeps_the_active_version(
    project: Project, label_studio: LabelStudioServer
) -> None:
    store = ModelStore(project.config.models_dir)
    before = store.active_name()
    dead = LabelStudioClient(f"http://127.0.0.1:{free_port()}", label_studio.token)
    with pytest.raises(HarvestError, match="unreachable after 2 attempts"):
        run_round(project.config, dead, retry=Retry(2, 0.01))
    assert store.active_name() == before
    with (
        TileRegistry(project.config.registry_path) as registry,
        RoundStore(project.config.registry_path) as rounds,
    ):
        last = rounds.rounds(int(registry.project_id(project.config.project.name) or 0))[-1]
    assert last.status == RoundStatus.FAILED
    assert "unreachable" in (last.error or "")


def test_disk_full_during_the_checkpoint_write_keeps_the_previous_version(
    project: Project, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = ModelStore(project.config.models_dir)
    before, versions = store.active_name(), store.versions()

    def disk_full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr("torch.save", disk_full)  # trainer.versions imports torch when it writes
    with pytest.raises(TrainerError, match="No space left"):
        run_round(project.config, project.client, retry=Retry(1, 0.01))
    assert store.active_name() == before
    assert store.versions() == versions  # no half-written version appears
    assert not [p for p in Path(project.config.models_dir).iterdir() if p.name.endswith(".partial")]


# the scheduler ------------------------------------------------------------------------------------


def scheduler_config(project: Project, folder: Path, threshold: int, epochs: int = 2) -> Path:
    """The fixture project's settings as a geolabel.toml, checked every second at ``threshold``."""
    trainer = (
        f"[trainer]\nthreshold = {threshold}\ncheck_interval = 1\nepochs = {epochs}\nbatch_size = 4\n"
        "validation_share = 0.25\nblock_tiles = 1\nbatch = 2\n\n"
    )
    return config_toml(project.config, folder, trainer)


_annotation_ids = itertools.count(1_000_000)


def record_changes(project: Project, count: int) -> None:
    """What the ML backend's webhook records when annotators submit ``count`` distinct annotations."""
    task_id = int(project.tiles[0].task_id or 0)
    with TileRegistry(project.config.registry_path) as registry:
        registry.record_annotation_events(
            AnnotationEvent(project.project_id, task_id, next(_annotation_ids), "ANNOTATION_UPDATED")
            for _ in range(count)
        )


def rounds_of(project: Project) -> list[RoundRecord]:
    with RoundStore(project.config.registry_path) as rounds:
        return rounds.rounds(project.project_id)


def test_below_the_threshold_the_scheduled_job_does_not_train(project: Project, tmp_path: Path) -> None:
    path = scheduler_config(project, tmp_path, threshold=1000)
    before = len(rounds_of(project))
    record_changes(project, 2)
    found = check(load_config(path))
    assert found.changes >= 2
    assert not found.due
    assert "a round at 1000" in round_if_due(str(path))
    assert len(rounds_of(project)) == before


def test_the_scheduler_runs_one_round_when_enough_annotations_changed_and_only_one_scheduler_runs(
    project: Project, label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    path = scheduler_config(project, tmp_path, threshold=3)
    before = len(rounds_of(project))
    record_changes(project, 3)
    time.sleep(check(load_config(path)).retry_in)  # earlier tests' failed rounds: a back-off of seconds
    assert check(load_config(path)).due
    env = {**os.environ, TOKEN_ENV: label_studio.token}
    command = [sys.executable, "-m", "geolabel.cli", "--config", str(path), "train", "--schedule"]
    log = tmp_path / "trainer.log"
    scheduler = spawn(command, env, log)
    try:
        deadline = time.monotonic() + 600
        while time.monotonic() < deadline and not [
            r for r in rounds_of(project)[before:] if r.status != RoundStatus.RUNNING
        ]:
            assert scheduler.poll() is None, log.read_text()
            time.sleep(1)
        second = subprocess.run(command, env=env, capture_output=True, text=True, timeout=120)
        assert second.returncode == 7, second.stdout + second.stderr
        assert "already runs" in second.stdout + second.stderr
        time.sleep(3)  # three more checks: nothing new to train on, so no second round
    finally:
        terminate(scheduler)
    new = rounds_of(project)[before:]
    assert [r.trigger for r in new] == ["scheduled"], log.read_text()
    assert new[0].status in (RoundStatus.PROMOTED, RoundStatus.KEPT), new[0].error
    assert not check(load_config(path)).due
    assert (project.config.trainer_dir / "scheduler.sqlite").is_file()
    assert label_studio.token not in log.read_text()


# the coordinators' dashboard ----------------------------------------------------------------------


def test_the_dashboard_data_shows_every_tile_state_and_the_next_batch(project: Project) -> None:
    data = collect(project.config)
    assert [r.id for r in data.rounds] == [r.id for r in rounds_of(project)]
    assert data.active is not None
    by_state: dict[str, list[MapTile]] = {}
    for tile in data.tiles:
        by_state.setdefault(tile.state, []).append(tile)
    assert {t.tile_id for t in by_state["labelled"]} == {t.id for t in project.tiles[:4]}
    unlabelled = by_state["unlabelled"]
    assert {t.tile_id for t in unlabelled} == {t.id for t in project.tiles[4:]}
    assert all(t.uncertainty is not None and 0 <= t.uncertainty <= 1 for t in unlabelled)
    assert {t.tile_id for t in data.tiles if t.next_batch} == {t.id for t in project.tiles[4:]}
    first = next(t for t in data.tiles if t.tile_id == project.tiles[0].id)
    assert np.allclose(first.corners[0], project.tiles[0].grid.transform @ (0, 0))  # top-left corner
    today = datetime.datetime.now(datetime.UTC).date().isoformat()
    throughput = [(d.annotator, d.day, d.tiles) for d in data.throughput]
    assert throughput == [("admin@geolabel.test", today, 4)]  # the fixture labelled 4 tiles today


@pytest.fixture
def dashboard_url(project: Project) -> Iterator[tuple[str, str]]:
    """The ML backend app (no SAM) serving the fixture project on a free port, and its password."""
    config = project.config.model_copy(
        update={"ml_backend": project.config.ml_backend.model_copy(update={"password": SecretStr(PASSWORD)})}
    )
    url = f"http://127.0.0.1:{free_port()}"
    server = make_server("127.0.0.1", int(url.rsplit(":", 1)[1]), create_app(config), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield url, config.ml_backend_auth().username
    finally:
        server.shutdown()


def test_the_dashboard_needs_the_backend_login(dashboard_url: tuple[str, str]) -> None:
    url, user = dashboard_url
    assert httpx.get(f"{url}/dashboard").status_code == 401
    assert httpx.get(f"{url}/dashboard/learning-curve.png").status_code == 401
    assert httpx.get(f"{url}/dashboard/nothing.png", auth=(user, PASSWORD)).status_code == 404
    plot = httpx.get(f"{url}/dashboard/learning-curve.png", auth=(user, PASSWORD))
    assert plot.headers["content-type"] == "image/png"
    assert plot.content.startswith(b"\x89PNG")


def test_the_dashboard_renders_in_headless_chromium(
    project: Project, dashboard_url: tuple[str, str], tmp_path: Path
) -> None:
    from playwright import sync_api as playwright_api

    chromium = chromium_path()
    url, user = dashboard_url
    finished = [r for r in rounds_of(project) if r.status != RoundStatus.RUNNING]
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_context(
                http_credentials={"username": user, "password": PASSWORD},
                viewport={"width": 1400, "height": 900},
            ).new_page()
            response = page.goto(f"{url}/dashboard")
            assert response is not None
            assert response.status == 200
            page.wait_for_load_state("networkidle")
            assert page.locator("#rounds tbody tr").count() == len(finished)
            assert page.locator("#rounds tbody tr.promoted").count() >= 1
            status = page.locator("#status").inner_text()
            assert f"Active model version: {ModelStore(project.config.models_dir).active_name()}" in status
            assert "4 labelled" in status
            sizes = page.eval_on_selector_all(
                ".plots img",
                "images => images.map(i => [i.alt, i.complete, i.naturalWidth, i.naturalHeight])",
            )
            page.wait_for_function("window.geolabelDashboard && window.geolabelDashboard.refreshes >= 1")
            assert page.locator("path.leaflet-interactive").count() == len(project.tiles)  # every tile mapped
            assert "admin@geolabel.test" in page.locator("#throughput").inner_text()
            assert sorted(s[0] for s in sizes) == sorted(PLOTS)
            assert all(complete and width > 300 and height > 200 for _, complete, width, height in sizes), (
                sizes
            )
            page.locator(f'#raster-list tr[data-raster="{project.tiles[0].raster_id}"]').click()
            page.wait_for_selector("img.leaflet-tile-loaded", state="attached")
            page.wait_for_load_state("networkidle")
            page.screenshot(path=str(tmp_path / "dashboard.png"), full_page=True)
        finally:
            browser.close()
    assert (tmp_path / "dashboard.png").stat().st_size > 10_000


def test_geolabel_status_prints_the_rounds_and_the_essentials(project: Project, tmp_path: Path) -> None:
    path = scheduler_config(project, tmp_path, threshold=20)
    result = CliRunner().invoke(cli, ["--config", str(path), "status"], env={"COLUMNS": "200"})
    assert result.exit_code == 0, result.output
    active = ModelStore(project.config.models_dir).active_name()
    assert f"Active model version: {active}" in result.output
    assert "Validation IoU of the active version: building" in result.output
    assert "4 labelled" in result.output
    assert "(a round starts at 20)" in result.output
    for record in rounds_of(project):
        assert str(record.status) in result.output


@pytest.mark.parametrize("flags", [[], ["--now", "--schedule"]])
def test_geolabel_train_needs_exactly_one_of_now_and_schedule(flags: list[str], tmp_path: Path) -> None:
    result = CliRunner().invoke(cli, ["--config", str(tmp_path / "geolabel.toml"), "train", *flags])
    assert result.exit_code == 2
    assert "give --now (one round now) or --schedule" in result.output


def test_a_round_killed_midway_leaves_the_active_version_serving_and_the_next_round_cleans_up(
    project: Project, label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    path = scheduler_config(project, tmp_path, threshold=1, epochs=500)  # the kill lands in training
    store = ModelStore(project.config.models_dir)
    before, versions = store.active_name(), store.versions()
    (project.config.models_dir / ".v-killed.partial").mkdir()  # what a kill during a version write leaves
    started = len(rounds_of(project))
    env = {**os.environ, TOKEN_ENV: label_studio.token}
    log = tmp_path / "train.log"
    command = [sys.executable, "-m", "geolabel.cli", "--config", str(path), "train", "--now"]
    trainer = spawn(command, env, log)
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and not any(r.labelled_tiles for r in rounds_of(project)[started:]):
            assert trainer.poll() is None, log.read_text()
            time.sleep(0.5)
    finally:
        os.killpg(trainer.pid, signal.SIGKILL)
        trainer.wait()
    (killed,) = rounds_of(project)[started:]
    assert killed.status == RoundStatus.RUNNING  # harvested, then killed while training
    assert store.active_name() == before
    assert store.versions() == versions
    record = run_round(project.config, project.client, retry=Retry(1, 0.01))
    assert record.status in (RoundStatus.PROMOTED, RoundStatus.KEPT), record.error
    killed = next(r for r in rounds_of(project) if r.id == killed.id)
    assert killed.status == RoundStatus.FAILED
    assert "interrupted" in (killed.error or "")
    assert not [p for p in project.config.models_dir.iterdir() if p.name.endswith(".partial")]


def test_a_round_with_every_tile_labelled_promotes_without_touching_label_studios_model_version(
    label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    """Nothing left to predict: Label Studio would refuse a model version without predictions (HTTP 400)."""
    from trainer.loop import NOTHING_PUSHED

    image, truth = scene()
    trainer = {"epochs": 1, "batch_size": 2, "validation_share": 0.5, "block_tiles": 1, "crop": 64}
    imported = import_scene(label_studio, tmp_path / "small.tif", image[:, :256, :512], "all labelled",
                            overlap=0, trainer=trainer)  # fmt: skip
    client = label_studio.client()
    done = Project(imported.config, client, imported.report.project_id, imported.tiles, truth[:256, :512])
    assert len(done.tiles) == 2
    for tile in done.tiles:
        client.create_annotation(int(tile.task_id or 0), [brush(tile_truth(done, tile) == 1)])
    before = client.project(done.project_id).get("model_version")
    record = run_round(done.config, client, retry=Retry(1, 0.01))
    assert record.status == RoundStatus.PROMOTED, record.error
    assert NOTHING_PUSHED in record.problems
    assert ModelStore(done.config.models_dir).active_name() == record.model_version
    assert client.project(done.project_id).get("model_version") == before


def test_failed_rounds_back_off_before_the_scheduler_tries_again() -> None:
    """A round failing for a lasting reason must not retrain at every check: waits double, capped."""
    from trainer.scheduler import MAX_RETRY_WAIT_S, retry_wait

    def rounds(*statuses: RoundStatus, ended: str = "2026-11-30T10:00:00+00:00") -> list[RoundRecord]:
        return [RoundRecord(i, 1, s, "scheduled", ended, ended) for i, s in enumerate(statuses, 1)]

    at = datetime.datetime(2026, 11, 30, 10, 0, 30, tzinfo=datetime.UTC)  # 30 s after the last round
    assert retry_wait([], 60, at) == 0
    assert retry_wait(rounds(RoundStatus.FAILED, RoundStatus.PROMOTED), 60, at) == 0
    assert retry_wait(rounds(RoundStatus.FAILED), 60, at) == 30  # 60 s after one failure
    assert retry_wait(rounds(RoundStatus.PROMOTED, RoundStatus.FAILED, RoundStatus.FAILED), 60, at) == 90
    assert retry_wait(rounds(*[RoundStatus.FAILED] * 20), 60, at) == MAX_RETRY_WAIT_S - 30
    assert retry_wait(rounds(RoundStatus.FAILED), 10, at) == 0  # its wait is over
