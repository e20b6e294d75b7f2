"""Spatially separated validation: whole blocks of neighbouring tiles go to validation, never single tiles.

Neighbouring tiles share buildings, roofs and light; a random split would put
the neighbours of training tiles in validation and flatter the model. Tiles are
grouped into square blocks of ``block_tiles x block_tiles`` tile extents in
their raster's CRS, and validation takes whole blocks.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Footprint:
    """Where a tile lies: its CRS, centre (CRS units) and side (the larger of width and height, CRS units)."""

    crs: str
    x: float
    y: float
    side: float


BlockKey = tuple[str, int, int]


def block_keys(footprints: Sequence[Footprint], block_tiles: int) -> list[BlockKey]:
    """The block of each tile: ``(crs, column, row)`` of a grid of ``block_tiles`` tile sides."""
    keys = []
    for tile in footprints:
        size = tile.side * block_tiles
        keys.append((tile.crs, math.floor(tile.x / size), math.floor(tile.y / size)))
    return keys


@dataclass(frozen=True)
class Split:
    """Indices of the training and validation tiles, and the block size finally used."""

    train: list[int]
    validation: list[int]
    block_tiles: int


def spatial_split(
    footprints: Sequence[Footprint], validation_share: float, block_tiles: int, seed: int = 0
) -> Split:
    """Put whole blocks in validation until it holds ``validation_share`` of the tiles.

    Blocks are drawn in a seeded random order. When every tile falls in one block the blocks are
    halved until there are at least two (down to one tile per block). With fewer than two tiles
    there is no validation set.

    Raises:
        ValueError: if ``validation_share`` is not in (0, 1) or ``block_tiles`` < 1.
    """
    if not 0 < validation_share < 1:
        raise ValueError(f"validation share must be between 0 and 1, got {validation_share}")
    if block_tiles < 1:
        raise ValueError(f"block size must be at least one tile, got {block_tiles}")
    if len(footprints) < 2:
        return Split(list(range(len(footprints))), [], block_tiles)
    keys = block_keys(footprints, block_tiles)
    while len(set(keys)) < 2 and block_tiles > 1:
        block_tiles = max(1, block_tiles // 2)
        keys = block_keys(footprints, block_tiles)
    blocks = sorted(set(keys))
    order = np.random.default_rng(seed).permutation(len(blocks))
    wanted = max(1, round(validation_share * len(footprints)))
    validation_blocks: set[BlockKey] = set()
    count = 0
    for index in order[:-1]:  # at least one block stays for training
        if count >= wanted:
            break
        validation_blocks.add(blocks[index])
        count += keys.count(blocks[index])
    validation = [i for i, key in enumerate(keys) if key in validation_blocks]
    train = [i for i, key in enumerate(keys) if key not in validation_blocks]
    return Split(train, validation, block_tiles)
