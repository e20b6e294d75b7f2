"""``geolabel forget``: a raster's tiles and tasks removed, annotated tasks only when asked, resumable."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from geolabel.config import load_config
from geolabel.lsclient import LabelStudioClient
from georef.registry import RasterRecord, TileRegistry
from tests.conftest import GeoTiffFactory, LabelStudioServer
from tests.test_cli import run, write_config
from trainer.predictions import PredictionStore

pytestmark = pytest.mark.labelstudio


def raster_tasks(client: LabelStudioClient, record: RasterRecord) -> set[int]:
    tasks = client.tasks(record.project_id)
    return {t.task_id for t in tasks if t.tile_id and t.tile_id.startswith(record.uid)}


def raster_state(client: LabelStudioClient, registry: Path, data_dir: Path, record: RasterRecord) -> tuple:
    """A raster's registry rows, display images and Label Studio tasks."""
    with TileRegistry(registry) as reg:
        rows = [(t.id, t.task_id, t.status) for t in reg.tiles(record.id)]
    images = sorted(p.name for p in (data_dir / "tiles" / record.uid).glob("*.png"))
    return rows, images, sorted(raster_tasks(client, record))


def test_forget_refuses_annotated_tasks_removes_with_the_flag_and_leaves_the_rest(
    make_geotiff: GeoTiffFactory, tmp_path: Path, label_studio: LabelStudioServer, ls_data_dir: Path
) -> None:
    config_path = write_config(tmp_path, label_studio.url, ls_data_dir)
    env = {"GEOLABEL_LABEL_STUDIO_TOKEN": label_studio.token}
    client = label_studio.client()
    base = ("--config", str(config_path))
    rasters = {name: make_geotiff(f"{name}.tif", width=400, height=300) for name in ("a", "b", "c")}
    assert run(*base, "import", str(rasters["a"]), str(rasters["b"]), env=env)[0] == 0
    assert run(*base, "import", str(rasters["c"]), "--project", "forget other project", env=env)[0] == 0
    config = load_config(config_path)
    with TileRegistry(config.registry_path) as registry:
        records = {r.name[0]: r for r in registry.rasters()}
    a, c = records["a"], records["c"]
    tasks_of = {key: raster_tasks(client, r) for key, r in records.items()}
    annotated = min(tasks_of["a"])
    client.create_annotation(annotated, [])
    predictions = PredictionStore(config.predictions_dir, "v-1")
    with TileRegistry(config.registry_path) as registry:
        tiles = {key: registry.tiles(r.id) for key, r in records.items()}
    for tile in tiles["a"] + tiles["b"]:
        shape = (tile.grid.height, tile.grid.width)
        predictions.save(tile.id, np.full((3, *shape), 1 / 3, np.float32), np.ones(shape, bool))
    before = {k: raster_state(client, config.registry_path, ls_data_dir, r) for k, r in records.items()}

    code, output = run(*base, "forget", str(rasters["a"]), env=env)
    assert code == 3, output
    assert "a.tif has 1 annotated task" in output
    assert "--with-annotations" in output
    assert "Nothing was removed" in output
    assert raster_state(client, config.registry_path, ls_data_dir, a) == before["a"]

    code, output = run(*base, "forget", str(rasters["a"]), "--with-annotations", env=env)
    assert code == 0, output
    counts = f"{len(tiles['a'])} tiles, {len(tasks_of['a'])} Label Studio tasks (1 with annotations)"
    assert f"forgot {a.path}: {counts}" in output
    with TileRegistry(config.registry_path) as registry:
        assert registry.raster_by_path(a.path) is None
        assert not [t for t in registry.tiles() if t.raster_id == a.id]
    assert not (ls_data_dir / "tiles" / a.uid).exists()
    assert not tasks_of["a"] & {t.task_id for t in client.tasks(a.project_id)}
    assert predictions.missing(t.id for t in tiles["a"]) == [t.id for t in tiles["a"]]
    assert predictions.missing(t.id for t in tiles["b"]) == []
    for key in ("b", "c"):  # the other raster of the project and the other project are untouched
        assert raster_state(client, config.registry_path, ls_data_dir, records[key]) == before[key]

    code, output = run(*base, "forget", str(rasters["a"]), env=env)
    assert code == 0, output
    assert "not in the registry" in output
    code, output = run(*base, "forget", str(rasters["c"]), "--project", config.project.name, env=env)
    assert code == 0, output
    assert "not in the registry" in output  # c belongs to the other project: left alone
    with TileRegistry(config.registry_path) as registry:
        assert registry.raster_by_path(c.path) is not None


def test_an_interrupted_forget_completes_when_run_again(
    make_geotiff: GeoTiffFactory, tmp_path: Path, label_studio: LabelStudioServer, ls_data_dir: Path
) -> None:
    config_path = write_config(tmp_path, label_studio.url, ls_data_dir)
    env = {"GEOLABEL_LABEL_STUDIO_TOKEN": label_studio.token}
    client = label_studio.client()
    raster = make_geotiff("gone.tif", width=600, height=300)
    assert run("--config", str(config_path), "import", str(raster), env=env)[0] == 0
    config = load_config(config_path)
    with TileRegistry(config.registry_path) as registry:
        (record,) = registry.rasters()
        tiles = registry.tiles(record.id)
    task_ids = sorted(t.task_id for t in tiles if t.task_id is not None)
    # what a forget killed half-way leaves: some tasks deleted, the display tiles gone, the rows still there
    client.delete_tasks(record.project_id, task_ids[: len(task_ids) // 2])
    for image in (ls_data_dir / "tiles" / record.uid).glob("*.png"):
        image.unlink()
    code, output = run("--config", str(config_path), "forget", "gone.tif", env=env)
    assert code == 0, output
    remaining = len(task_ids) - len(task_ids) // 2
    assert f"{len(tiles)} tiles, {remaining} Label Studio tasks (0 with annotations)" in output
    assert client.tasks(record.project_id) == []
    with TileRegistry(config.registry_path) as registry:
        assert registry.rasters() == []
        assert registry.tiles() == []
    assert not (ls_data_dir / "tiles" / record.uid).exists()
