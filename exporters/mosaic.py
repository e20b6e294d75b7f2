"""Per-tile class probabilities mosaicked onto one output grid, block by block.

The output grid is cut into square blocks; :func:`plan_blocks` lists, for every
block, the tiles that touch it, and :func:`mosaic_block` computes one block from
those tiles alone. Memory is one block plus the tiles it reads, whatever the
project's size, and blocks are independent: threads in this process or Dask
workers (:mod:`geolabel.compute`) compute them in parallel while one writer
stores them in order.

Overlaps are blended, never last-writer-wins: each tile's probabilities are
weighted by a ramp that rises from the tile's edge across the overlap
(feathering: tile borders, where the model sees least context, count least),
zero on pixels with no image, and each output pixel is the weighted mean. Tiles
on the output grid's pixels are placed by slicing (exact); the others are
resampled bilinearly by GDAL onto the block's grid.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from rasterio.warp import Resampling, reproject, transform

from georef.grid import Grid, PixelWindow
from trainer.predictions import StoredPrediction

#: Side of the output blocks, in pixels (a multiple of the COG's 512-px internal tiles).
BLOCK = 2048
#: Value of ``predictions_argmax.tif`` where there is no image.
ARGMAX_NODATA = 255

Loader = Callable[[str], StoredPrediction]


@dataclass(frozen=True)
class MosaicTile:
    """What the mosaic needs of a tile: its id (to load its prediction), grid and overlap in pixels."""

    tile_id: str
    grid: Grid
    overlap: int


@dataclass(frozen=True)
class Block:
    """A window of the output grid and the tiles touching it."""

    window: PixelWindow
    tiles: tuple[MosaicTile, ...]


@dataclass(frozen=True)
class BlockResult:
    """A computed block: quantised probabilities ``(bands, height, width)``, mask of pixels with data."""

    window: PixelWindow
    proba: npt.NDArray[np.uint8]
    valid: npt.NDArray[np.bool_]

    def argmax(self, class_ids: Sequence[int]) -> npt.NDArray[np.uint8]:
        """Class ids of the most probable band (``class_ids[band]``), :data:`ARGMAX_NODATA` without data."""
        ids = np.asarray(class_ids, dtype=np.uint8)
        winner = ids[self.proba.argmax(axis=0)]
        return np.where(self.valid, winner, ARGMAX_NODATA).astype(np.uint8)


def plan_blocks(out: Grid, tiles: Sequence[MosaicTile], size: int = BLOCK) -> list[Block]:
    """The blocks of ``out`` (row by row) with the tiles touching each; untouched blocks are left out."""
    rows, cols = math.ceil(out.height / size), math.ceil(out.width / size)
    members: dict[tuple[int, int], list[MosaicTile]] = {}
    for tile in tiles:
        footprint = tile_window(out, tile.grid)
        if footprint is None:
            continue
        for block_row in range(footprint.row_off // size, (footprint.row_end - 1) // size + 1):
            for block_col in range(footprint.col_off // size, (footprint.col_end - 1) // size + 1):
                members.setdefault((block_row, block_col), []).append(tile)
    blocks = []
    for block_row in range(rows):
        for block_col in range(cols):
            touching = members.get((block_row, block_col))
            if touching:
                col_off, row_off = block_col * size, block_row * size
                window = PixelWindow(
                    col_off, row_off, min(size, out.width - col_off), min(size, out.height - row_off)
                )
                blocks.append(Block(window, tuple(touching)))
    return blocks


def tile_window(out: Grid, grid: Grid) -> PixelWindow | None:
    """The pixels of ``out`` a tile grid covers (None: none); exact when aligned, else padded by a pixel."""
    offset = out.offset_of(grid)
    if offset is not None:
        window = PixelWindow(offset[0], offset[1], grid.width, grid.height)
    else:
        pixels = out.world_to_pixel(_edge_points_in(grid, out))
        col0, row0 = np.floor(pixels.min(axis=0)).astype(int) - 1
        col1, row1 = np.ceil(pixels.max(axis=0)).astype(int) + 1
        window = PixelWindow(int(col0), int(row0), int(col1 - col0), int(row1 - row0))
    return window.intersection(out.full_window)


def mosaic_block(out: Grid, block: Block, load: Loader, bands: int) -> BlockResult:
    """One block of the mosaic: the weighted mean of the probabilities of the tiles touching it."""
    window = block.window
    total = np.zeros((bands + 1, window.height, window.width), dtype=np.float32)  # weighted sums, weights
    block_grid = out.window_grid(window)
    for tile in block.tiles:
        prediction = load(tile.tile_id)
        weight = feather(tile.grid.height, tile.grid.width, tile.overlap) * prediction.valid
        offset = out.offset_of(tile.grid)
        if offset is None:
            total += _resampled(prediction, weight, tile.grid, block_grid)
            continue
        tile_in_out = PixelWindow(offset[0], offset[1], tile.grid.width, tile.grid.height)
        shared = tile_in_out.intersection(window)
        if shared is None:
            continue
        source = (slice(shared.row_off - offset[1], shared.row_end - offset[1]),
                  slice(shared.col_off - offset[0], shared.col_end - offset[0]))  # fmt: skip
        target = (slice(shared.row_off - window.row_off, shared.row_end - window.row_off),
                  slice(shared.col_off - window.col_off, shared.col_end - window.col_off))  # fmt: skip
        tile_weight = weight[source]
        total[(slice(0, bands), *target)] += prediction.proba[(slice(None), *source)] * tile_weight
        total[(bands, *target)] += tile_weight
    weights = total[bands]
    valid = weights > 1e-6
    proba = np.zeros((bands, window.height, window.width), dtype=np.uint8)
    np.rint(total[:bands] / np.where(valid, weights, 1.0), out=total[:bands])
    proba[:, valid] = total[:bands, valid]
    return BlockResult(window, proba, valid)


@functools.lru_cache(maxsize=16)
def feather(height: int, width: int, overlap: int) -> npt.NDArray[np.float32]:
    """Blending weights of a tile: ``(d + 1) / (overlap + 1)`` at ``d`` pixels from its edge, at most 1."""
    ramp_rows = np.minimum(np.arange(height), np.arange(height)[::-1]) + 1.0
    ramp_cols = np.minimum(np.arange(width), np.arange(width)[::-1]) + 1.0
    scale = float(overlap + 1)
    weights = np.minimum(ramp_rows[:, None], ramp_cols[None, :]) / scale
    result: npt.NDArray[np.float32] = np.minimum(weights, 1.0).astype(np.float32)
    result.setflags(write=False)
    return result


def _resampled(
    prediction: StoredPrediction, weight: npt.NDArray[np.float32], grid: Grid, block_grid: Grid
) -> npt.NDArray[np.float32]:
    """Weighted probabilities and weights of a tile, resampled (bilinear) onto ``block_grid``."""
    stack = np.concatenate([prediction.proba * weight[None], weight[None]]).astype(np.float32)
    result = np.zeros((stack.shape[0], block_grid.height, block_grid.width), dtype=np.float32)
    reproject(
        stack,
        result,
        src_transform=grid.transform,
        src_crs=grid.crs,
        dst_transform=block_grid.transform,
        dst_crs=block_grid.crs,
        resampling=Resampling.bilinear,
    )
    return np.asarray(result, dtype=np.float32)


def _edge_points_in(grid: Grid, out: Grid, per_edge: int = 8) -> npt.NDArray[np.float64]:
    """Points along a grid's outline, in ``out``'s CRS (edges bend under reprojection)."""
    steps = np.linspace(0.0, 1.0, per_edge + 1)
    width, height = grid.width, grid.height
    outline = np.concatenate(
        [
            np.column_stack((steps * width, np.zeros_like(steps))),
            np.column_stack((np.full_like(steps, width), steps * height)),
            np.column_stack((steps * width, np.full_like(steps, height))),
            np.column_stack((np.zeros_like(steps), steps * height)),
        ]
    )
    world = grid.pixel_to_world(outline)
    if grid.crs == out.crs:
        return world
    xs, ys = transform(grid.crs, out.crs, world[:, 0].tolist(), world[:, 1].tolist())
    return np.column_stack((xs, ys))
