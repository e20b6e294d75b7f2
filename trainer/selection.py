"""Which unlabelled tiles to label next: per-tile uncertainty, and a batch that is uncertain *and* diverse.

Plain uncertainty ranking piles a batch into one area (fifty near-identical
tiles of the same blurry district). :func:`select_batch` picks greedily: each
next tile maximises its uncertainty times its distance (in the model's feature
space) to every tile already labelled or picked, a farthest-point traversal
weighted by uncertainty.

What a round ranks by is the tile's *peak* uncertainty (:func:`select_next`): the mean pixel
uncertainty of its most uncertain :data:`PEAK_SHARE` of valid pixels, a region-level score. A tile's
mean uncertainty is dominated by its easy background (a tile of sure fields with one unsure roof
scores low), the peak is not. In the transfer bench (``bench/bench_transfer.py``, issue #15) it
was ahead of the mean in both held-out areas; class-balanced entropy, foreground-weighted entropy,
block impurity and a diversity-only cold start were tried too (``bench/README.md``).
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import numpy.typing as npt
import torch

from trainer.fit import probabilities
from trainer.predictions import quantise
from trainer.scoring import UNCERTAINTY_METHODS, UncertaintyMethod, pixel_uncertainty, tile_uncertainty

__all__ = [
    "PEAK_SHARE",
    "UNCERTAINTY_METHODS",
    "Candidate",
    "TileScore",
    "UncertaintyMethod",
    "peak_uncertainty",
    "pixel_uncertainty",
    "score_tiles",
    "select_batch",
    "select_next",
]

#: Share of a tile's valid pixels whose uncertainty makes its peak (region-level) uncertainty: 5 %,
#: about a 115 px square of a 512 px tile, a few roofs at 0.15 m.
PEAK_SHARE = 0.05


@dataclass(frozen=True)
class TileScore:
    """What the model says about one unlabelled tile.

    Attributes:
        uncertainty: mean pixel uncertainty over valid pixels, 0 (sure) .. 1, of the probabilities as
            stored (:func:`trainer.scoring.tile_uncertainty`).
        foreground: share of valid pixels predicted as a class (not background).
        features: L2-normalised image descriptor (the encoder's deepest features, averaged).
        probabilities: ``(classes, height, width)`` softmax, background first.
        peak_uncertainty: mean pixel uncertainty of the most uncertain :data:`PEAK_SHARE` of the valid
            pixels, same method and stored probabilities as ``uncertainty`` (:func:`peak_uncertainty`);
            what :func:`select_next` ranks by.
    """

    uncertainty: float
    foreground: float
    features: npt.NDArray[np.float32]
    probabilities: npt.NDArray[np.float32]
    peak_uncertainty: float

    @property
    def confidence(self) -> float:
        """``1 - uncertainty``: the prediction's ``score`` (:func:`trainer.scoring.prediction_score`)."""
        return 1.0 - self.uncertainty


def score_tiles(
    network: torch.nn.Module,
    images: Sequence[npt.NDArray[np.float32]],
    valid: Sequence[npt.NDArray[np.bool_]],
    method: UncertaintyMethod,
) -> Iterator[TileScore]:
    """Score each tile: uncertainty and foreground over its valid pixels, features, probabilities."""
    features: deque[torch.Tensor] = deque()  # one pooled vector per image, in order
    encoder: torch.nn.Module = network.encoder  # type: ignore[assignment]  # smp models have one
    hook = encoder.register_forward_hook(
        lambda _m, _i, output: features.extend(output[-1].float().mean(dim=(2, 3)).cpu().unbind(0))
    )
    try:
        for probability, mask in zip(probabilities(network, images), valid, strict=True):
            yield _tile_score(probability.numpy(), mask, features.popleft(), method)
    finally:
        hook.remove()


def _tile_score(
    probabilities: npt.NDArray[np.float32],
    valid: npt.NDArray[np.bool_],
    pooled: torch.Tensor,
    method: UncertaintyMethod,
) -> TileScore:
    features = pooled / pooled.norm().clamp_min(1e-12)
    if not valid.any():
        return TileScore(0.0, 0.0, features.numpy(), probabilities, 0.0)
    stored = quantise(probabilities)
    uncertainty = tile_uncertainty(stored, valid, method)
    foreground = float((probabilities.argmax(axis=0)[valid] > 0).mean())
    peak = peak_uncertainty(stored, valid, method)
    return TileScore(uncertainty, foreground, features.numpy(), probabilities, peak)


def peak_uncertainty(
    proba: npt.NDArray[np.uint8],
    valid: npt.NDArray[np.bool_],
    method: UncertaintyMethod,
    share: float = PEAK_SHARE,
) -> float:
    """Mean pixel uncertainty (0..1) of the most uncertain ``share`` of the valid pixels; 0 when none is.

    A region-level tile score: at least one pixel counts, ``ceil(share x valid pixels)`` of them.

    Args:
        proba: ``(classes + 1, height, width)`` probabilities quantised to 0..255 as stored, background
            first (each pixel is renormalised, as :func:`trainer.scoring.tile_uncertainty` does).
        valid: ``(height, width)`` pixels holding data.
        method: ``entropy`` or ``margin`` (:func:`trainer.scoring.pixel_uncertainty`).
        share: the share of valid pixels averaged, in (0, 1].

    Raises:
        ValueError: if the shapes differ, ``share`` is out of range or the method is unknown.
    """
    if proba.shape[1:] != valid.shape:
        raise ValueError(f"probabilities {proba.shape[1:]} and valid mask {valid.shape} differ in size")
    if not 0 < share <= 1:
        raise ValueError(f"share must be in (0, 1], got {share}")
    if not valid.any():
        return 0.0
    pixels = proba[:, valid].astype(np.float32)
    pixels /= np.maximum(pixels.sum(axis=0, keepdims=True), 1.0)
    values = pixel_uncertainty(torch.from_numpy(pixels), method).numpy()
    count = math.ceil(share * values.size)
    return float(np.partition(values, values.size - count)[-count:].mean())


class Candidate(Protocol):
    """What :func:`select_next` needs of an unlabelled tile (a :class:`TileScore`, a round's outcome)."""

    @property
    def peak_uncertainty(self) -> float:
        """See :attr:`TileScore.peak_uncertainty`."""
        ...

    @property
    def features(self) -> npt.NDArray[np.float32]:
        """See :attr:`TileScore.features`."""
        ...


def select_next(
    candidates: Sequence[Candidate],
    labelled_features: npt.NDArray[np.float32],
    size: int,
    diversity: float = 1.0,
) -> list[int]:
    """Indices into ``candidates`` of the next ``size`` tiles to label, in order: what a round calls.

    :func:`select_batch` with each candidate's peak uncertainty (:attr:`TileScore.peak_uncertainty`)
    as its uncertainty: the ``4 x size`` candidates with the highest peak, then greedy peak x feature
    distance to the labelled and already picked tiles (``diversity = 0``: the peak ranking alone).

    Args:
        candidates: the unlabelled tiles scored this round.
        labelled_features: ``(M, D)`` features of the labelled tiles by the same model (M may be 0).
        size: how many to pick (fewer if there are fewer candidates).
        diversity: exponent of the distance term (``[trainer] diversity``).
    """
    if not candidates:
        return []
    peak = np.array([c.peak_uncertainty for c in candidates], dtype=np.float64)
    features = np.stack([c.features for c in candidates])
    return select_batch(peak, features, labelled_features, size, diversity)


def select_batch(
    uncertainty: npt.NDArray[np.float64],
    features: npt.NDArray[np.float32],
    labelled_features: npt.NDArray[np.float32],
    size: int,
    diversity: float = 1.0,
    shortlist: int = 4,
) -> list[int]:
    """Indices of the next ``size`` tiles to label, in order.

    The ``shortlist * size`` most uncertain tiles are the candidates (so diversity never reaches for
    confidently-known outliers). Greedy: each step picks the candidate maximising
    ``uncertainty * (distance / max distance) ** diversity``, where distance is the candidate's
    feature distance to the nearest tile labelled or already picked. ``diversity = 0`` is plain
    uncertainty ranking.

    Args:
        uncertainty: ``(N,)`` candidates' uncertainty.
        features: ``(N, D)`` candidates' features.
        labelled_features: ``(M, D)`` features of the tiles labelled already (M may be 0).
        size: how many to pick (fewer if there are fewer candidates).
        diversity: exponent of the distance term.
        shortlist: candidates per tile to pick, most uncertain first.
    """
    count = min(size, len(uncertainty))
    ranked = np.argsort(-uncertainty, kind="stable")
    if diversity == 0 or count == 0:
        return [int(i) for i in ranked[:count]]
    keep = ranked[: max(count, shortlist * count)]
    picks = _farthest_points(uncertainty[keep], features[keep], labelled_features, count, diversity)
    return [int(keep[p]) for p in picks]


def _farthest_points(
    uncertainty: npt.NDArray[np.float64],
    features: npt.NDArray[np.float32],
    labelled_features: npt.NDArray[np.float32],
    count: int,
    diversity: float,
) -> list[int]:
    nearest = np.full(len(uncertainty), np.inf)
    if len(labelled_features):
        nearest = _distances(features, labelled_features).min(axis=1)
    chosen: list[int] = []
    for _ in range(count):
        finite = np.isfinite(nearest)
        scale = nearest[finite].max() if finite.any() else 1.0
        spread = np.where(finite, nearest / max(scale, 1e-12), 1.0)
        gain = uncertainty * spread**diversity
        gain[chosen] = -np.inf
        pick = int(np.argmax(gain))
        chosen.append(pick)
        nearest = np.minimum(nearest, _distances(features, features[pick : pick + 1])[:, 0])
    return chosen


def _distances(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> npt.NDArray[np.float64]:
    """Euclidean distances ``(len(a), len(b))``."""
    squared: npt.NDArray[np.float64] = (
        (a**2).sum(1)[:, None] + (b**2).sum(1)[None, :] - 2 * (a @ b.T)
    ).astype(np.float64)
    return np.sqrt(np.clip(squared, 0, None))
