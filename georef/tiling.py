"""Tiling plans: cover a raster with tiles of side S that overlap by O.

Two plans exist; the registry stores which one cut each raster, so a resumed or
repeated import of a raster keeps the tiles it was first given.

- :attr:`TilingPlan.EXACT` (every new import): tiles start every ``S - O``
  pixels and the last tile along an axis is cut short at the raster's edge, so
  neighbours overlap by exactly ``O`` everywhere and no ground is shown more
  often than the overlap requires. Edge tiles are smaller (not square); every
  tile carries only real pixels and its exact transform.
- :attr:`TilingPlan.SHIFTED` (imports made before; kept for them): the last
  tile is shifted inside, flush against the edge, so every tile is ``S`` wide
  but the edge tile overlaps its neighbour by up to ``S - 1`` pixels (a 1024 px
  raster cut 512/64 gets tiles at 0, 448 and 512: 87.5 % overlap).

A raster smaller than ``S`` along an axis gets one tile of the raster's own
length along it, under both plans.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

from georef.errors import InvalidGeometryError
from georef.grid import PixelWindow


class TilingPlan(StrEnum):
    """How the tiles of a raster were laid out (stored per raster in the registry)."""

    SHIFTED = "shifted-inside-v1"  # edge tiles shifted inside: square, overlapping their neighbour more
    EXACT = "exact-overlap-v2"  # edge tiles cut short: every overlap is exactly the configured one


@dataclass(frozen=True, slots=True)
class TilePlan:
    """One planned tile: its position in the tile matrix and its pixel window."""

    tile_row: int
    tile_col: int
    window: PixelWindow


def _check(length: int, size: int, overlap: int) -> None:
    if length <= 0 or size <= 0:
        raise InvalidGeometryError(f"length and tile size must be positive, got {length} and {size}")
    if not 0 <= overlap < size:
        raise InvalidGeometryError(f"overlap must be in [0, {size}), got {overlap}")


def axis_starts(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets of the shifted-inside plan's tiles along one axis of ``length`` pixels.

    Raises:
        InvalidGeometryError: if ``length`` or ``size`` is not positive, or
            ``overlap`` is not in ``[0, size)``.
    """
    _check(length, size, overlap)
    if length <= size:
        return [0]
    stride = size - overlap
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def axis_spans(length: int, size: int, overlap: int, plan: TilingPlan) -> list[tuple[int, int]]:
    """``(start, length)`` of each tile along one axis of ``length`` pixels under ``plan``.

    Under :attr:`TilingPlan.EXACT` consecutive starts differ by ``size - overlap`` and the last
    tile ends at the raster's edge, overlapping its neighbour by exactly ``overlap``.

    Raises:
        InvalidGeometryError: on non-positive sizes or an overlap outside ``[0, size)``.
    """
    _check(length, size, overlap)
    if plan is TilingPlan.SHIFTED:
        return [(start, min(size, length)) for start in axis_starts(length, size, overlap)]
    stride = size - overlap
    spans = [(0, min(size, length))]
    while spans[-1][0] + size < length:
        start = spans[-1][0] + stride
        spans.append((start, min(size, length - start)))
    return spans


def plan_tiles(
    width: int, height: int, size: int, overlap: int, plan: TilingPlan = TilingPlan.EXACT
) -> list[TilePlan]:
    """Plan the tiles covering a ``width`` x ``height`` raster under ``plan``, in row-major order.

    Raises:
        InvalidGeometryError: on non-positive sizes or an overlap outside ``[0, size)``.
    """
    cols = axis_spans(width, size, overlap, plan)
    rows = axis_spans(height, size, overlap, plan)
    return [
        TilePlan(i, j, PixelWindow(col_off, row_off, tile_width, tile_height))
        for i, (row_off, tile_height) in enumerate(rows)
        for j, (col_off, tile_width) in enumerate(cols)
    ]
