"""Label Studio percent coordinates <-> tile pixels <-> world, both ways."""

from __future__ import annotations

import math

import numpy as np
import pytest
import rasterio.transform
from affine import Affine
from hypothesis import assume, given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from rasterio.crs import CRS

from georef.brush import mask_to_rle, rle_to_mask
from georef.errors import InvalidGeometryError
from georef.grid import Grid, PixelWindow
from georef.labelstudio import (
    ImageSize,
    PercentRect,
    brush_result,
    keypoint_result,
    parse_result,
    percent_to_pixel,
    percent_to_world,
    pixel_corners_to_rect,
    pixel_to_percent,
    polygon_result,
    rect_to_pixel_corners,
    rectangle_result,
    region_to_world,
    world_to_percent,
)

percent = st.floats(0, 100, allow_nan=False)
sizes = st.builds(ImageSize, st.integers(1, 4096), st.integers(1, 4096))
RASTER = Grid(4000, 3000, Affine(0.2, 0, 650000, 0, -0.2, 6860000), CRS.from_epsg(2154))
GEOGRAPHIC = Grid(2000, 2000, Affine(1.3e-6, 0, 2.3522, 0, -0.9e-6, 48.8566), CRS.from_epsg(4326))
ROTATED = Grid(
    2000,
    2000,
    Affine.translation(650000, 6860000) @ Affine.rotation(-12) @ Affine.scale(0.5, -0.5),
    CRS.from_epsg(2154),
)


@given(st.lists(st.tuples(percent, percent), min_size=1, max_size=30), sizes)
def test_percent_pixel_round_trip(points: list[tuple[float, float]], size: ImageSize) -> None:
    back = pixel_to_percent(percent_to_pixel(points, size), size)
    np.testing.assert_allclose(back, np.array(points), atol=1e-9)


def test_percent_axes_are_not_swapped() -> None:
    size = ImageSize(width=400, height=100)
    assert percent_to_pixel([(50.0, 10.0)], size).tolist() == [[200.0, 10.0]]


@given(
    st.floats(0, 90),
    st.floats(0, 90),
    st.floats(1, 50),
    st.floats(1, 50),
    st.floats(0, 359.9),
    sizes,
)
def test_rectangle_corners_round_trip(
    x: float, y: float, w: float, h: float, rotation: float, size: ImageSize
) -> None:
    rect = PercentRect(x, y, w, h, rotation)
    back = pixel_corners_to_rect(rect_to_pixel_corners(rect, size), size)
    assert back.x == pytest.approx(x, abs=1e-7)
    assert back.y == pytest.approx(y, abs=1e-7)
    assert back.width == pytest.approx(w, rel=1e-7)
    assert back.height == pytest.approx(h, rel=1e-7)
    angle_diff = (back.rotation - rotation + 180) % 360 - 180
    assert angle_diff == pytest.approx(0, abs=1e-6)


def test_rotation_is_clockwise_on_screen_about_the_top_left_corner() -> None:
    size = ImageSize(100, 100)
    corners = rect_to_pixel_corners(PercentRect(10, 10, 20, 10, rotation=90), size)
    # width now points down the screen (+row), height points left (-col)
    np.testing.assert_allclose(corners, [[10, 10], [10, 30], [0, 30], [0, 10]], atol=1e-9)


def test_non_rectangle_corners_are_refused() -> None:
    with pytest.raises(InvalidGeometryError, match="perpendicular"):
        pixel_corners_to_rect([(0, 0), (10, 0), (12, 5), (2, 5)], ImageSize(100, 100))


@pytest.mark.parametrize("raster", [RASTER, GEOGRAPHIC, ROTATED], ids=["lambert93", "wgs84", "rotated"])
def test_polygon_drawn_on_a_tile_lands_where_rasterio_says(raster: Grid) -> None:
    window = PixelWindow(col_off=448, row_off=896, width=512, height=512)
    tile = raster.window_grid(window)
    rows = np.array([0, 10, 300, 511])
    cols = np.array([5, 400, 511, 0])
    # the centres of tile pixels (row, col), as Label Studio percent
    pixel_centres = np.column_stack([cols + 0.5, rows + 0.5])
    result = polygon_result(pixel_centres, ImageSize.of(tile), "building", "label_polygon", "image")
    region = parse_result(result, ImageSize.of(tile))
    world = region_to_world(region, tile)
    xs, ys = rasterio.transform.xy(raster.transform, rows + window.row_off, cols + window.col_off)
    np.testing.assert_allclose(world[:, 0], xs, rtol=0, atol=1e-6 * max(raster.resolution))
    np.testing.assert_allclose(world[:, 1], ys, rtol=0, atol=1e-6 * max(raster.resolution))
    assert region.labels == ("building",)


def test_polygon_precision_is_within_1e6_crs_units() -> None:
    tile = RASTER.window_grid(PixelWindow(3488, 2488, 512, 512))
    rows, cols = np.array([1, 200, 509]), np.array([3, 77, 250])
    result = polygon_result(np.column_stack([cols, rows]), ImageSize.of(tile), "water", "p", "image")
    world = region_to_world(parse_result(result, ImageSize.of(tile)), tile)
    xs, ys = rasterio.transform.xy(RASTER.transform, rows + 2488, cols + 3488, offset="ul")
    assert np.abs(world[:, 0] - xs).max() < 1e-6
    assert np.abs(world[:, 1] - ys).max() < 1e-6


def test_rectangle_and_keypoint_results_to_world() -> None:
    tile = RASTER.window_grid(PixelWindow(0, 0, 200, 100))
    size = ImageSize.of(tile)
    rect = parse_result(rectangle_result(PercentRect(10, 20, 50, 50), size, "building", "b", "i"), size)
    assert rect.kind == "rectangle"
    np.testing.assert_allclose(region_to_world(rect, tile)[0], [650000 + 20 * 0.2, 6860000 - 20 * 0.2])
    point = parse_result(keypoint_result((100.5, 50.5), size, "water", "k", "i"), size)
    assert point.kind == "keypoint"
    x, y = rasterio.transform.xy(tile.transform, 50, 100)
    np.testing.assert_allclose(region_to_world(point, tile)[0], [x, y], atol=1e-6)


@given(arrays(np.bool_, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_brush_rle_round_trip_is_exact(mask: np.ndarray) -> None:
    height, width = mask.shape
    assert np.array_equal(rle_to_mask(mask_to_rle(mask), width, height), mask)


def test_brush_result_keeps_the_mask_and_orientation() -> None:
    mask = np.zeros((30, 50), dtype=bool)
    mask[2:5, 40:48] = True  # a wide blob near the top-right corner
    size = ImageSize(50, 30)
    region = parse_result(brush_result(mask, "building", "label_brush", "image"), size)
    assert region.kind == "brush"
    assert region.mask is not None
    assert np.array_equal(region.mask, mask)
    with pytest.raises(InvalidGeometryError, match="brush regions are masks"):
        region_to_world(region, RASTER.window_grid(PixelWindow(0, 0, 50, 30)))


def test_brush_rle_of_another_size_is_refused() -> None:
    rle = mask_to_rle(np.ones((10, 10), dtype=bool))
    with pytest.raises(InvalidGeometryError, match="expected 20x10"):
        rle_to_mask(rle, 20, 10)


@pytest.mark.parametrize(
    ("result", "message"),
    [
        ({"type": "ellipselabels", "value": {}}, "unsupported"),
        ({"type": "polygonlabels", "value": {"polygonlabels": ["a"]}}, "malformed"),
        ({"type": "rectanglelabels", "value": {"x": "a", "y": 1, "width": 1, "height": 1}}, "malformed"),
        ({"value": {}}, "malformed Label Studio result"),
        (
            {"type": "keypointlabels", "value": {"x": 1, "y": 1}, "original_width": 99, "original_height": 7},
            "drawn on a 99x7 image",
        ),
    ],
)
def test_malformed_results_raise_clear_errors(result: dict[str, object], message: str) -> None:
    with pytest.raises(InvalidGeometryError, match=message):
        parse_result(result, ImageSize(512, 512))


@given(st.floats(0, 360, exclude_max=True))
def test_rotated_rectangle_corners_are_a_rectangle(rotation: float) -> None:
    corners = rect_to_pixel_corners(PercentRect(40, 40, 10, 20, rotation), ImageSize(300, 200))
    sides = np.roll(corners, -1, axis=0) - corners
    lengths = np.hypot(sides[:, 0], sides[:, 1])
    assume(lengths.min() > 0)
    assert lengths[0] == pytest.approx(30)
    assert lengths[1] == pytest.approx(40)
    assert math.isclose(float(np.dot(sides[0], sides[1])), 0.0, abs_tol=1e-6)


@given(
    st.lists(st.tuples(percent, percent), min_size=1, max_size=20),
    st.sampled_from([RASTER, GEOGRAPHIC, ROTATED]),
)
def test_percent_world_round_trip(points: list[tuple[float, float]], raster: Grid) -> None:
    tile = raster.window_grid(PixelWindow(512, 1024, 512, 256))
    world = percent_to_world(points, tile)
    np.testing.assert_allclose(world_to_percent(world, tile), np.array(points), atol=1e-6)


def test_world_to_percent_of_a_known_ground_point() -> None:
    tile = RASTER.window_grid(PixelWindow(1000, 500, 200, 100))
    x, y = rasterio.transform.xy(RASTER.transform, 500 + 25, 1000 + 50, offset="ul")
    np.testing.assert_allclose(world_to_percent([(x, y)], tile), [[25.0, 25.0]], atol=1e-7)
