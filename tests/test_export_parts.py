"""Export building blocks on real files, without Label Studio: mosaic, COG writing, label geometry, styles."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pytest
import rasterio
import rasterio.transform
from affine import Affine
from rasterio.crs import CRS
from rasterio.warp import transform as warp_points

from exporters import rasters, styles
from exporters.labels import merge, task_features
from exporters.mosaic import ARGMAX_NODATA, Block, MosaicTile, feather, mosaic_block, plan_blocks
from geolabel.classes import UNSURE_LABEL
from geolabel.lsmodels import LabelledTask
from georef.grid import Grid, PixelWindow, reprojected_grid, union_grid
from georef.labelstudio import ImageSize, brush_result, polygon_result
from georef.registry import RasterRecord, RasterStatus, TileRecord, TileStatus
from tests.conftest import LAMBERT93_20CM
from trainer.harvest import Problem
from trainer.predictions import PredictionStore, StoredPrediction

L93 = CRS.from_epsg(2154)
WGS84_GRID = Affine(1e-5, 0.0, 2.35, 0.0, -1e-5, 48.85)  # about 1 m pixels over Paris, in degrees
RIO = Path(sys.executable).with_name("rio")


def stored(proba: np.ndarray, valid: np.ndarray | None = None) -> StoredPrediction:
    return StoredPrediction(
        proba.astype(np.uint8), np.ones(proba.shape[1:], bool) if valid is None else valid
    )


def test_a_lone_tile_is_placed_exactly_where_its_grid_says() -> None:
    out = Grid(100, 80, LAMBERT93_20CM, L93)
    tile = MosaicTile("t", out.window_grid(PixelWindow(30, 20, 40, 30)), overlap=8)
    pattern = np.random.default_rng(0).integers(0, 256, size=(2, 30, 40))
    assert [b.window for b in plan_blocks(out, [tile], size=64)] == [PixelWindow(0, 0, 64, 64),
                                                                      PixelWindow(64, 0, 36, 64)]  # fmt: skip
    blocks = plan_blocks(out, [tile], size=32)
    results = [mosaic_block(out, b, lambda _: stored(pattern), 2) for b in blocks]
    mosaic = np.zeros((2, 80, 100), np.uint8)
    valid = np.zeros((80, 100), bool)
    for result in results:
        w = result.window
        mosaic[:, w.row_off : w.row_end, w.col_off : w.col_end] = result.proba
        valid[w.row_off : w.row_end, w.col_off : w.col_end] = result.valid
    assert (mosaic[:, 20:50, 30:70] == pattern).all()  # a one-pixel shift breaks this
    assert valid.sum() == 30 * 40
    assert valid[20:50, 30:70].all()


def test_overlaps_are_blended_by_distance_to_the_tile_edges() -> None:
    out = Grid(56, 32, LAMBERT93_20CM, L93)
    left = MosaicTile("left", out.window_grid(PixelWindow(0, 0, 32, 32)), overlap=8)
    right = MosaicTile("right", out.window_grid(PixelWindow(24, 0, 32, 32)), overlap=8)
    values = {"left": 200, "right": 40}
    proba = {k: np.full((1, 32, 32), v) for k, v in values.items()}
    result = mosaic_block(out, Block(out.full_window, (left, right)), lambda t: stored(proba[t]), 1)
    row = result.proba[0, 16].astype(int)
    assert (row[:24] == 200).all()
    assert (row[32:] == 40).all()
    overlap = row[24:32]
    assert (np.diff(overlap) < 0).all()  # a ramp from the left tile's value to the right one's
    weights = feather(32, 32, 8)[16]
    expected = np.rint((200 * weights[24:32] + 40 * weights[:8]) / (weights[24:32] + weights[:8]))
    assert (overlap == expected).all()


def test_pixels_without_image_count_for_nothing() -> None:
    out = Grid(32, 32, LAMBERT93_20CM, L93)
    tile = MosaicTile("t", out, overlap=0)
    valid = np.ones((32, 32), bool)
    valid[:, :10] = False
    result = mosaic_block(
        out, Block(out.full_window, (tile,)), lambda _: stored(np.full((2, 32, 32), 9), valid), 2
    )
    assert (result.valid == valid).all()
    assert (result.argmax([0, 3])[:, :10] == ARGMAX_NODATA).all()


def test_reprojected_tiles_keep_constant_probabilities_and_land_on_their_footprint() -> None:
    source = Grid(64, 64, LAMBERT93_20CM, L93)
    out = reprojected_grid(source, CRS.from_epsg(4326))
    tile = MosaicTile("t", source, overlap=0)
    (block,) = plan_blocks(out, [tile])
    result = mosaic_block(
        out, block, lambda _: stored(np.stack([np.full((64, 64), 55), np.full((64, 64), 200)])), 2
    )
    inside = result.valid
    assert inside.mean() > 0.9  # GDAL's default grid hugs the (nearly north-up) footprint
    assert (result.proba[0][inside] == 55).all()
    assert (result.proba[1][inside] == 200).all()


def test_union_grid_refuses_rasters_off_the_first_ones_pixels() -> None:
    a = Grid(10, 10, LAMBERT93_20CM, L93)
    b = Grid(10, 10, LAMBERT93_20CM @ Affine.translation(10, 5), L93)
    both = union_grid([a, b])
    assert (both.width, both.height) == (20, 15)
    assert both.transform == a.transform
    with pytest.raises(ValueError, match="not on one pixel grid"):
        union_grid([a, Grid(10, 10, LAMBERT93_20CM @ Affine.translation(0.5, 0), L93)])


def test_written_rasters_are_valid_cogs_with_classes_colours_and_nodata(tmp_path: Path) -> None:
    out = Grid(1500, 700, LAMBERT93_20CM, L93)  # the last blocks are partial; the right part has no tile
    tiles = [MosaicTile(f"t{c}", out.window_grid(PixelWindow(c, 0, 256, 256)), 0) for c in (0, 256)]
    tiles += [MosaicTile("low", out.window_grid(PixelWindow(0, 444, 256, 256)), 0)]
    pattern = np.random.default_rng(1).integers(0, 256, size=(256, 256))
    proba = np.stack([pattern, 255 - pattern])
    bands = [rasters.Band(0, "background", "#000000"), rasters.Band(7, "building", "#e31a1c")]
    work = tmp_path / "work"
    work.mkdir()
    files = rasters.write_mosaic(out, plan_blocks(out, tiles, size=512), lambda _: stored(proba), bands, work)
    rasters.to_cog(files.proba, tmp_path / "proba.tif", "AVERAGE")
    rasters.to_cog(files.argmax, tmp_path / "argmax.tif", "NEAREST")
    for name in ("proba.tif", "argmax.tif"):
        check = subprocess.run(
            [str(RIO), "cogeo", "validate", str(tmp_path / name)], capture_output=True, text=True
        )
        assert check.returncode == 0, check.stdout
        assert "is a valid cloud optimized GeoTIFF" in check.stdout
    with rasterio.open(tmp_path / "proba.tif") as src:
        assert (src.crs, src.transform, src.width, src.height) == (L93, out.transform, 1500, 700)
        assert src.descriptions == ("background", "building")
        assert src.overviews(1)
        data = src.read()
        mask = src.dataset_mask()
    assert (data[:, 0:256, 256:512] == proba).all()
    assert mask[0:256, 0:512].all()
    assert not mask[:, 600:].any()
    assert not mask[300:400].any()
    with rasterio.open(tmp_path / "argmax.tif") as src:
        ids = src.read(1)
        assert src.nodata == ARGMAX_NODATA
        assert src.colormap(1)[7][:3] == (227, 26, 28)
    assert set(np.unique(ids[:256, :512])) <= {0, 7}
    assert (ids[:, 600:] == ARGMAX_NODATA).all()
    assert ((ids[:256, :256] == 7) == (255 - pattern > pattern)).all()  # ties go to background


def test_prediction_store_round_trip_is_exact_to_a_quantum(tmp_path: Path) -> None:
    store = PredictionStore(tmp_path, "v1")
    proba = np.random.default_rng(2).random((3, 20, 30)).astype(np.float32)
    valid = np.random.default_rng(3).random((20, 30)) > 0.3
    store.save("tile", proba, valid)
    back = store.load("tile")
    assert np.abs(back.proba / 255.0 - proba).max() <= 0.5 / 255 + 1e-7
    assert (back.valid == valid).all()
    assert store.missing(["tile", "other"]) == ["other"]


# --- label geometry -------------------------------------------------------------------


def raster_and_tile(crs: str, transform: Affine, window: PixelWindow) -> tuple[RasterRecord, TileRecord]:
    grid = Grid(1000, 800, transform, CRS.from_user_input(crs))
    stretch = ((0.0, 255.0),) * 3
    raster = RasterRecord("/data/r.tif", "r", "h", grid, 3, "uint8", None, (1, 2, 3), stretch, 256, 32, 1,
                          id=1, status=RasterStatus.COMPLETE, imported_at="")  # fmt: skip
    tile = TileRecord("tile", 1, 0, 0, window, grid.window_grid(window), None, 5, TileStatus.IMPORTED, crs)
    return raster, tile


@pytest.mark.parametrize(("crs", "transform"), [("EPSG:2154", LAMBERT93_20CM), ("EPSG:4326", WGS84_GRID)])
def test_a_polygon_lands_on_the_ground_coordinates_rasterio_gives_for_its_pixels(
    crs: str, transform: Affine
) -> None:
    window = PixelWindow(224, 448, 256, 256)
    raster, tile = raster_and_tile(crs, transform, window)
    pixels = np.array([(10.0, 20.0), (100.5, 20.0), (100.5, 90.25), (10.0, 120.0)])  # tile (col, row)
    result = polygon_result(pixels, ImageSize(256, 256), "building", "label_polygon", "image")
    task = {
        "id": 5,
        "annotations": [{"id": 9, "completed_by": {"id": 3, "email": "ann@x.org"}, "result": [result]}],
    }
    problems: list[Problem] = []
    (feature,) = task_features(LabelledTask.model_validate(task), tile, raster, {"building": 1}, problems)
    rows, cols = pixels[:, 1] + window.row_off, pixels[:, 0] + window.col_off
    xs, ys = rasterio.transform.xy(transform, rows, cols, offset="ul")
    exterior = np.asarray(feature.geometry.exterior.coords)[:-1]
    assert np.abs(exterior - np.column_stack((xs, ys))).max() < 1e-6 * max(transform.a, 1e-6)
    assert feature.attributes["annotator"] == "ann@x.org"
    assert feature.attributes["class_id"] == 1
    assert not problems
    lons, lats = warp_points(crs, "EPSG:3857", list(xs), list(ys))  # one reprojection, as the export does
    assert np.isfinite(lons).all()
    assert np.isfinite(lats).all()


def test_unsure_regions_are_no_label_feature_and_no_problem() -> None:
    raster, tile = raster_and_tile("EPSG:2154", LAMBERT93_20CM, PixelWindow(0, 0, 256, 256))
    square = np.array([(10.0, 10.0), (50.0, 10.0), (50.0, 50.0), (10.0, 50.0)])
    results = [polygon_result(square, ImageSize(256, 256), label, "label_polygon", "image")
               for label in ("building", UNSURE_LABEL)]  # fmt: skip
    task = LabelledTask.model_validate({"id": 5, "annotations": [{"id": 9, "result": results}]})
    problems: list[Problem] = []
    (feature,) = task_features(task, tile, raster, {"building": 1}, problems)
    assert feature.attributes["class_name"] == "building"
    assert problems == []  # "unsure" marks pixels left out of training: not an unknown class


def test_a_brush_building_cut_by_a_tile_edge_merges_whole() -> None:
    raster, left = raster_and_tile("EPSG:2154", LAMBERT93_20CM, PixelWindow(0, 0, 256, 256))
    _, right = raster_and_tile("EPSG:2154", LAMBERT93_20CM, PixelWindow(256, 0, 256, 256))
    building = np.zeros((100, 512), bool)
    building[40:60, 230:290] = True  # 20 x 60 px across column 256
    features = []
    for tile, cols in ((left, slice(0, 256)), (right, slice(256, 512))):
        mask = np.zeros((256, 256), bool)
        mask[:100] = building[:, cols]
        result = brush_result(mask, "building", "label_brush", "image")
        task = {"id": tile.window.col_off + 1, "annotations": [{"id": 1, "result": [result]}]}
        features += task_features(LabelledTask.model_validate(task), tile, raster, {"building": 1}, [])
    assert len(features) == 2
    (whole,) = merge({1: [f.geometry for f in features]}, {1: "building"})
    assert whole.regions == 2
    assert whole.geometry.area == pytest.approx(20 * 60 * 0.2 * 0.2, rel=1e-9)
    left_x, top_y = LAMBERT93_20CM * (230, 40)
    assert whole.geometry.bounds == pytest.approx(
        (left_x, top_y - 20 * 0.2, left_x + 60 * 0.2, top_y), abs=1e-6
    )


def test_invalid_and_empty_regions_are_repaired_or_reported() -> None:
    raster, tile = raster_and_tile("EPSG:2154", LAMBERT93_20CM, PixelWindow(0, 0, 256, 256))
    size = ImageSize(256, 256)
    bowtie = polygon_result(
        np.array([(0, 0), (100, 100), (100, 0), (0, 100)]), size, "building", "p", "image"
    )
    flat = polygon_result(np.array([(0, 0), (50, 0), (100, 0)]), size, "building", "p", "image")
    forest = polygon_result(np.array([(0, 0), (9, 0), (9, 9)]), size, "forest", "p", "image")
    task = {"id": 5, "annotations": [{"id": 2, "result": [bowtie, flat, forest]}]}
    problems: list[Problem] = []
    (feature,) = task_features(LabelledTask.model_validate(task), tile, raster, {"building": 1}, problems)
    assert feature.geometry.is_valid
    assert "repaired" in str(feature.attributes["note"])
    assert feature.geometry.area == pytest.approx(2 * 2500 * 0.04)
    messages = [str(p) for p in problems]
    assert any("zero area" in m for m in messages)
    assert any("forest" in m for m in messages)


def test_styles_are_qgis_xml_with_every_class() -> None:
    categories = [styles.Category("1", "building", "#e31a1c"), styles.Category("2", "water", "#1f78b4")]
    vector = ET.fromstring(styles.categorized_fill_qml("class_id", categories).split("\n", 1)[1])
    assert [c.get("label") for c in vector.iter("category")] == ["building", "water"]
    raster = ET.fromstring(styles.paletted_raster_qml(categories).split("\n", 1)[1])
    entries = [(e.get("value"), e.get("color")) for e in raster.iter("paletteEntry")]
    assert entries == [("1", "#e31a1c"), ("2", "#1f78b4")]
