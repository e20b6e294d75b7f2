"""Tiling plans: full coverage, no gaps, exact overlap, tiles inside the raster."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from affine import Affine
from hypothesis import given
from hypothesis import strategies as st
from rasterio.windows import Window
from rasterio.windows import transform as window_transform

from georef.errors import InvalidGeometryError
from georef.grid import Grid
from georef.tiling import TilingPlan, axis_spans, axis_starts, plan_tiles


@st.composite
def layouts(draw: st.DrawFn) -> tuple[int, int, int, int]:
    size = draw(st.integers(8, 96))
    overlap = draw(st.integers(0, size - 1))
    width = draw(st.integers(1, 400))
    height = draw(st.integers(1, 400))
    return width, height, size, overlap


@given(layouts(), st.sampled_from(TilingPlan))
def test_every_pixel_is_in_a_tile_and_tiles_stay_inside(
    layout: tuple[int, int, int, int], plan: TilingPlan
) -> None:
    width, height, size, overlap = layout
    covered = np.zeros((height, width), dtype=np.int32)
    for tile in plan_tiles(width, height, size, overlap, plan):
        w = tile.window
        assert w.col_off >= 0
        assert w.col_end <= width
        assert w.row_off >= 0
        assert w.row_end <= height
        assert w.width <= size
        assert w.height <= size
        if plan is TilingPlan.SHIFTED:
            assert (w.width, w.height) == (min(size, width), min(size, height))
        covered[w.row_off : w.row_end, w.col_off : w.col_end] += 1
    assert covered.min() >= 1


@given(layouts())
def test_new_plan_overlaps_by_the_configured_overlap_everywhere(layout: tuple[int, int, int, int]) -> None:
    width, _, size, overlap = layout
    spans = axis_spans(width, size, overlap, TilingPlan.EXACT)
    starts = [start for start, _ in spans]
    assert starts[0] == 0
    assert all(b - a == size - overlap for a, b in itertools.pairwise(starts))
    assert all(length == size for _, length in spans[:-1])
    last_start, last_length = spans[-1]
    assert last_start + last_length == width  # the last tile ends at the raster's edge
    shared = [a + la - b for (a, la), (b, _) in itertools.pairwise(spans)]
    assert all(s == overlap for s in shared)  # the edge tile too: no ground shown more often than needed
    assert len(spans) == 1 or spans[-2][0] + size < width  # no tile adds nothing new


@given(layouts())
def test_shifted_plan_overlap_is_exact_except_the_edge_tile(layout: tuple[int, int, int, int]) -> None:
    width, _, size, overlap = layout
    starts = axis_starts(width, size, overlap)
    assert starts[0] == 0
    assert starts == sorted(set(starts))
    if width <= size:
        assert starts == [0]
        return
    shared = [a + size - b for a, b in itertools.pairwise(starts)]
    assert all(s == overlap for s in shared[:-1])
    assert overlap <= shared[-1] < size
    assert starts[-1] + size == width


def test_known_layout_of_a_1024_raster() -> None:
    """The issue's example: 512/64 on 1024 px gave 0, 448, 512 (87.5 % overlap); now 0, 448, 896."""
    assert axis_spans(1024, 512, 64, TilingPlan.EXACT) == [(0, 512), (448, 512), (896, 128)]
    assert axis_spans(1024, 512, 64, TilingPlan.SHIFTED) == [(0, 512), (448, 512), (512, 512)]
    assert axis_starts(1024, 512, 64) == [0, 448, 512]
    assert axis_spans(1024, 512, 0, TilingPlan.EXACT) == [(0, 512), (512, 512)]
    assert axis_spans(300, 512, 64, TilingPlan.EXACT) == [(0, 300)]
    plans = plan_tiles(1024, 300, 512, 64)
    assert [(p.tile_row, p.tile_col) for p in plans] == [(0, 0), (0, 1), (0, 2)]
    assert [p.window.col_off for p in plans] == [0, 448, 896]
    assert [p.window.width for p in plans] == [512, 512, 128]
    assert {p.window.height for p in plans} == {300}


def test_edge_tile_transforms_equal_rasterio_window_transform() -> None:
    transform = Affine.rotation(30) @ Affine(0.2, 0.0, 651234.5, 0.0, -0.2, 6862123.25)
    grid = Grid(1000, 700, transform, "EPSG:2154")
    for plan in plan_tiles(grid.width, grid.height, 256, 32):
        w = plan.window
        expected = window_transform(Window(w.col_off, w.row_off, w.width, w.height), transform)
        tile = grid.window_grid(w)
        assert (tile.width, tile.height) == (w.width, w.height)
        assert np.allclose(tuple(tile.transform)[:6], tuple(expected)[:6], rtol=0, atol=1e-12)


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (512, 512), (512, -1)])
def test_invalid_parameters_are_refused(size: int, overlap: int) -> None:
    with pytest.raises(InvalidGeometryError):
        plan_tiles(1000, 1000, size, overlap)
