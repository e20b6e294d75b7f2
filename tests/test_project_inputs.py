"""A project's fixed model input, exact-overlap tiling of new imports, rasters that cannot feed a model.

Real GeoTIFFs, a real registry and the test run's real Label Studio.
"""

from __future__ import annotations

import dataclasses
import itertools
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import torch
from affine import Affine
from rasterio.enums import ColorInterp
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from exporters.project import ExportOptions, export_project
from geolabel.lsclient import LabelStudioClient
from georef.labelstudio import brush_result
from georef.registry import RasterRecord, RasterSpec, TileRegistry, TileStatus
from georef.tiling import TilingPlan, plan_tiles
from importers.errors import InputMismatchError
from importers.labelconfig import label_config
from importers.pipeline import ImportOptions, import_raster, prepare_project
from importers.raster import content_hash, inspect_raster
from ml_backend.app import create_app, settings_from_config
from ml_backend.service import Backend
from tests.conftest import CLASSES, LAMBERT93_20CM, GeoTiffFactory, LabelStudioServer, import_scene, synthetic
from tests.test_trainer_parts import bright_square_samples, tiny_manifest
from trainer.batch import ModelJob, TileWork, run_chunk
from trainer.errors import ModelInputError
from trainer.fit import Sample, TrainSettings, evaluate, train
from trainer.inference import feeding_tiles, input_bands, read_input
from trainer.loop import Retry, run_round
from trainer.model import build_model
from trainer.predictions import PredictionStore
from trainer.rounds import RoundStatus
from trainer.versions import InputSpec, ModelManifest, ModelStore


def state(registry: TileRegistry, client: LabelStudioClient, project_id: int, tiles_dir: Path) -> tuple:
    """Everything an import could change: registry rows, the tiles folder, the project's tasks."""
    with sqlite3.connect(registry.path) as conn:
        rows = {
            table: conn.execute(f"SELECT * FROM {table} ORDER BY 1").fetchall()
            for table in ("projects", "project_inputs", "rasters", "tiles")
        }
    files = sorted(str(p.relative_to(tiles_dir)) for p in tiles_dir.rglob("*"))
    tasks = sorted((t.task_id, t.tile_id) for t in client.tasks(project_id))
    return rows, files, tasks


def manifest_reading(bands: list[int], version: str = "v-input") -> ModelManifest:
    count = len(bands)
    return ModelManifest(
        version=version,
        created="2026-11-30T00:00:00+00:00",
        classes=list(CLASSES),
        input=InputSpec(bands=bands, mean=[120.0] * count, std=[40.0] * count),
    )


def legacy_raster(registry: TileRegistry, path: Path, project_id: int) -> RasterRecord:
    """Record ``path`` as an import from before projects fixed their input (no band mapping, old plan)."""
    info = inspect_raster(path)
    spec = RasterSpec(
        path=str(info.path), name=info.path.name, content_hash=content_hash(info.path), grid=info.grid,
        band_count=info.band_count, dtype=info.dtype, nodata=info.nodata, display_bands=(1,),
        stretch=((0.0, 255.0),), tile_size=256, overlap=32, project_id=project_id, input_bands=None,
        tiling=TilingPlan.SHIFTED,
    )  # fmt: skip
    grid = info.grid
    return registry.add_raster(spec, plan_tiles(grid.width, grid.height, 256, 32, TilingPlan.SHIFTED))


# the project's input at import ------------------------------------------------------------------


@pytest.mark.labelstudio
def test_a_1_band_raster_into_a_3_band_project_is_refused_and_changes_nothing(
    make_geotiff: GeoTiffFactory, options: ImportOptions, registry: TileRegistry, client: LabelStudioClient
) -> None:
    first = import_raster(make_geotiff("rgb.tif", count=3), options, registry, client)
    before = state(registry, client, first.project_id, options.tiles_dir)
    gray = make_geotiff("gray.tif", count=1)
    with pytest.raises(InputMismatchError) as refused:
        import_raster(gray, options, registry, client)
    message = str(refused.value)
    for part in (
        repr(options.project),
        "reads 3 bands",
        "bands [1, 2, 3]",
        "rgb.tif",
        "gray.tif has 1 data band",
    ):
        assert part in message
    assert "--project" in message
    assert "Nothing was imported" in message
    assert state(registry, client, first.project_id, options.tiles_dir) == before
    assert registry.raster_by_path(str(gray.resolve())) is None


@pytest.mark.labelstudio
def test_bands_that_fit_are_accepted_and_bands_of_the_wrong_length_refused(
    make_geotiff: GeoTiffFactory, options: ImportOptions, registry: TileRegistry, client: LabelStudioClient
) -> None:
    first = import_raster(make_geotiff("rgb.tif", count=3), options, registry, client)
    assert registry.project_input(options.project).source_bands == (1, 2, 3)
    bgrn = make_geotiff("bgrn.tif", count=4)
    before = state(registry, client, first.project_id, options.tiles_dir)
    with pytest.raises(InputMismatchError, match=r"--bands names 2 bands \[3, 2\], the model reads 3"):
        import_raster(bgrn, dataclasses.replace(options, input_bands=[3, 2]), registry, client)
    assert state(registry, client, first.project_id, options.tiles_dir) == before
    report = import_raster(bgrn, dataclasses.replace(options, input_bands=[3, 2, 1]), registry, client)
    assert report.tasks_created == report.tiles > 0
    record = registry.raster_by_path(str(bgrn.resolve()))
    assert record is not None
    assert record.input_bands == (3, 2, 1)
    two = make_geotiff("two.tif", count=2)
    with pytest.raises(InputMismatchError, match=r"two.tif has 2 data bands.*--project"):
        import_raster(two, options, registry, client)


@pytest.mark.labelstudio
def test_a_new_project_reads_every_data_band_or_what_bands_chooses(
    make_geotiff: GeoTiffFactory, options: ImportOptions, registry: TileRegistry, client: LabelStudioClient
) -> None:
    rgba = make_geotiff(
        "rgba.tif", count=4,
        colorinterp=[ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha],
    )  # fmt: skip
    import_raster(rgba, options, registry, client)
    recorded = registry.project_input(options.project)
    assert recorded is not None
    assert recorded.source_bands == (1, 2, 3)  # the alpha band is a mask, not an input
    assert recorded.resolution == pytest.approx((0.2, 0.2))
    other = dataclasses.replace(options, project=f"{options.project} nir", input_bands=[4, 1, 2, 3])
    rgbn = make_geotiff("rgbn.tif", count=4, photometric="MINISBLACK")  # 4 data bands, no alpha
    assert inspect_raster(rgbn).alpha_band is None
    import_raster(rgbn, other, registry, client)
    chosen = registry.project_input(other.project)
    assert chosen is not None
    assert chosen.source_bands == (4, 1, 2, 3)


@pytest.mark.labelstudio
def test_a_resolution_3x_away_warns_and_imports(
    make_geotiff: GeoTiffFactory, options: ImportOptions, registry: TileRegistry, client: LabelStudioClient
) -> None:
    first = import_raster(make_geotiff("fine.tif"), options, registry, client)
    assert first.warnings == []
    same = import_raster(make_geotiff("also_fine.tif", transform=Affine(0.3, 0, 650000, 0, -0.3, 6860000)),
                         options, registry, client)  # fmt: skip
    assert same.warnings == []  # 1.5x: within the 2x tolerance
    coarse = make_geotiff("coarse.tif", transform=Affine(0.6, 0, 650000, 0, -0.6, 6860000))
    report = import_raster(coarse, options, registry, client)
    assert report.tasks_created == report.tiles > 0
    (warning,) = report.warnings
    assert "coarse.tif" in warning
    assert "0.6 m" in warning
    assert "0.2 m" in warning
    assert "2x" in warning


# tiling ------------------------------------------------------------------------------------------


@pytest.mark.labelstudio
def test_new_imports_overlap_by_the_configured_overlap_only(
    make_geotiff: GeoTiffFactory, options: ImportOptions, registry: TileRegistry, client: LabelStudioClient
) -> None:
    rotated = Affine.rotation(30) @ LAMBERT93_20CM
    raster = make_geotiff(width=700, height=520, transform=rotated)
    report = import_raster(raster, options, registry, client)
    tiles = registry.tiles()
    size, overlap = options.tile_size, options.overlap
    (record,) = registry.rasters()
    assert record.tiling is TilingPlan.EXACT
    assert report.tiles == len(tiles) == 9
    for axis, length in (("col", 700), ("row", 520)):
        spans = sorted({(getattr(t.window, f"{axis}_off"), getattr(t.window, f"{axis}_end")) for t in tiles})
        starts = [start for start, _ in spans]
        assert all(b - a == size - overlap for a, b in itertools.pairwise(starts))
        assert spans[-1][1] == length  # the last tile ends at the raster's edge
        assert all(end - next_start == overlap for (_, end), (next_start, _) in itertools.pairwise(spans))
    for tile in tiles:
        w = tile.window
        expected = window_transform(Window(w.col_off, w.row_off, w.width, w.height), rotated)
        assert np.allclose(tuple(tile.grid.transform)[:6], tuple(expected)[:6], rtol=0, atol=1e-12)
        assert (tile.grid.width, tile.grid.height) == (w.width, w.height)


@pytest.mark.labelstudio
def test_an_old_plan_raster_resumed_keeps_its_tiles(
    make_geotiff: GeoTiffFactory, options: ImportOptions, registry: TileRegistry, client: LabelStudioClient
) -> None:
    ref = prepare_project(client, registry, options)
    raster = make_geotiff(width=600, height=500)
    old = legacy_raster(registry, raster, ref.id)
    windows = [t.window for t in registry.tiles(old.id)]
    assert [w.col_off for w in windows[:3]] == [0, 224, 344]  # shifted inside, as imports were made
    report = import_raster(raster, options, registry, client)  # completes the interrupted import
    assert report.tasks_created == len(windows)
    assert [t.window for t in registry.tiles(old.id)] == windows
    assert {t.status for t in registry.tiles(old.id)} == {TileStatus.IMPORTED}
    assert registry.raster(old.id).tiling is TilingPlan.SHIFTED
    again = import_raster(raster, options, registry, client)
    assert again.tasks_created == 0
    assert [t.window for t in registry.tiles(old.id)] == windows


def test_training_takes_edge_tiles_of_other_sizes_in_one_batch() -> None:
    """New imports cut edge tiles short (exact overlap): a batch mixes 64x64, 64x20, 9x64 and 1x1 tiles."""
    torch.manual_seed(0)
    network = build_model(tiny_manifest())
    squares = bright_square_samples(4, seed=3)
    edges = [
        Sample(squares[1].image[:, :, :20].copy(), squares[1].target[:, :20].copy()),
        Sample(squares[2].image[:, :9, :].copy(), squares[2].target[:9, :].copy()),
        Sample(squares[3].image[:, :1, :1].copy(), squares[3].target[:1, :1].copy()),
    ]
    losses = train(network, [squares[0], *edges], TrainSettings(epochs=2, batch_size=4, crop=48))
    assert len(losses) == 2
    assert all(math.isfinite(loss) for loss in losses)
    scores = evaluate(network, edges, 2)
    assert 0.0 <= scores.accuracy <= 1.0


# rasters that cannot feed the model ----------------------------------------------------------------


def test_tiles_of_a_raster_without_the_input_are_left_out_with_the_reason(
    make_geotiff: GeoTiffFactory, tmp_path: Path
) -> None:
    with TileRegistry(tmp_path / "registry.sqlite") as registry:
        registry.record_project(1, "orthos")
        rgb = legacy_raster(registry, make_geotiff("rgb.tif", count=3), 1)
        gray = legacy_raster(registry, make_geotiff("gray.tif", count=1), 1)
        mapped = legacy_raster(registry, make_geotiff("bgr.tif", count=3), 1)
        registry.set_input_bands(mapped.id, (3, 2, 1))
        manifest = manifest_reading([1, 2, 3])
        assert input_bands(registry.raster(mapped.id), manifest) == [3, 2, 1]
        with pytest.raises(ModelInputError, match=r"gray.tif cannot feed model v-input.*geolabel forget"):
            input_bands(registry.raster(gray.id), manifest)
        tiles = registry.tiles()
        kept, problems = feeding_tiles(registry, tiles, manifest)
        assert {t.raster_id for t in kept} == {rgb.id, mapped.id}
        (problem,) = problems
        assert "gray.tif" in problem
        assert "has 1 bands" in problem
        torch.manual_seed(0)
        ModelStore(tmp_path / "models").save(manifest, build_model(manifest).state_dict())
        store = PredictionStore(tmp_path / "predictions", manifest.version)
        job = ModelJob(tmp_path / "models", manifest.version, tmp_path / "predictions")
        outcomes = run_chunk(job, [TileWork(t, registry.raster(t.raster_id)) for t in kept])
        assert [o.tile_id for o in outcomes] == [t.id for t in kept]
        assert store.missing(t.id for t in tiles) == [t.id for t in tiles if t.raster_id == gray.id]
        tile = registry.tiles(mapped.id)[0]
        bgr = read_input(registry.raster(mapped.id), tile, manifest).pixels
        rgb_order = read_input(registry.raster(mapped.id), tile, manifest_reading([3, 2, 1])).pixels
        assert np.array_equal(bgr, rgb_order)  # the raster's mapping decides, not the model's numbers


@pytest.mark.labelstudio
def test_the_backend_says_why_a_tile_has_no_pre_annotation(
    label_studio: LabelStudioServer, make_geotiff: GeoTiffFactory, tmp_path: Path
) -> None:
    scene = import_scene(label_studio, tmp_path / "rgb.tif", synthetic(3, 256, 300, "uint8", seed=3),
                         "input backend project", overlap=32)  # fmt: skip
    config = scene.config
    manifest = manifest_reading([1, 2, 3])
    torch.manual_seed(0)
    store = ModelStore(config.models_dir)
    store.save(manifest, build_model(manifest).state_dict())
    store.activate(manifest.version)
    with TileRegistry(config.registry_path) as registry:
        gray = legacy_raster(registry, make_geotiff("gray.tif", count=1), scene.report.project_id)
        tile = registry.tiles(gray.id)[0]
        registry.mark_rendered([(tile.id, "tiles/gray.png")])
        registry.set_task_ids({tile.id: 10**9})
    app = create_app(config, backend=Backend(settings_from_config(config))).test_client()
    login = config.ml_backend_auth()
    schema = label_config(CLASSES)

    def predict(task_id: int, tile_id: str) -> tuple[int, dict]:
        body = {"tasks": [{"id": task_id, "data": {"tile_id": tile_id}}], "label_config": schema,
                "project": f"{scene.report.project_id}.0"}  # fmt: skip
        response = app.post("/predict", json=body, auth=(login.username, login.password))
        return response.status_code, response.get_json()

    good = scene.tiles[0]
    status, answer = predict(good.task_id or 0, good.id)
    assert status == 200
    assert answer["results"][0]["model_version"] == manifest.version
    status, answer = predict(10**9, tile.id)
    assert status == 422
    assert "gray.tif cannot feed model" in answer["error"]
    assert "reads 3 bands" in answer["error"]
    assert str(10**9) in answer["error"]


@pytest.mark.labelstudio
def test_a_legacy_raster_without_the_input_stops_neither_round_nor_export(
    label_studio: LabelStudioServer, make_geotiff: GeoTiffFactory, tmp_path: Path
) -> None:
    """Data imported before projects fixed their input: a 1-band raster in a 3-band project."""
    trainer = {"epochs": 1, "batch_size": 2, "block_tiles": 1, "batch": 1}
    scene = import_scene(label_studio, tmp_path / "rgb.tif", synthetic(3, 256, 512, "uint8", seed=4),
                         "legacy input project", overlap=0, trainer=trainer)  # fmt: skip
    config, client, project_id = scene.config, label_studio.client(), scene.report.project_id
    tasks = {}
    with TileRegistry(config.registry_path) as registry:
        for name in ("gray.tif", "unlabelled_gray.tif"):  # the second one's tile gets no annotation
            raster = make_geotiff(name, count=1, width=256, height=256)
            (tile,) = registry.tiles(legacy_raster(registry, raster, project_id).id)
            registry.mark_rendered([(tile.id, f"tiles/legacy/{name}.png")])
            payload = {"data": {"image": f"/data/local-files/?d=tiles/legacy/{name}.png", "tile_id": tile.id}}
            (tasks[name],) = client.import_tasks(project_id, [payload])
            registry.set_task_ids({tile.id: tasks[name]})
    gray_task = tasks["gray.tif"]
    square = np.zeros((256, 256), dtype=bool)
    square[40:120, 60:160] = True
    for task in (int(scene.tiles[0].task_id or 0), gray_task):
        client.create_annotation(task, [brush_result(square, "building", "label_brush", "image")])

    record = run_round(config, client, retry=Retry(2, 0.01))
    assert record.status == RoundStatus.PROMOTED, record.error
    assert record.labelled_tiles == 1
    for name in ("gray.tif", "unlabelled_gray.tif"):
        assert any(p.startswith(f"{name} cannot feed model") for p in record.problems), record.problems

    report = export_project(config, client, ExportOptions(tmp_path / "export"))
    assert (tmp_path / "export" / "predictions_argmax.tif").is_file()
    assert any("gray.tif cannot feed model" in n for n in report.notes), report.notes
    assert report.counts["predicted_tiles"] == len(scene.tiles)
