"""Tile-parallel work on Dask: a 2-worker LocalCluster gives what one process gives, survives a killed
worker, and `geolabel predict` resumes; a round never scores more than its candidate pool."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from click.testing import CliRunner

from exporters.project import ExportOptions, export_project
from geolabel.cli import cli
from geolabel.compute import ComputeError, DaskEngine, InProcess, open_engine
from geolabel.config import Config, parse_config
from georef.registry import RasterSpec, TileRecord, TileRegistry, TileStatus
from georef.tiling import TilingPlan, plan_tiles
from importers.raster import content_hash, inspect_raster
from tests.conftest import CLASSES, GeoTiffFactory, LabelStudioServer, config_toml, free_port, import_scene
from trainer.batch import ModelJob, TileOutcome, TileWork, map_tiles
from trainer.model import build_model
from trainer.predict import predict_project
from trainer.predictions import PredictionStore
from trainer.versions import InputSpec, ModelManifest, ModelStore

VERSION = "v-dask"


@dataclass(frozen=True)
class Territory:
    """A project of 49 tiles on a real GeoTIFF with a stored model version, and no Label Studio."""

    config: Config
    work: list[TileWork]


def territory_config(data_dir: Path, **compute: object) -> Config:
    return parse_config(
        {
            "project": {"name": "territory"},
            "classes": [{"id": c.id, "name": c.name, "color": c.color} for c in CLASSES[:2]],
            "paths": {"data_dir": str(data_dir)},
            "compute": {"chunk": 4, **compute},
        },
        base_dir=data_dir,
    )


@pytest.fixture(scope="module")
def territory(tmp_path_factory: pytest.TempPathFactory) -> Territory:
    folder = tmp_path_factory.mktemp("territory")
    rng = np.random.default_rng(7)
    image = rng.integers(0, 255, (3, 400, 400), dtype=np.uint8)
    raster = folder / "ortho.tif"
    transform = rasterio.transform.from_origin(652000.0, 6862000.0, 0.2, 0.2)
    with rasterio.open(raster, "w", driver="GTiff", width=400, height=400, count=3, dtype="uint8",
                       crs="EPSG:2154", transform=transform) as dst:  # fmt: skip
        dst.write(image)
    config = territory_config(folder / "data")
    config.data_dir.mkdir(parents=True)
    info = inspect_raster(raster)
    with TileRegistry(config.registry_path) as registry:
        registry.record_project(1, "territory")
        spec = RasterSpec(
            path=str(info.path), name=info.path.name, content_hash=content_hash(info.path), grid=info.grid,
            band_count=3, dtype="uint8", nodata=None, display_bands=(1, 2, 3), stretch=((0.0, 255.0),) * 3,
            tile_size=64, overlap=8, project_id=1, input_bands=(1, 2, 3), tiling=TilingPlan.EXACT,
        )  # fmt: skip
        record = registry.add_raster(spec, plan_tiles(400, 400, 64, 8, TilingPlan.EXACT))
        registry.mark_rendered((t.id, f"tiles/{t.id}.png") for t in registry.tiles(record.id))
        tiles = registry.tiles(record.id)
    manifest = ModelManifest(
        version=VERSION, created="", classes=config.classes,
        input=InputSpec(bands=[1, 2, 3], mean=[127.0] * 3, std=[60.0] * 3),
    )  # fmt: skip
    torch.manual_seed(5)
    models = ModelStore(config.models_dir)
    models.save(manifest, build_model(manifest).state_dict())
    models.activate(VERSION)
    return Territory(config, [TileWork(t, record) for t in tiles])


def copy_without_predictions(territory: Territory, folder: Path) -> Path:
    """The territory's data folder (registry, model version) copied, without stored predictions."""
    shutil.copytree(territory.config.data_dir, folder, ignore=shutil.ignore_patterns("predictions"))
    return folder


def job_into(territory: Territory, predictions: Path) -> ModelJob:
    return ModelJob(territory.config.models_dir, VERSION, predictions, "entropy", "cpu")


def stored(folder: Path, tiles: list[TileWork]) -> list[np.ndarray]:
    store = PredictionStore(folder, VERSION)
    return [store.load(w.tile.id).proba for w in tiles]


def assert_same(one: list[TileOutcome], other: list[TileOutcome]) -> None:
    assert [o.tile_id for o in one] == [o.tile_id for o in other]
    assert [o.uncertainty for o in one] == [o.uncertainty for o in other]
    assert [o.foreground for o in one] == [o.foreground for o in other]
    np.testing.assert_allclose(np.stack([o.features for o in one]), np.stack([o.features for o in other]),
                               atol=1e-6)  # fmt: skip


@pytest.fixture(scope="module")
def single_process(territory: Territory, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list]:
    """The single-process path: every chunk in this process, one after another."""
    folder = tmp_path_factory.mktemp("single")
    outcomes = list(map_tiles(InProcess(), job_into(territory, folder), territory.work, 4))
    return folder, outcomes


@pytest.fixture(scope="module")
def two_workers(territory: Territory) -> Iterator[DaskEngine]:
    section = territory_config(territory.config.data_dir, workers=2, in_process_below=0,
                               dashboard_address="").compute  # fmt: skip
    announced: list[str] = []
    with open_engine(section, len(territory.work), announce=announced.append) as engine:
        assert isinstance(engine, DaskEngine)
        assert len(engine.client.scheduler_info()["workers"]) == 2
        assert announced == ["Dask LocalCluster (2 workers x 1 threads); Dask dashboard: none"]
        yield engine


def test_two_workers_store_the_same_bytes_and_scores_as_one_process(
    territory: Territory, single_process: tuple[Path, list], two_workers: DaskEngine, tmp_path: Path
) -> None:
    folder, expected = single_process
    outcomes = list(map_tiles(two_workers, job_into(territory, tmp_path), territory.work, 4))
    assert_same(outcomes, expected)
    for mine, theirs in zip(stored(tmp_path, territory.work), stored(folder, territory.work), strict=True):
        assert np.array_equal(mine, theirs)
    ran_on = two_workers.client.run(os.getpid)
    assert len(set(ran_on.values())) == 2
    assert os.getpid() not in ran_on.values()  # the work ran in other processes


def test_a_worker_killed_mid_job_does_not_change_the_result(
    territory: Territory, single_process: tuple[Path, list], two_workers: DaskEngine, tmp_path: Path
) -> None:
    _, expected = single_process
    victims = list(two_workers.client.run(os.getpid).values())
    outcomes: list[TileOutcome] = []
    for outcome in map_tiles(two_workers, job_into(territory, tmp_path), territory.work, 4):
        if not outcomes:  # the job has started: 12 chunks to go
            os.kill(victims[0], signal.SIGKILL)
        outcomes.append(outcome)
    assert_same(outcomes, expected)
    assert victims[0] not in two_workers.client.run(os.getpid).values()  # it really died (and came back)


def test_the_export_cog_is_pixel_identical_on_two_workers(
    territory: Territory, two_workers: DaskEngine, tmp_path: Path
) -> None:
    """The whole export (missing predictions, mosaic blocks) in one process and on the 2-worker cluster,
    reached at its scheduler's address as an existing cluster is."""
    results = {}
    cluster = {"scheduler": two_workers.client.scheduler.address, "in_process_below": 0}
    for name, compute in (("single", {"scheduler": "none"}), ("cluster", cluster)):
        config = territory_config(copy_without_predictions(territory, tmp_path / f"{name}-data"), **compute)
        out = tmp_path / name
        options = ExportOptions(out, what=("predictions",), explicit=True)
        report = export_project(config, None, options)  # type: ignore[arg-type]  # no Label Studio part
        assert report.counts["predicted_tiles"] == len(territory.work)
        results[name] = out
    for file in ("predictions_proba.tif", "predictions_argmax.tif"):
        with (
            rasterio.open(results["single"] / file) as one,
            rasterio.open(results["cluster"] / file) as other,
        ):
            assert one.profile == other.profile
            assert np.array_equal(one.read(), other.read())
            assert np.array_equal(one.dataset_mask(), other.dataset_mask())
            assert one.overviews(1) == other.overviews(1)
            assert np.array_equal(one.read(1, out_shape=(50, 50)), other.read(1, out_shape=(50, 50)))


def test_an_existing_cluster_started_with_the_dask_command_gives_the_same_result(
    territory: Territory, single_process: tuple[Path, list], tmp_path: Path
) -> None:
    """`dask scheduler` + `dask worker` processes reached at their tcp:// address (the multi-machine path)."""
    port = free_port()
    dask = Path(sys.executable).with_name("dask")
    common = {"cwd": tmp_path, "stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    scheduler = subprocess.Popen([dask, "scheduler", "--host", "127.0.0.1", "--port", str(port),
                                  "--no-dashboard"], **common)  # fmt: skip
    worker_args = ["--nworkers", "2", "--nthreads", "1", "--no-dashboard", "--host", "127.0.0.1"]
    workers = subprocess.Popen([dask, "worker", f"tcp://127.0.0.1:{port}", *worker_args], **common)
    try:
        section = territory_config(territory.config.data_dir, scheduler=f"tcp://127.0.0.1:{port}",
                                   in_process_below=0).compute  # fmt: skip
        with open_engine(section, len(territory.work)) as engine:
            assert isinstance(engine, DaskEngine)
            deadline = time.monotonic() + 60
            while len(engine.client.scheduler_info()["workers"]) < 2 and time.monotonic() < deadline:
                time.sleep(0.2)
            assert len(engine.client.scheduler_info()["workers"]) == 2
            outcomes = list(map_tiles(engine, job_into(territory, tmp_path / "p"), territory.work, 4))
        assert_same(outcomes, single_process[1])
    finally:
        for process in (workers, scheduler):
            process.terminate()
            process.wait(timeout=30)


def test_an_unreachable_scheduler_is_a_clear_error(
    territory: Territory, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("geolabel.compute.CONNECT_TIMEOUT", 2)
    address = f"tcp://127.0.0.1:{free_port()}"
    section = territory_config(territory.config.data_dir, scheduler=address, in_process_below=0).compute
    expected = rf"cannot reach the Dask scheduler at {address}.*dask scheduler"
    with pytest.raises(ComputeError, match=expected), open_engine(section, 10):
        pass


class StopAfter:
    """A progress receiver that interrupts the job (as Ctrl-C would) after ``count`` tiles."""

    def __init__(self, count: int) -> None:
        self.count = count
        self.done = 0

    def start(self, description: str, total: int) -> None:
        self.total = total

    def advance(self, units: int) -> None:
        self.done += units
        if self.done >= self.count:
            raise KeyboardInterrupt


def test_an_interrupted_predict_resumes_without_recomputing_stored_tiles(
    territory: Territory, tmp_path: Path
) -> None:
    config = territory_config(copy_without_predictions(territory, tmp_path / "data"), scheduler="none")
    with pytest.raises(KeyboardInterrupt):
        predict_project(config, progress=StopAfter(12))
    store = PredictionStore(config.predictions_dir, VERSION)
    done = {
        w.tile.id: store.path(w.tile.id).stat().st_mtime_ns for w in territory.work if store.has(w.tile.id)
    }
    assert len(done) == 12  # three chunks of 4, each tile stored whole
    toml = config_toml(
        config, tmp_path, '[compute]\nscheduler = "none"\nchunk = 4\nworkers = 2\nin_process_below = 0\n\n'
    )
    resume = ["--config", str(toml), "predict", "--scheduler", "local"]  # the rest on a 2-worker cluster
    result = CliRunner().invoke(cli, resume, catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert re.search(r"Dask LocalCluster \(2 workers x 1 threads\); Dask dashboard: http://127\.0\.0\.1:\d+/status",
                     result.output)  # fmt: skip
    assert f"{len(territory.work) - 12} tiles predicted" in result.output
    assert f"12 already stored, of {len(territory.work)}" in result.output
    assert {t: store.path(t).stat().st_mtime_ns for t in done} == done  # not recomputed
    assert store.missing(w.tile.id for w in territory.work) == []
    again = CliRunner().invoke(cli, ["--config", str(toml), "predict"], catch_exceptions=False)
    assert f"0 tiles predicted, {len(territory.work)} already stored" in again.output


def test_predict_names_a_raster_outside_the_project_and_a_missing_version(
    territory: Territory, make_geotiff: GeoTiffFactory, tmp_path: Path
) -> None:
    toml = config_toml(territory.config, tmp_path, '[compute]\nscheduler = "none"\n\n')
    other = make_geotiff("elsewhere.tif")
    result = CliRunner().invoke(cli, ["--config", str(toml), "predict", "--raster", str(other)])
    assert result.exit_code == 7
    assert "elsewhere.tif is not a raster of project 'territory'" in result.output
    result = CliRunner().invoke(cli, ["--config", str(toml), "predict", "--version", "v-nope"])
    assert result.exit_code == 7
    assert "no model version 'v-nope'" in result.output
    result = CliRunner().invoke(cli, ["--config", str(toml), "predict", "--scheduler", "http://x:1"])
    assert result.exit_code == 2
    assert "--scheduler 'http://x:1'" in result.output


def test_small_jobs_stay_in_this_process_and_none_never_starts_a_cluster(territory: Territory) -> None:
    section = territory.config.compute
    with open_engine(section, section.in_process_below - 1) as engine:
        assert isinstance(engine, InProcess)
    none = territory_config(territory.config.data_dir, scheduler="none", in_process_below=0).compute
    with open_engine(none, 10**6) as engine:
        assert isinstance(engine, InProcess)


# the round's candidate pool, for real -----------------------------------------------------------


@pytest.mark.labelstudio
def test_a_round_reads_and_pushes_only_its_candidate_pool(
    label_studio: LabelStudioServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trainer.batch
    from trainer.loop import Retry, run_round

    rng = np.random.default_rng(11)
    image = rng.integers(0, 255, (3, 768, 768), dtype=np.uint8)
    scene = import_scene(label_studio, tmp_path / "pool.tif", image, "pool project", overlap=0,
                         trainer={"epochs": 1, "pool": 3, "batch": 2},
                         compute={"scheduler": "none"})  # fmt: skip
    client = label_studio.client()
    tiles: list[TileRecord] = scene.tiles
    assert len(tiles) == 9
    for tile in tiles[:2]:
        mask = np.zeros((256, 256), dtype=bool)
        mask[:50, :50] = True
        from georef.labelstudio import brush_result

        client.create_annotation(
            int(tile.task_id or 0), [brush_result(mask, "building", "label_brush", "image")]
        )
    read: list[str] = []
    real = trainer.batch.read_input
    monkeypatch.setattr(trainer.batch, "read_input", lambda r, t, m: read.append(t.id) or real(r, t, m))
    record = run_round(scene.config, client, retry=Retry(2, 0.01))
    assert record.status == "promoted", record.error
    assert len(read) == 3  # 7 unlabelled tiles, a pool of 3
    pushed = [t for t in tiles if any(p["model_version"] == record.model_version
                                      for p in client.predictions(int(t.task_id or 0)))]  # fmt: skip
    assert sorted(t.id for t in pushed) == sorted(read)
    assert not {t.id for t in tiles[:2]} & set(read)
    store = PredictionStore(scene.config.predictions_dir, record.model_version or "")
    assert sorted(store.missing(t.id for t in tiles)) == sorted(t.id for t in tiles if t.id not in read)
    assert {t.id for t in tiles if t.status == TileStatus.IMPORTED} == {t.id for t in tiles}
