"""Grid and window values: pixel <-> world against rasterio's own transforms."""

from __future__ import annotations

import numpy as np
import pytest
import rasterio.transform
from affine import Affine
from hypothesis import given
from hypothesis import strategies as st
from rasterio.crs import CRS

from georef.errors import InvalidGeometryError
from georef.grid import (
    Grid,
    PixelWindow,
    crs_from_text,
    crs_to_text,
    guard_transform,
    transform_from_list,
    transform_to_list,
)

LAMBERT = CRS.from_epsg(2154)
NORTH_UP = Affine(0.2, 0.0, 650000.0, 0.0, -0.2, 6860000.0)
ROTATED = Affine.translation(650000, 6860000) @ Affine.rotation(30) @ Affine.scale(0.5, -0.5)

coords = st.floats(min_value=-5000, max_value=5000, allow_nan=False)
transforms = st.builds(
    lambda angle, sx, sy, shear: (
        Affine.translation(650000, 6860000)
        @ Affine.rotation(angle)
        @ Affine.shear(shear, 0)
        @ Affine.scale(sx, -sy)
    ),
    st.floats(-180, 180),
    st.floats(0.05, 50),
    st.floats(0.05, 50),
    st.floats(-20, 20),
)


def test_window_rejects_empty_size() -> None:
    with pytest.raises(InvalidGeometryError, match="positive size"):
        PixelWindow(0, 0, 0, 10)


def test_window_intersection() -> None:
    a = PixelWindow(0, 0, 512, 512)
    b = PixelWindow(448, 100, 512, 512)
    assert a.intersection(b) == PixelWindow(448, 100, 64, 412)
    assert a.intersection(PixelWindow(512, 0, 10, 10)) is None
    assert a.to_rasterio().col_off == 0


def test_guard_transform_refuses_gdal_tuple_and_singular() -> None:
    with pytest.raises(InvalidGeometryError, match="GDAL"):
        guard_transform((650000.0, 0.2, 0.0, 6860000.0, 0.0, -0.2))
    with pytest.raises(InvalidGeometryError, match="singular"):
        guard_transform(Affine(0.0, 0.0, 1.0, 0.0, 0.0, 1.0))


@pytest.mark.parametrize("transform", [NORTH_UP, ROTATED])
def test_pixel_to_world_matches_rasterio_xy(transform: Affine) -> None:
    grid = Grid(1000, 800, transform, LAMBERT)
    rows = np.array([0, 10, 799, 37])
    cols = np.array([0, 999, 5, 512])
    expected_x, expected_y = rasterio.transform.xy(transform, rows, cols, offset="center")
    world = grid.pixel_to_world(np.column_stack([cols + 0.5, rows + 0.5]))
    np.testing.assert_allclose(world[:, 0], expected_x, rtol=0, atol=1e-6)
    np.testing.assert_allclose(world[:, 1], expected_y, rtol=0, atol=1e-6)


def test_world_to_pixel_matches_rasterio_rowcol() -> None:
    grid = Grid(1000, 800, NORTH_UP, LAMBERT)
    x, y = rasterio.transform.xy(NORTH_UP, [12, 700], [3, 999])
    pixel = grid.world_to_pixel(np.column_stack([x, y]))
    np.testing.assert_allclose(np.floor(pixel[:, 1]), [12, 700])
    np.testing.assert_allclose(np.floor(pixel[:, 0]), [3, 999])


@given(transforms, st.lists(st.tuples(coords, coords), min_size=1, max_size=20))
def test_pixel_world_round_trip(transform: Affine, points: list[tuple[float, float]]) -> None:
    grid = Grid(100, 100, transform, LAMBERT)
    back = grid.world_to_pixel(grid.pixel_to_world(points))
    np.testing.assert_allclose(back, np.array(points), atol=1e-5)


@given(transforms, st.integers(0, 5000), st.integers(0, 5000))
def test_window_grid_is_the_parent_grid_shifted(transform: Affine, col_off: int, row_off: int) -> None:
    parent = Grid(10000, 10000, transform, LAMBERT)
    window = PixelWindow(col_off, row_off, 512, 256)
    tile = parent.window_grid(window)
    assert (tile.width, tile.height) == (512, 256)
    local = np.array([[0.0, 0.0], [512.0, 256.0], [17.5, 3.25]])
    expected = parent.pixel_to_world(local + np.array([col_off, row_off]))
    np.testing.assert_allclose(tile.pixel_to_world(local), expected, rtol=1e-12, atol=1e-6)


def test_one_pixel_shift_is_detected() -> None:
    grid = Grid(100, 100, NORTH_UP, LAMBERT)
    tile = grid.window_grid(PixelWindow(10, 20, 50, 50))
    shifted = grid.window_grid(PixelWindow(11, 20, 50, 50))
    delta = shifted.pixel_to_world([(0, 0)]) - tile.pixel_to_world([(0, 0)])
    np.testing.assert_allclose(delta, [[0.2, 0.0]], atol=1e-9)


def test_resolution_and_bounds() -> None:
    grid = Grid(300, 200, NORTH_UP, LAMBERT)
    assert grid.resolution == pytest.approx((0.2, 0.2))
    assert grid.bounds() == pytest.approx((650000.0, 6859960.0, 650060.0, 6860000.0))
    assert grid.is_rectilinear
    assert not Grid(10, 10, ROTATED, LAMBERT).is_rectilinear


def test_transform_list_round_trip_keeps_affine_order() -> None:
    coeffs = transform_to_list(NORTH_UP)
    assert coeffs == [0.2, 0.0, 650000.0, 0.0, -0.2, 6860000.0]
    assert transform_from_list(coeffs) == NORTH_UP
    with pytest.raises(InvalidGeometryError, match="6 coefficients"):
        transform_from_list([1.0, 2.0])


@pytest.mark.parametrize("code", [2154, 4326, 3857, 32618])
def test_crs_text_round_trip(code: int) -> None:
    crs = CRS.from_epsg(code)
    assert crs_to_text(crs) == f"EPSG:{code}"
    assert crs_from_text(crs_to_text(crs)) == crs


def test_crs_without_epsg_code_is_kept_as_wkt() -> None:
    custom = CRS.from_proj4("+proj=tmerc +lat_0=0 +lon_0=3.3 +k=0.9996 +x_0=500000 +y_0=0 +ellps=GRS80")
    text = crs_to_text(custom)
    assert not text.startswith("EPSG:")
    assert crs_from_text(text) == custom
    with pytest.raises(InvalidGeometryError, match="not a valid CRS"):
        crs_from_text("EPSG:999999999")
