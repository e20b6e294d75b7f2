"""predictions.gpkg: the class-id raster vectorised per class, merged across tile and block seams."""

from __future__ import annotations

import functools
import math
import pickle
import subprocess
from pathlib import Path

import geopandas as gpd
import numpy as np
import numpy.typing as npt
import pyogrio
import pytest
import rasterio
import rasterio.features
import shapely
import shapely.affinity
import shapely.geometry
from affine import Affine
from rasterio.crs import CRS
from shapely.geometry import Polygon

from exporters import rasters
from exporters.errors import ExportInputError
from exporters.mosaic import ARGMAX_NODATA, MosaicTile, plan_blocks
from exporters.vectors import (
    LAYER,
    VectorOptions,
    block_windows,
    right_angled,
    vector_blocks,
    vectorise_block,
    write_predictions_gpkg,
)
from exporters.vectors import _job as vector_job
from geolabel.compute import InProcess
from georef.grid import Grid, PixelWindow
from tests.conftest import LAMBERT93_20CM, require_gdal_tools
from trainer.predictions import PredictionStore

L93 = CRS.from_epsg(2154)
UTM31 = CRS.from_epsg(32631)
# 0.5 x 0.3 m pixels turned by 30 degrees (a rotated geotransform, as some scanned products have; b != d,
# so a swapped axis shows)
ROTATED = Affine.translation(448000.0, 5411000.0) @ Affine.rotation(30) @ Affine.scale(0.5, -0.3)
BANDS = [rasters.Band(0, "background", "#000000"), rasters.Band(1, "building", "#e31a1c"),
         rasters.Band(2, "water", "#1f78b4")]  # fmt: skip


def write_rasters(folder: Path, ids: npt.NDArray[np.uint8], proba: npt.NDArray[np.uint8] | None = None,
                  transform: Affine = LAMBERT93_20CM, crs: CRS = L93) -> tuple[Path, Path]:  # fmt: skip
    """The two work GeoTIFFs as write_mosaic leaves them: class ids (nodata 255), 0-255 bands with a mask."""
    if proba is None:
        proba = np.stack([np.where(ids == b.class_id, 200, 30) for b in BANDS]).astype(np.uint8)
    profile = {"driver": "GTiff", "width": ids.shape[1], "height": ids.shape[0], "crs": crs,
               "transform": transform, "dtype": "uint8", "tiled": True,
               "blockxsize": 16, "blockysize": 16}  # fmt: skip
    argmax, probabilities = folder / "argmax.tif", folder / "proba.tif"
    with rasterio.open(argmax, "w", count=1, nodata=ARGMAX_NODATA, **profile) as dst:
        dst.write(ids.astype(np.uint8), 1)
    with rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True), rasterio.open(probabilities, "w", count=len(BANDS),
                                                                   **profile) as dst:  # fmt: skip
        dst.write(proba)
        dst.write_mask(((ids != ARGMAX_NODATA) * 255).astype(np.uint8))
    return argmax, probabilities


def vectorise(folder: Path, ids: npt.NDArray[np.uint8], options: VectorOptions | None = None,
              block_size: int = 16, **raster: object) -> tuple[gpd.GeoDataFrame, list[str]]:  # fmt: skip
    folder.mkdir(exist_ok=True)
    argmax, proba = write_rasters(folder, ids, **raster)  # type: ignore[arg-type]
    target = folder / "predictions.gpkg"
    report = write_predictions_gpkg(argmax, proba, BANDS, target, options or VectorOptions(),
                                    block_size=block_size)  # fmt: skip
    frame = gpd.read_file(target, layer=LAYER)
    assert report.features == len(frame)
    assert sum(report.per_class.values()) == len(frame)
    return frame, report.notes


def in_pixels(geometry: Polygon, transform: Affine) -> Polygon:
    """A world polygon in the grid's pixel coordinates (``~transform``), rounded to whole pixel corners."""
    inverse = ~transform
    pixels = shapely.transform(geometry, lambda xy: np.array([inverse @ (x, y) for x, y in xy]))
    corners = shapely.get_coordinates(pixels)
    assert np.abs(corners - np.round(corners)).max() < 1e-6  # every vertex is a pixel corner
    return shapely.set_precision(pixels, 1.0)


def burnt(geometries: list[Polygon], transform: Affine, shape: tuple[int, ...]) -> npt.NDArray[np.bool_]:
    """The pixels the polygons cover, back on the grid."""
    pixels = [in_pixels(g, transform) for g in geometries]
    mask = rasterio.features.rasterize(pixels, out_shape=shape, fill=0, default_value=1)
    return np.asarray(mask, dtype=bool)


# --- seams --------------------------------------------------------------------------------------


def test_a_building_across_the_seam_of_two_tiles_is_one_polygon_with_exact_counts(tmp_path: Path) -> None:
    out = Grid(64, 40, LAMBERT93_20CM, L93)
    tiles = [MosaicTile(f"t{c}", out.window_grid(PixelWindow(c, 0, 32, 40)), 0) for c in (0, 32)]
    building = np.zeros((40, 64), bool)
    building[10:22, 24:41] = True  # across the tiles' seam at column 32
    building[22:30, 24:28] = True  # an L: its foot only in the left tile
    level = np.random.default_rng(0).uniform(0.72, 0.99, size=(40, 64))
    store = PredictionStore(tmp_path / "store", "v1")
    stored = np.zeros((40, 64))  # the building probability (0-255) each pixel was given
    for tile in tiles:
        offset = out.offset_of(tile.grid)
        assert offset is not None
        part = (slice(None), slice(offset[0], offset[0] + 32))
        one = np.where(building[part], level[part], 0.05)
        store.save(tile.tile_id, np.stack([1 - one, one * 0.7, one * 0.3]).astype(np.float32),
                   np.ones((40, 32), bool))  # fmt: skip
        stored[part] = store.load(tile.tile_id).proba[1]
    work = tmp_path / "work"
    work.mkdir()
    files = rasters.write_mosaic(out, plan_blocks(out, tiles, size=32), store.load, BANDS, work)
    expected_mean = stored[building].sum() / (255.0 * building.sum())
    assert len(np.unique(stored[building])) > 20  # a mean that a miscount would change
    for block_size in (32, 16, 7):  # the tile seam is a block seam; then blocks cut the building in pieces
        target = tmp_path / f"predictions{block_size}.gpkg"
        report = write_predictions_gpkg(files.argmax, files.proba, BANDS, target, VectorOptions(),
                                        block_size=block_size)  # fmt: skip
        frame = gpd.read_file(target, layer=LAYER)
        assert len(frame) == 1 == report.features
        (feature,) = frame.itertuples()
        assert (feature.class_id, feature.class_name) == (1, "building")
        assert feature.pixels == building.sum()
        assert feature.mean_probability == pytest.approx(expected_mean, rel=1e-12)
        assert feature.area == pytest.approx(building.sum() * 0.04, rel=1e-9)
        assert (burnt([feature.geometry], out.transform, (40, 64)) == building).all()
        assert len(feature.geometry.exterior.coords) == 7  # an L: no vertex left on a seam


def test_a_ring_cut_by_four_blocks_is_one_polygon_with_its_hole_and_corner_touches_stay_apart(
    tmp_path: Path,
) -> None:
    ids = np.zeros((32, 32), np.uint8)
    ids[8:24, 8:24] = 1
    ids[12:20, 12:20] = 0  # the hole is centred on the corner where four blocks meet
    ids[24:28, 4:8] = 1  # meets the ring only at a corner: another region (4-connectivity)
    ids[:, 30:] = ARGMAX_NODATA
    frame, _ = vectorise(tmp_path, ids, block_size=16)
    frame = frame.sort_values("pixels", ignore_index=True)
    assert list(frame.pixels) == [16, 16 * 16 - 8 * 8]
    ring = frame.geometry[1]
    assert len(ring.interiors) == 1
    assert ring.area == pytest.approx((256 - 64) * 0.04, rel=1e-9)
    assert (burnt(list(frame.geometry), LAMBERT93_20CM, (32, 32)) == (ids == 1)).all()


# --- exact geometry -----------------------------------------------------------------------------


@pytest.mark.parametrize(("transform", "crs"), [(LAMBERT93_20CM, L93), (ROTATED, UTM31)])
def test_vertices_are_the_pixel_corners_of_the_grid_whatever_its_orientation(
    tmp_path: Path, transform: Affine, crs: CRS
) -> None:
    ids = np.zeros((24, 40), np.uint8)
    ids[3, 5] = 1  # one pixel: row 3, column 5
    ids[10:20, 2:30] = 2
    ids[12:16, 20:26] = 1  # an island of building in the water: the water has a hole
    ids[0:2, 30:40] = 2
    frame, _ = vectorise(tmp_path, ids, block_size=16, transform=transform, crs=crs)
    assert pyogrio.read_info(tmp_path / "predictions.gpkg", layer=LAYER)["crs"] == crs.to_string()
    pixel = frame[frame.pixels == 1].geometry.iloc[0]
    corners = {transform @ (c, r) for c, r in [(5, 3), (6, 3), (6, 4), (5, 4)]}
    assert set(pixel.exterior.coords) == corners  # bit-identical; a shift or a swapped axis breaks it
    for class_id in (1, 2):
        features = frame[frame.class_id == class_id]
        assert (burnt(list(features.geometry), transform, ids.shape) == (ids == class_id)).all()
        for feature in features.itertuples():
            assert feature.area == pytest.approx(feature.pixels * abs(transform.determinant), rel=1e-9)
            assert feature.mean_probability == pytest.approx(200 / 255, rel=1e-12)
    water = frame[frame.class_id == 2].sort_values("pixels").geometry.iloc[-1]
    assert len(water.interiors) == 1
    assert not frame.regularized.any()


# --- options ------------------------------------------------------------------------------------


def test_min_area_drops_small_polygons_after_merging(tmp_path: Path) -> None:
    ids = np.zeros((32, 32), np.uint8)
    ids[2:4, 2:4] = 1  # 4 px = 0.16 m2
    ids[14:18, 10:20] = 1  # 40 px = 1.6 m2, but 20 px on each side of the block seam at column 16
    frame, notes = vectorise(tmp_path, ids, VectorOptions(min_area=1.0), block_size=16)
    assert list(frame.pixels) == [40]
    assert any("1 prediction polygons smaller than min_area 1" in n for n in notes)


def test_simplify_keeps_neighbours_sharing_one_edge_without_gaps_or_overlaps(tmp_path: Path) -> None:
    rows, cols = np.mgrid[0:48, 0:48]
    ids = np.zeros((48, 48), np.uint8)
    ids[(rows - 24) ** 2 + (cols - 20) ** 2 < 15**2] = 1  # a disc of building
    ids[(ids == 0) & (cols > 24) & (rows > 6) & (rows < 44)] = 2  # water around its right half
    exact, _ = vectorise(tmp_path / "exact", ids, block_size=16)
    simple, _ = vectorise(tmp_path / "simple", ids, VectorOptions(simplify=0.5), block_size=16)
    assert len(simple) == len(exact) == 2
    count = {g: len(shapely.get_coordinates(g)) for g in [*exact.geometry, *simple.geometry]}
    for before, after in zip(exact.sort_values("class_id").geometry, simple.sort_values("class_id").geometry,
                             strict=True):  # fmt: skip
        assert count[after] < count[before] / 2
        assert after.area == pytest.approx(before.area, rel=0.05)
        assert shapely.hausdorff_distance(after, before) <= 0.5 + 0.2  # tolerance, plus a pixel's corner cut
    assert shapely.coverage_is_valid(list(simple.geometry))  # the shared edge is one edge: no gap, no overlap
    shared = simple.geometry[0].intersection(simple.geometry[1])
    assert shared.length > 5 and shared.area == 0  # noqa: PT018
    assert simple.pixels.tolist() == exact.pixels.tolist()  # counts stay those of the pixels


def test_a_neighbour_of_a_region_that_crosses_a_row_of_blocks_is_simplified_with_it(tmp_path: Path) -> None:
    rows, cols = np.mgrid[0:48, 0:48]
    ids = np.zeros((48, 48), np.uint8)
    ids[(rows - 16) ** 2 + (cols - 10) ** 2 < 9**2] = 1  # building across the row seam at 16
    pond = (rows - 16) ** 2 + (cols - 10) ** 2 < 13**2
    ids[(ids == 0) & pond & (rows >= 1) & (rows < 14) & (cols >= 1) & (cols < 15)] = (
        2  # water: top blocks only
    )
    simple, _ = vectorise(tmp_path / "simple", ids, VectorOptions(simplify=0.6), block_size=16)
    assert sorted(simple["class_id"]) == [1, 2]
    # finished after a row of blocks with the building it touches: still one shared edge
    assert shapely.coverage_is_valid(list(simple.geometry))
    shared = simple.geometry[0].intersection(simple.geometry[1])
    assert shared.length > 10 * 0.2  # more than 10 pixels of 20 cm
    assert shared.area == 0


def rotated_l(size: int, angle: float) -> npt.NDArray[np.uint8]:
    """An L-shaped building (arms 24 and 12 px wide) turned by ``angle`` degrees, rasterised."""
    outline = Polygon([(0, 0), (30, 0), (30, 12), (12, 12), (12, 26), (0, 26)])
    turned = shapely.affinity.rotate(outline, angle, origin=(15, 13))
    placed = shapely.affinity.translate(turned, size / 2 - 15, size / 2 - 13)
    mask = rasterio.features.rasterize([placed], out_shape=(size, size), fill=0, default_value=1)
    return np.asarray(mask, dtype=np.uint8)


def right_angles_only(polygon: Polygon) -> bool:
    coords = np.asarray(polygon.exterior.coords)[:-1]
    before = coords - np.roll(coords, 1, axis=0)
    after = np.roll(coords, -1, axis=0) - coords
    cosines = (before * after).sum(axis=1) / np.hypot(*before.T) / np.hypot(*after.T)
    return bool(np.abs(cosines).max() < 1e-9)


def test_regularize_gives_named_classes_right_angles_and_leaves_the_others(tmp_path: Path) -> None:
    building = rotated_l(48, 30)
    ids = np.concatenate([building, np.where(building == 1, 2, 0)], axis=1)  # the same L as water beside it
    frame, notes = vectorise(tmp_path, ids, VectorOptions(regularize=frozenset({"building"})), block_size=32)
    assert len(frame) == 2
    square = frame[frame.class_id == 1].iloc[0]
    water = frame[frame.class_id == 2].iloc[0]
    assert bool(square.regularized)
    assert not bool(water.regularized)
    assert right_angles_only(square.geometry)
    assert len(square.geometry.exterior.coords) == 7  # six corners: an L
    assert square.area == pytest.approx(square.pixels * 0.04, rel=0.1)
    edge = np.diff(np.asarray(square.geometry.exterior.coords)[:2], axis=0)[0]
    angle = math.degrees(math.atan2(edge[1], edge[0])) % 90  # world y is north: the grid turns it to -30
    assert min(abs(angle - 60), abs(angle - 30)) < 3
    assert len(water.geometry.exterior.coords) > 20  # the exact staircase of its pixels, untouched
    assert (burnt([water.geometry], LAMBERT93_20CM, ids.shape) == (ids == 2)).all()
    assert notes == []


def test_bad_options_and_inputs_are_clear_errors(tmp_path: Path) -> None:
    with pytest.raises(ExportInputError, match="min_area must be a finite number >= 0"):
        VectorOptions(min_area=-1)
    with pytest.raises(ExportInputError, match="simplify"):
        VectorOptions(simplify=math.nan)
    argmax, proba = write_rasters(tmp_path, np.zeros((8, 8), np.uint8))
    with pytest.raises(ExportInputError, match=r"cannot regularise roads.*classes: building, water"):
        write_predictions_gpkg(argmax, proba, BANDS, tmp_path / "p.gpkg",
                               VectorOptions(regularize=frozenset({"roads"})))  # fmt: skip
    with pytest.raises(ExportInputError, match="has 3 bands but 2 classes"):
        write_predictions_gpkg(argmax, proba, BANDS[:2], tmp_path / "p.gpkg", VectorOptions())
    with pytest.raises(ExportInputError, match="cannot read the prediction rasters"):
        write_predictions_gpkg(tmp_path / "none.tif", proba, BANDS, tmp_path / "p.gpkg", VectorOptions())


# --- engines and outside judges -----------------------------------------------------------------


def test_blocks_run_on_threads_or_after_pickling_give_the_same_layer(tmp_path: Path) -> None:
    ids = rotated_l(64, 10)
    ids[40:60, 5:50] = 2
    argmax, proba = write_rasters(tmp_path, ids)
    assert vector_blocks(argmax, 16) == 16 == len(block_windows(64, 64, 16))
    steps: list[int] = []
    one = write_predictions_gpkg(argmax, proba, BANDS, tmp_path / "one.gpkg", VectorOptions(simplify=0.3),
                                 block_size=16)  # fmt: skip
    two = write_predictions_gpkg(argmax, proba, BANDS, tmp_path / "two.gpkg", VectorOptions(simplify=0.3),
                                 InProcess(2), steps.append, block_size=16)  # fmt: skip
    assert steps == [1] * 16
    assert one.per_class == two.per_class == {"building": 1, "water": 1}
    first, second = (gpd.read_file(tmp_path / n, layer=LAYER) for n in ("one.gpkg", "two.gpkg"))
    assert all(a.equals_exact(b, 0) for a, b in zip(first.geometry, second.geometry, strict=True))
    job, _ = vector_job(argmax, proba, BANDS, VectorOptions())
    block = functools.partial(vectorise_block, job)
    window = PixelWindow(16, 16, 16, 16)
    assert pickle.loads(pickle.dumps(block))(window) == block(window)  # what a Dask worker receives


def test_ogrinfo_reads_the_layer_and_its_default_qgis_style(tmp_path: Path) -> None:
    require_gdal_tools()
    ids = np.zeros((20, 20), np.uint8)
    ids[2:6, 2:6] = 1
    ids[10:15, 3:18] = 2
    vectorise(tmp_path, ids)
    path = str(tmp_path / "predictions.gpkg")
    summary = subprocess.run(
        ["ogrinfo", "-ro", "-so", path, LAYER], capture_output=True, text=True, check=True
    )
    assert "Feature Count: 2" in summary.stdout
    assert "Geometry: Polygon" in summary.stdout
    for field in ("class_id: Integer64", "class_name: String", "mean_probability: Real", "pixels: Integer64",
                  "area: Real", "regularized: Integer(Boolean)"):  # fmt: skip
        assert field in summary.stdout
    assert "2154" in summary.stdout
    styles = subprocess.run(["ogrinfo", "-ro", path, "-sql",
                             "SELECT f_table_name, styleName, useAsDefault, styleQML FROM layer_styles"],
                            capture_output=True, text=True, check=True)  # fmt: skip
    assert "f_table_name (String) = predictions" in styles.stdout
    assert "useAsDefault (Integer(Boolean)) = 1" in styles.stdout
    assert 'attr="class_id"' in styles.stdout and 'label="water"' in styles.stdout  # noqa: PT018
    assert 'label="background"' not in styles.stdout


@pytest.mark.parametrize("scale", [0.5, 1.0, 3.0])
@pytest.mark.parametrize("angle", [0, 13, 30, 45, 62, 80])
def test_right_angled_recovers_a_rasterised_l_within_a_pixel(scale: float, angle: float) -> None:
    outline = shapely.affinity.scale(Polygon([(0, 0), (30, 0), (30, 12), (12, 12), (12, 26), (0, 26)]),
                                     scale, scale, origin=(0, 0))  # fmt: skip
    centre = outline.centroid
    turned = shapely.affinity.rotate(outline, angle, origin=centre)
    truth = shapely.affinity.translate(turned, 70 - centre.x, 70 - centre.y)
    ids = rasterio.features.rasterize([truth], out_shape=(140, 140), fill=0, default_value=1).astype(np.uint8)
    ((staircase, _),) = [
        (shapely.geometry.shape(g), v) for g, v in rasterio.features.shapes(ids, mask=ids > 0)
    ]
    square = right_angled(staircase, math.sqrt(2))
    assert square is not None
    assert len(square.exterior.coords) == 7
    assert right_angles_only(square)
    assert shapely.hausdorff_distance(square, truth) < 1.5  # pixels


def test_shaping_in_a_geographic_crs_says_its_units_are_degrees(tmp_path: Path) -> None:
    ids = np.zeros((16, 16), np.uint8)
    ids[4:12, 4:12] = 1
    degrees = Affine(1e-5, 0.0, 2.35, 0.0, -1e-5, 48.85)
    _, exact = vectorise(tmp_path / "exact", ids, transform=degrees, crs=CRS.from_epsg(4326))
    frame, shaped = vectorise(tmp_path / "shaped", ids, VectorOptions(min_area=1e-12), transform=degrees,
                              crs=CRS.from_epsg(4326))  # fmt: skip
    assert exact == []
    assert len(frame) == 1
    assert any("geographic CRS (EPSG:4326): min_area and simplify were taken in degrees" in n for n in shaped)
