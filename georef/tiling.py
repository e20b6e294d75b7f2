"""Tiling plans: cover a raster with square tiles of size S and overlap O.

Edge policy: **shifted inside**. Tiles start every ``S - O`` pixels; when the
last regular tile does not reach the raster's edge, one more tile is placed
flush against the edge, so its overlap with its neighbour is at least ``O``
(and less than ``S``). Every tile lies wholly inside the raster and carries
only real pixels: no padding, no half-empty display tiles. A raster smaller
than ``S`` along an axis gets one tile of the raster's own length along it.
"""

from __future__ import annotations

from dataclasses import dataclass

from georef.errors import InvalidGeometryError
from georef.grid import PixelWindow


@dataclass(frozen=True, slots=True)
class TilePlan:
    """One planned tile: its position in the tile matrix and its pixel window."""

    tile_row: int
    tile_col: int
    window: PixelWindow


def axis_starts(length: int, size: int, overlap: int) -> list[int]:
    """Start offsets of the tiles along one axis of ``length`` pixels.

    Raises:
        InvalidGeometryError: if ``length`` or ``size`` is not positive, or
            ``overlap`` is not in ``[0, size)``.
    """
    if length <= 0 or size <= 0:
        raise InvalidGeometryError(f"length and tile size must be positive, got {length} and {size}")
    if not 0 <= overlap < size:
        raise InvalidGeometryError(f"overlap must be in [0, {size}), got {overlap}")
    if length <= size:
        return [0]
    stride = size - overlap
    starts = list(range(0, length - size + 1, stride))
    if starts[-1] + size < length:
        starts.append(length - size)
    return starts


def plan_tiles(width: int, height: int, size: int, overlap: int) -> list[TilePlan]:
    """Plan the tiles covering a ``width`` x ``height`` raster, in row-major order.

    Raises:
        InvalidGeometryError: on non-positive sizes or an overlap outside ``[0, size)``.
    """
    col_starts = axis_starts(width, size, overlap)
    row_starts = axis_starts(height, size, overlap)
    tile_width = min(size, width)
    tile_height = min(size, height)
    return [
        TilePlan(i, j, PixelWindow(col_off, row_off, tile_width, tile_height))
        for i, row_off in enumerate(row_starts)
        for j, col_off in enumerate(col_starts)
    ]
