"""A round's candidate pool: the unlabelled tiles it scores; its cost follows the labels, not the territory.

Scoring every unlabelled tile costs a model pass per tile (about 0.4 s for 512 px on a CPU core): a
French département is about 570 000 tiles, 63 CPU-hours per round. A round scores a pool of at most
``[trainer] pool`` tiles instead, made of, in this order:

1. the previous round's most uncertain unlabelled tiles (a quarter of the pool): what the model was
   unsure of is likely still worth labelling;
2. the neighbours of the tiles labelled since the previous round (a quarter): the model changed most
   around new labels;
3. a spatially stratified random sample of the rest: the ground the candidates cover is cut into
   square cells sized so that about as many cells hold tiles as places are left (cells of
   ``tile side x sqrt(candidates / places)``, so separate areas far apart are cut as finely as one
   block). Cells are ordered along a Z-order curve and, when there are more cells than places, the
   first tiles come from cells evenly spaced along it (a systematic sample with a random start);
   then cells are visited round-robin, one random tile per cell each turn: every part of the
   territory is looked at, each about in proportion to the ground it covers.

Unused quota of one part goes to the next. The same inputs and seed give the same pool.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

from trainer.splits import Footprint

#: Share of the pool kept for the previous round's most uncertain tiles, and for new labels' neighbours.
PREVIOUS_SHARE = 0.25
NEIGHBOUR_SHARE = 0.25
#: A candidate is a neighbour of a new label when their centres are at most this many tile sides apart
#: (1.5: the 8 tiles around it, overlap or not).
NEIGHBOUR_SIDES = 1.5


def candidate_pool(
    candidates: Sequence[tuple[str, Footprint]],
    size: int,
    uncertain: Iterable[str] = (),
    new_labels: Sequence[Footprint] = (),
    seed: int = 0,
) -> list[str]:
    """The tile ids to score this round: at most ``size`` of ``candidates`` (all of them when ``size`` is 0).

    Args:
        candidates: the unlabelled tiles that can be scored, with their footprints.
        size: the pool's size (``[trainer] pool``); 0 or at least ``len(candidates)``: every candidate.
        uncertain: the previous round's unlabelled tiles, most uncertain first (others are ignored).
        new_labels: footprints of the tiles labelled since the previous round.
        seed: seeds the stratified sample.
    """
    if size == 0 or size >= len(candidates):
        return [tile_id for tile_id, _ in candidates]
    index = {tile_id: i for i, (tile_id, _) in enumerate(candidates)}
    chosen: dict[int, None] = {}  # an ordered set of candidate indices
    _take(chosen, (index[t] for t in uncertain if t in index), math.floor(size * PREVIOUS_SHARE))
    quota = len(chosen) + math.floor(size * NEIGHBOUR_SHARE)
    _take(chosen, _neighbours(candidates, new_labels), quota - len(chosen))
    _take(chosen, _stratified(candidates, size - len(chosen), seed), size - len(chosen))
    return [candidates[i][0] for i in chosen]


def _take(chosen: dict[int, None], indices: Iterable[int], count: int) -> None:
    """Add up to ``count`` indices not chosen yet, in order."""
    added = 0
    for i in indices:
        if added >= count:
            return
        if i not in chosen:
            chosen[i] = None
            added += 1


def _neighbours(candidates: Sequence[tuple[str, Footprint]], new_labels: Sequence[Footprint]) -> list[int]:
    """Candidates near a new label, nearest first (each label's neighbours in turn, round-robin)."""
    if not new_labels:
        return []
    crs = np.array([f.crs for _, f in candidates])
    xy = np.array([(f.x, f.y) for _, f in candidates], dtype=np.float64)
    per_label: list[list[int]] = []
    for label in new_labels:
        distance = np.hypot(xy[:, 0] - label.x, xy[:, 1] - label.y)
        near = np.flatnonzero((crs == label.crs) & (distance <= NEIGHBOUR_SIDES * label.side))
        per_label.append(near[np.argsort(distance[near], kind="stable")].tolist())
    return _round_robin(per_label)


def _stratified(candidates: Sequence[tuple[str, Footprint]], places: int, seed: int) -> list[int]:
    """Every candidate, ordered so that any prefix is spread over the territory (see the module doc)."""
    if places <= 0:
        return []
    rng = np.random.default_rng(seed)
    cells: dict[tuple[str, int, int], list[int]] = {}
    by_crs: dict[str, list[int]] = {}
    for i, (_, footprint) in enumerate(candidates):
        by_crs.setdefault(footprint.crs, []).append(i)
    for crs, members in by_crs.items():
        xy = np.array([(candidates[i][1].x, candidates[i][1].y) for i in members], dtype=np.float64)
        share = max(1, round(places * len(members) / len(candidates)))
        tile_side = float(np.median([candidates[i][1].side for i in members]))
        side = max(tile_side * math.sqrt(len(members) / share), 1e-9)  # about `share` occupied cells
        keys = np.floor((xy - xy.min(axis=0)) / side).astype(np.int64)
        for i, (col, row) in zip(members, keys.tolist(), strict=True):
            cells.setdefault((crs, col, row), []).append(i)
    groups = [cells[key] for key in sorted(cells, key=lambda key: (key[0], _morton(key[1], key[2])))]
    for group in groups:
        rng.shuffle(group)
    first = _systematic(len(groups), places, float(rng.random()))
    taken = set(first)
    rest = [g for g in range(len(groups)) if g not in taken]
    order = first + [rest[g] for g in rng.permutation(len(rest))]
    return _round_robin([groups[g] for g in order])


def _morton(col: int, row: int) -> int:
    """Z-order position of a cell: neighbouring cells get near positions, in lines as in blocks."""
    code = 0
    for bit in range(32):
        code |= ((col >> bit) & 1) << (2 * bit) | ((row >> bit) & 1) << (2 * bit + 1)
    return code


def _systematic(count: int, places: int, start: float) -> list[int]:
    """``min(count, places)`` positions evenly spaced over ``range(count)`` from ``start`` (0..1)."""
    if count <= places:
        return list(range(count))
    return sorted({math.floor((k + start) * count / places) for k in range(places)})


def _round_robin(lists: Sequence[Sequence[int]]) -> list[int]:
    """The first of each list, then the second of each, and so on."""
    result: list[int] = []
    longest = max((len(items) for items in lists), default=0)
    for depth in range(longest):
        result.extend(items[depth] for items in lists if depth < len(items))
    return result
