"""Tiling plans: full coverage, no gaps, exact overlap, tiles inside the raster."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from georef.errors import InvalidGeometryError
from georef.tiling import axis_starts, plan_tiles


@st.composite
def layouts(draw: st.DrawFn) -> tuple[int, int, int, int]:
    size = draw(st.integers(8, 96))
    overlap = draw(st.integers(0, size - 1))
    width = draw(st.integers(1, 400))
    height = draw(st.integers(1, 400))
    return width, height, size, overlap


@given(layouts())
def test_every_pixel_is_in_a_tile_and_tiles_stay_inside(layout: tuple[int, int, int, int]) -> None:
    width, height, size, overlap = layout
    covered = np.zeros((height, width), dtype=np.int32)
    for plan in plan_tiles(width, height, size, overlap):
        w = plan.window
        assert w.col_off >= 0
        assert w.col_end <= width
        assert w.row_off >= 0
        assert w.row_end <= height
        assert (w.width, w.height) == (min(size, width), min(size, height))
        covered[w.row_off : w.row_end, w.col_off : w.col_end] += 1
    assert covered.min() >= 1


@given(layouts())
def test_overlap_is_exact_except_the_edge_tile(layout: tuple[int, int, int, int]) -> None:
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
    assert axis_starts(1024, 512, 64) == [0, 448, 512]
    assert axis_starts(1024, 512, 0) == [0, 512]
    assert axis_starts(300, 512, 64) == [0]
    plans = plan_tiles(1024, 300, 512, 64)
    assert [(p.tile_row, p.tile_col) for p in plans] == [(0, 0), (0, 1), (0, 2)]
    assert plans[1].window.col_off == 448
    assert plans[1].window.height == 300


@pytest.mark.parametrize(("size", "overlap"), [(0, 0), (512, 512), (512, -1)])
def test_invalid_parameters_are_refused(size: int, overlap: int) -> None:
    with pytest.raises(InvalidGeometryError):
        plan_tiles(1000, 1000, size, overlap)
