"""``geolabel export`` against the real Label Studio, judged by rasterio, GDAL's tools, rio-cogeo and QGIS."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
import pytest
import rasterio
import rasterio.features
import rasterio.transform
import torch
from affine import Affine
from click.testing import CliRunner
from rasterio.crs import CRS
from rasterio.warp import calculate_default_transform
from rasterio.warp import transform as warp_points

from exporters.project import WORK_LOCK, ExportOptions, export_project, remove_abandoned_work
from geolabel.classes import LabelClass
from geolabel.cli import cli
from geolabel.locks import hold_lock
from georef.labelstudio import ImageSize, brush_result, polygon_result
from georef.registry import TileRecord, TileRegistry
from tests.conftest import (
    CLASSES,
    LAMBERT93_20CM,
    ImportedScene,
    LabelStudioServer,
    config_toml,
    import_scene,
    require_gdal_tools,
    synthetic,
)
from trainer.model import build_model
from trainer.versions import InputSpec, ModelManifest, ModelStore

pytestmark = pytest.mark.labelstudio

SIZE = ImageSize(256, 256)
RIO = Path(sys.executable).with_name("rio")
#: Tile pixels (col, row) of the polygon drawn on the first tile.
POLYGON = np.array([(10.0, 20.0), (100.5, 20.0), (100.5, 60.25), (10.0, 70.0)])
WGS84_1M = Affine(1e-5, 0.0, 2.35, 0.0, -1e-5, 48.85)


def tile_at(scene: ImportedScene, col_off: int, row_off: int) -> TileRecord:
    return next(t for t in scene.tiles if (t.window.col_off, t.window.row_off) == (col_off, row_off))


def activate_random_model(scene: ImportedScene) -> str:
    """A model version with the real architecture and random weights, made active."""
    classes = [LabelClass(id=c.id, name=c.name, color=c.color) for c in CLASSES]
    manifest = ModelManifest(version="v20260101-000000", created="2026-01-01T00:00:00+00:00", classes=classes,
                             input=InputSpec(bands=[1, 2, 3], mean=[128.0] * 3, std=[64.0] * 3))  # fmt: skip
    torch.manual_seed(0)
    store = ModelStore(scene.config.models_dir)
    store.save(manifest, build_model(manifest).state_dict())
    store.activate(manifest.version)
    return manifest.version


@pytest.fixture(scope="module")
def scene(label_studio: LabelStudioServer, tmp_path_factory: pytest.TempPathFactory) -> ImportedScene:
    """A 480 x 480 Lambert-93 raster in 4 tiles (overlap 32), annotated, with a model version.

    Tile (0, 0): a polygon and half of a brush building; tile (224, 0): the other half; tile (0, 224):
    skipped; tile (224, 224): a polygon, then the tile is removed from the registry.
    """
    folder = tmp_path_factory.mktemp("export-scene")
    image = synthetic(3, 480, 480, "uint8", seed=4)
    found = import_scene(label_studio, folder / "ortho.tif", image, "export scene", overlap=32)
    client = label_studio.client()
    building = np.zeros((480, 480), bool)
    building[100:120, 200:280] = True  # 20 x 80 px, across the first two tiles' overlap and border
    first, second = tile_at(found, 0, 0), tile_at(found, 224, 0)
    polygon = polygon_result(POLYGON, SIZE, "building", "label_polygon", "image")
    client.create_annotation(int(first.task_id or 0), [polygon, brush(building, first)])
    client.create_annotation(int(second.task_id or 0), [brush(building, second)])
    client.create_annotation(int(tile_at(found, 0, 224).task_id or 0), [], cancelled=True)
    gone = tile_at(found, 224, 224)
    client.create_annotation(int(gone.task_id or 0), [polygon])
    with TileRegistry(found.config.registry_path) as registry, registry.conn:
        registry.conn.execute("DELETE FROM tiles WHERE id = ?", (gone.id,))
    activate_random_model(found)
    return found


def brush(mask: np.ndarray, tile: TileRecord) -> dict[str, object]:
    w = tile.window
    return brush_result(
        mask[w.row_off : w.row_end, w.col_off : w.col_end], "building", "label_brush", "image"
    )


@pytest.fixture(scope="module")
def exported(
    scene: ImportedScene, label_studio: LabelStudioServer, tmp_path_factory: pytest.TempPathFactory
) -> Path:
    out = tmp_path_factory.mktemp("exports") / "native"
    export_project(scene.config, label_studio.client(), ExportOptions(out))
    return out


def test_labels_land_on_the_ground_coordinates_of_their_pixels(scene: ImportedScene, exported: Path) -> None:
    labels = gpd.read_file(exported / "labels.gpkg", layer="labels")
    assert labels.crs == CRS.from_epsg(2154)
    assert sorted(labels["kind"]) == ["brush", "brush", "polygon"]  # the removed tile's polygon is not there
    polygon = labels[labels["kind"] == "polygon"].geometry.iloc[0].geoms[0]
    xs, ys = rasterio.transform.xy(LAMBERT93_20CM, POLYGON[:, 1], POLYGON[:, 0], offset="ul")
    assert np.abs(np.asarray(polygon.exterior.coords)[:-1] - np.column_stack((xs, ys))).max() < 1e-6
    row = labels[labels["kind"] == "polygon"].iloc[0]
    assert row["class_name"] == "building"
    assert row["class_id"] == 1
    assert row["annotator"] == "admin@geolabel.test"
    assert row["tile_id"] == tile_at(scene, 0, 0).id
    assert row["raster"].endswith("ortho.tif")
    assert row["created_at"].year >= 2026  # a GeoPackage datetime (UTC), not text
    assert str(row["created_at"].tz) == "UTC"
    assert row["updated_at"] >= row["created_at"]


def test_a_building_cut_by_tiles_comes_out_whole(exported: Path) -> None:
    merged = gpd.read_file(exported / "labels.gpkg", layer="labels_merged")
    assert len(merged) == 2  # the polygon, and the brush building merged from its two tiles
    brushed = merged[merged["regions"] == 2].geometry.iloc[0]
    assert brushed.area == pytest.approx(20 * 80 * 0.04, rel=1e-9)
    left, top = LAMBERT93_20CM @ (200, 100)
    assert brushed.bounds == pytest.approx((left, top - 4.0, left + 16.0, top), abs=1e-6)


def test_prediction_rasters_match_the_source_grid_and_are_valid_cogs(exported: Path) -> None:
    for name in ("predictions_proba.tif", "predictions_argmax.tif"):
        with rasterio.open(exported / name) as src:
            assert (src.crs, src.transform, src.width, src.height) == (
                CRS.from_epsg(2154),
                LAMBERT93_20CM,
                480,
                480,
            )
            # Under one 512-px COG tile: no overviews (test_export_parts checks them on a larger mosaic).
        check = subprocess.run(
            [str(RIO), "cogeo", "validate", str(exported / name)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout + check.stderr
    with rasterio.open(exported / "predictions_proba.tif") as src:
        proba = src.read()
        assert src.descriptions == ("background", "building", "water")
        mask = src.dataset_mask() > 0
    uncovered = np.zeros((480, 480), bool)
    uncovered[256:, 256:] = True  # only the removed tile covered these pixels
    assert (mask == ~uncovered).all()
    sums = proba.astype(int).sum(axis=0)[mask]
    assert np.abs(sums - 255).max() <= 3  # blended probabilities still sum to one, to rounding
    with rasterio.open(exported / "predictions_argmax.tif") as src:
        ids = src.read(1)
    assert (ids[uncovered] == 255).all()
    assert (ids[mask] == np.array([0, 1, 2])[proba.argmax(axis=0)][mask]).all()


def test_vector_predictions_cover_exactly_the_class_pixels_of_the_argmax(exported: Path) -> None:
    predictions = gpd.read_file(exported / "predictions.gpkg", layer="predictions")
    assert predictions.crs == CRS.from_epsg(2154)
    with rasterio.open(exported / "predictions_argmax.tif") as src:
        ids = src.read(1)
    for class_id, name in ((1, "building"), (2, "water")):
        mine = predictions[predictions["class_id"] == class_id]
        assert set(mine["class_name"]) <= {name}
        pixels = int((ids == class_id).sum())
        assert int(mine["pixels"].sum()) == pixels
        assert mine.geometry.area.sum() == pytest.approx(pixels * 0.04, rel=1e-9)  # 20 cm pixels, no simplify
        burnt = rasterio.features.rasterize(
            ((g, 1) for g in mine.geometry), out_shape=ids.shape, transform=LAMBERT93_20CM, dtype="uint8"
        )
        assert (burnt.astype(bool) == (ids == class_id)).all()  # exactly those pixels: no shift, no flip
    assert ((predictions["mean_probability"] > 0.3) & (predictions["mean_probability"] <= 1.0)).all()
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["counts"]["prediction_polygons"] == len(predictions)


def test_tile_map_has_states_and_the_outside_judges_agree(exported: Path) -> None:
    tiles = gpd.read_file(exported / "tiles.gpkg", layer="tiles")
    assert sorted(tiles["state"]) == ["labelled", "labelled", "skipped"]
    assert set(tiles["annotators"]) == {0, 1}
    first = tiles[(tiles["tile_row"] == 0) & (tiles["tile_col"] == 0)].geometry.iloc[0]
    assert first.bounds == pytest.approx((650000.0, 6860000.0 - 51.2, 650000.0 + 51.2, 6860000.0))
    styles = pyogrio.read_dataframe(exported / "labels.gpkg", layer="layer_styles", read_geometry=False)
    assert sorted(styles["f_table_name"]) == ["labels", "labels_merged"]
    styles = pyogrio.read_dataframe(exported / "predictions.gpkg", layer="layer_styles", read_geometry=False)
    assert list(styles["f_table_name"]) == ["predictions"]
    assert 'attr="class_id"' in styles["styleQML"].iloc[0]
    assert (exported / "predictions_argmax.qml").is_file()
    for band, name in ((2, "building"), (3, "water")):  # one style per class band; the first is the default
        qml = (exported / f"predictions_proba.{name}.qml").read_text()
        assert f'band="{band}"' in qml
        assert f"{name} 100 %" in qml
    assert (exported / "predictions_proba.qml").read_text() == (
        exported / "predictions_proba.building.qml"
    ).read_text()
    manifest = json.loads((exported / "manifest.json").read_text())
    assert manifest["crs"] == "EPSG:2154"
    assert manifest["counts"]["labels"] == 3
    assert any("no tile in the registry" in p for p in manifest["problems"])  # the removed tile: reported
    assert manifest["model_version"] == "v20260101-000000"


def test_gdal_command_line_tools_read_every_output(exported: Path) -> None:
    require_gdal_tools()
    polygons = len(gpd.read_file(exported / "predictions.gpkg", layer="predictions"))
    layers = {("labels.gpkg", "labels"): 3, ("labels.gpkg", "labels_merged"): 2, ("tiles.gpkg", "tiles"): 3,
              ("predictions.gpkg", "predictions"): polygons}  # fmt: skip
    for (file, layer), count in layers.items():
        text = subprocess.run(["ogrinfo", "-so", str(exported / file), layer], capture_output=True, text=True,
                              check=True).stdout  # fmt: skip
        assert f"Feature Count: {count}" in text
        assert "Lambert-93" in text
        if layer == "labels":
            assert "created_at: DateTime" in text
            assert "updated_at: DateTime" in text
    for name, bands in (("predictions_proba.tif", 3), ("predictions_argmax.tif", 1)):
        info = json.loads(subprocess.run(["gdalinfo", "-json", str(exported / name)], capture_output=True,
                                         text=True, check=True).stdout)  # fmt: skip
        assert info["size"] == [480, 480]
        assert len(info["bands"]) == bands
        assert 'ID["EPSG",2154]' in info["coordinateSystem"]["wkt"]
    assert info["bands"][0]["colorInterpretation"] == "Palette"
    assert info["bands"][0]["noDataValue"] == 255


def test_export_to_another_crs_follows_gdal_and_proj(
    scene: ImportedScene, label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    out = tmp_path / "wgs84"
    export_project(scene.config, label_studio.client(), ExportOptions(out, CRS.from_epsg(4326)))
    bounds = (650000.0, 6860000.0 - 96.0, 650000.0 + 96.0, 6860000.0)
    expected, width, height = calculate_default_transform("EPSG:2154", "EPSG:4326", 480, 480, *bounds)
    with rasterio.open(out / "predictions_proba.tif") as src:
        assert (src.crs, src.transform, src.width, src.height) == (
            CRS.from_epsg(4326),
            expected,
            width,
            height,
        )
        assert src.dataset_mask().mean() > 0.9
    labels = gpd.read_file(out / "labels.gpkg", layer="labels")
    assert labels.crs == CRS.from_epsg(4326)
    polygon = labels[labels["kind"] == "polygon"].geometry.iloc[0].geoms[0]
    xs, ys = rasterio.transform.xy(LAMBERT93_20CM, POLYGON[:, 1], POLYGON[:, 0], offset="ul")
    lons, lats = warp_points("EPSG:2154", "EPSG:4326", xs, ys)
    assert np.abs(np.asarray(polygon.exterior.coords)[:-1] - np.column_stack((lons, lats))).max() < 1e-9


def run_cli(
    scene: ImportedScene, label_studio: LabelStudioServer, folder: Path, *args: str
) -> tuple[int, str]:
    path = config_toml(scene.config, folder)
    result = CliRunner().invoke(cli, ["--config", str(path), "export", *args],
                                env={"GEOLABEL_LABEL_STUDIO_TOKEN": label_studio.token})  # fmt: skip
    return result.exit_code, result.output


def test_an_existing_folder_is_never_half_overwritten(
    scene: ImportedScene, label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, output = run_cli(scene, label_studio, tmp_path, "--out", str(out), "--what", "tiles")
    assert code == 8
    assert "already exists" in output
    assert "--overwrite" in output
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    code, output = run_cli(scene, label_studio, tmp_path, "--out", str(out), "--what", "tiles", "--overwrite")
    assert code == 0, output
    assert sorted(p.name for p in out.iterdir()) == ["README.txt", "manifest.json", "tiles.gpkg"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]  # no work folder left
    assert label_studio.token not in output


def test_work_folders_of_killed_exports_are_removed_by_the_next_one(
    scene: ImportedScene, label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    """``kill -9`` leaves ``.out.partial-<pid>``; the next export removes the folders of gone exports only."""
    finished = subprocess.Popen(["true"])
    finished.wait()  # its pid names a process that is gone, as after kill -9
    live = [subprocess.Popen(["sleep", "300"]) for _ in range(3)]
    try:
        killed = tmp_path / f".out.partial-{finished.pid}"
        setting_up = tmp_path / f".out.partial-{live[0].pid}"  # a live export before it takes its lock
        reused = tmp_path / f".out.partial-{live[1].pid}"  # the pid now names a process without the lock
        running = tmp_path / f".out.partial-{live[2].pid}"  # a live export holding its lock
        for folder in (killed, setting_up, reused, running):
            folder.mkdir()
            (folder / "labels.gpkg").write_bytes(b"x" * 1000)
        (reused / WORK_LOCK).write_text("")
        with hold_lock(running / WORK_LOCK):
            code, output = run_cli(scene, label_studio, tmp_path, "--out", str(tmp_path / "out"),
                                   "--what", "tiles")  # fmt: skip
    finally:
        for process in live:
            process.kill()
            process.wait()
    assert code == 0, output
    assert (tmp_path / "out" / "tiles.gpkg").is_file()
    left = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".out."))
    assert left == sorted([setting_up.name, running.name])


def test_a_real_export_killed_with_sigkill_is_cleaned_up_by_the_next_one(
    scene: ImportedScene, label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    """The real thing: ``geolabel export`` killed -9 as soon as its work folder exists, then run again."""
    path = config_toml(scene.config, tmp_path)
    out = tmp_path / "out"
    command = [
        str(Path(sys.executable).with_name("geolabel")),
        "--config",
        str(path),
        "export",
        "--out",
        str(out),
    ]
    env = {**os.environ, "GEOLABEL_LABEL_STUDIO_TOKEN": label_studio.token}
    process = subprocess.Popen(command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    work = tmp_path / f".out.partial-{process.pid}"
    deadline = time.monotonic() + 120
    while not work.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.005)
    process.kill()
    assert process.wait() == -signal.SIGKILL, "the export ended before it could be killed"
    assert work.is_dir()  # what kill -9 leaves behind
    assert not out.exists()  # never a half export in place
    code, output = run_cli(scene, label_studio, tmp_path, "--out", str(out))
    assert code == 0, output
    assert (out / "labels.gpkg").is_file()
    assert (out / "predictions_proba.tif").is_file()
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.")]


def test_an_old_export_moved_aside_is_removed_only_once_the_new_one_is_in_place(tmp_path: Path) -> None:
    finished = subprocess.Popen(["true"])
    finished.wait()
    old = tmp_path / f".out.old-{finished.pid}"  # killed between moving the old export aside and publishing
    old.mkdir()
    other = tmp_path / f".other.partial-{finished.pid}"  # another export's folder
    other.mkdir()
    assert remove_abandoned_work(tmp_path / "out") == []  # out is missing: the old export is all there is
    (tmp_path / "out").mkdir()
    assert remove_abandoned_work(tmp_path / "out") == [old]
    assert other.is_dir()


def test_bad_options_are_refused_with_the_fix(scene: ImportedScene, label_studio: LabelStudioServer,
                                             tmp_path: Path) -> None:  # fmt: skip
    code, output = run_cli(scene, label_studio, tmp_path, "--out", str(tmp_path / "x"), "--crs", "EPSG:99999")
    assert code == 2
    assert "not a CRS" in output
    assert "EPSG:2154" in output
    code, output = run_cli(
        scene, label_studio, tmp_path, "--out", str(tmp_path / "x"), "--what", "labels,maps"
    )
    assert code == 2
    assert "unknown part maps" in output
    assert not (tmp_path / "x").exists()


def test_a_project_without_labels_or_model_gives_valid_empty_layers(
    label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    image = synthetic(3, 300, 300, "uint8", seed=5)
    empty = import_scene(label_studio, tmp_path / "geo.tif", image, "export empty", overlap=0,
                         crs="EPSG:4326", transform=WGS84_1M)  # fmt: skip
    code, output = run_cli(empty, label_studio, tmp_path, "--out", str(tmp_path / "out"))
    assert code == 0, output
    assert "no labels yet" in output
    assert "no model version yet" in output
    for layer in ("labels", "labels_merged"):
        info = pyogrio.read_info(tmp_path / "out" / "labels.gpkg", layer=layer)
        assert info["features"] == 0
        assert info["crs"] == "EPSG:4326"
        assert "class_name" in list(info["fields"])
    tiles = gpd.read_file(tmp_path / "out" / "tiles.gpkg")
    assert len(tiles) == 4
    assert set(tiles["state"]) == {"unlabelled"}
    last = max(empty.tiles, key=lambda t: (t.tile_row, t.tile_col))
    left, _, _, top = tiles[tiles["tile_id"] == last.id].geometry.iloc[0].bounds
    expected = rasterio.transform.xy(WGS84_1M, last.window.row_off, last.window.col_off, offset="ul")
    assert (left, top) == pytest.approx(expected, abs=1e-12)
    code, output = run_cli(
        empty, label_studio, tmp_path, "--out", str(tmp_path / "p"), "--what", "predictions"
    )
    assert code == 8
    assert "geolabel train --now" in output


def test_any_model_version_can_be_exported(
    scene: ImportedScene, label_studio: LabelStudioServer, exported: Path, tmp_path: Path
) -> None:
    store = ModelStore(scene.config.models_dir)
    active = store.active_name()
    older = store.manifest(str(active)).model_copy(update={"version": "v20250101-000000"})
    torch.manual_seed(1)
    store.save(older, build_model(older).state_dict())  # saved, never activated
    code, output = run_cli(scene, label_studio, tmp_path, "--out", str(tmp_path / "old"), "--what",
                           "predictions", "--version", "v20250101-000000")  # fmt: skip
    assert code == 0, output
    manifest = json.loads((tmp_path / "old" / "manifest.json").read_text())
    assert manifest["model_version"] == "v20250101-000000"
    with (
        rasterio.open(tmp_path / "old" / "predictions_proba.tif") as old,
        rasterio.open(exported / "predictions_proba.tif") as current,
    ):
        assert old.shape == current.shape
        assert (old.read() != current.read()).any()  # the other version's own predictions
    assert store.active_name() == active  # exporting an older version does not activate it
    code, output = run_cli(scene, label_studio, tmp_path, "--out", str(tmp_path / "x"), "--version", "v1")
    assert code == 8
    assert "model version 'v1' not found" in output
    assert "v20250101-000000" in output  # the versions there are listed
    code, output = run_cli(
        scene, label_studio, tmp_path, "--out", str(tmp_path / "x"), "--regularize", "roof"
    )
    assert code == 8
    assert "cannot regularise roof: not a class of this model" in output
    assert not (tmp_path / "x").exists()


def test_labels_can_be_clipped_to_the_image_data(label_studio: LabelStudioServer, tmp_path: Path) -> None:
    image = synthetic(3, 300, 300, "uint8", seed=6)
    image[image == 0] = 1
    image[:, :, 150:] = 0  # no image right of column 150 (nodata 0)
    found = import_scene(label_studio, tmp_path / "edge.tif", image, "export clip", overlap=0, nodata=0)
    first = tile_at(found, 0, 0)
    square = np.array([(100.0, 10.0), (200.0, 10.0), (200.0, 50.0), (100.0, 50.0)])
    label_studio.client().create_annotation(
        int(first.task_id or 0), [polygon_result(square, SIZE, "water", "label_polygon", "image")]
    )
    code, output = run_cli(
        found, label_studio, tmp_path, "--out", str(tmp_path / "whole"), "--what", "labels"
    )
    assert code == 0, output
    code, output = run_cli(found, label_studio, tmp_path, "--out", str(tmp_path / "clipped"), "--what",
                           "labels", "--clip-to-valid")  # fmt: skip
    assert code == 0, output
    whole = gpd.read_file(tmp_path / "whole" / "labels.gpkg", layer="labels")
    clipped = gpd.read_file(tmp_path / "clipped" / "labels.gpkg", layer="labels")
    assert whole.geometry.iloc[0].area == pytest.approx(100 * 40 * 0.04, rel=1e-12)
    assert clipped.geometry.iloc[0].area == pytest.approx(50 * 40 * 0.04, rel=1e-12)  # columns 100-150 only
    left, top = LAMBERT93_20CM @ (100, 10)
    assert clipped.geometry.iloc[0].bounds == pytest.approx((left, top - 8.0, left + 10.0, top), abs=1e-9)
    assert "clipped to valid image data" in clipped["note"].iloc[0]


QGIS_SCRIPT = """
import json, os, sys
from qgis.core import QgsApplication, QgsRasterLayer, QgsVectorLayer
app = QgsApplication([], False)
app.initQgis()
folder = sys.argv[1]
found = {}
for name in ("labels", "labels_merged"):
    layer = QgsVectorLayer(f"{folder}/labels.gpkg|layername={name}", name, "ogr")
    found[name] = [layer.isValid(), layer.crs().authid(), layer.featureCount(), layer.renderer().type()]
for file, name in (("tiles", "tiles"), ("predictions", "predictions")):
    layer = QgsVectorLayer(f"{folder}/{file}.gpkg|layername={name}", name, "ogr")
    found[name] = [layer.isValid(), layer.crs().authid(), layer.featureCount(), layer.renderer().type()]
for name in ("predictions_proba", "predictions_argmax"):
    layer = QgsRasterLayer(f"{folder}/{name}.tif", name)
    found[name] = [layer.isValid(), layer.crs().authid(), layer.width(), layer.renderer().type()]
layer = QgsRasterLayer(f"{folder}/predictions_proba.tif", "water")
_, loaded = layer.loadNamedStyle(f"{folder}/predictions_proba.water.qml")
renderer = layer.renderer()
band = renderer.inputBand() if hasattr(renderer, "inputBand") else renderer.band()
found["water_style"] = [loaded, renderer.type(), band]
print(json.dumps(found), flush=True)
os._exit(0)  # QGIS 3.22 may crash while tearing down offscreen; the answer is already out
"""


def test_qgis_opens_every_layer_styled(exported: Path, tmp_path: Path) -> None:
    python = shutil.which("python3", path="/usr/bin")
    probe = subprocess.run([python or "python3", "-c", "import qgis.core"], capture_output=True)
    if python is None or probe.returncode != 0:
        pytest.skip("QGIS is not installed (apt-get install qgis python3-qgis): the QGIS check is optional")
    script = tmp_path / "open.py"
    script.write_text(QGIS_SCRIPT)
    env = {"QT_QPA_PLATFORM": "offscreen", "HOME": str(tmp_path), "PATH": "/usr/bin"}
    result = subprocess.run([python, str(script), str(exported)], capture_output=True, text=True, timeout=300,
                            env=env)  # fmt: skip
    assert result.returncode == 0, result.stderr[-2000:]
    found = json.loads(result.stdout.strip().splitlines()[-1])
    assert found["labels"] == [True, "EPSG:2154", 3, "categorizedSymbol"]
    assert found["labels_merged"] == [True, "EPSG:2154", 2, "categorizedSymbol"]
    assert found["tiles"] == [True, "EPSG:2154", 3, "categorizedSymbol"]
    polygons = len(gpd.read_file(exported / "predictions.gpkg", layer="predictions"))
    assert found["predictions"] == [True, "EPSG:2154", polygons, "categorizedSymbol"]
    assert found["predictions_argmax"] == [True, "EPSG:2154", 480, "paletted"]
    assert found["predictions_proba"] == [True, "EPSG:2154", 480, "singlebandpseudocolor"]
    assert found["water_style"] == [True, "singlebandpseudocolor", 3]  # a class's own style, loaded by hand
