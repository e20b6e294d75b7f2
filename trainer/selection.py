"""Which unlabelled tiles to label next: per-tile uncertainty, and a batch that is uncertain *and* diverse.

Plain uncertainty ranking piles a batch into one area (fifty near-identical
tiles of the same blurry district). :func:`select_batch` picks greedily: each
next tile maximises its uncertainty times its distance (in the model's feature
space) to every tile already labelled or picked, a farthest-point traversal
weighted by uncertainty.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from trainer.fit import probabilities
from trainer.predictions import quantise
from trainer.scoring import UNCERTAINTY_METHODS, UncertaintyMethod, pixel_uncertainty, tile_uncertainty

__all__ = [
    "UNCERTAINTY_METHODS",
    "TileScore",
    "UncertaintyMethod",
    "pixel_uncertainty",
    "score_tiles",
    "select_batch",
]


@dataclass(frozen=True)
class TileScore:
    """What the model says about one unlabelled tile.

    Attributes:
        uncertainty: mean pixel uncertainty over valid pixels, 0 (sure) .. 1, of the probabilities as
            stored (:func:`trainer.scoring.tile_uncertainty`).
        foreground: share of valid pixels predicted as a class (not background).
        features: L2-normalised image descriptor (the encoder's deepest features, averaged).
        probabilities: ``(classes, height, width)`` softmax, background first.
    """

    uncertainty: float
    foreground: float
    features: npt.NDArray[np.float32]
    probabilities: npt.NDArray[np.float32]

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
        return TileScore(0.0, 0.0, features.numpy(), probabilities)
    uncertainty = tile_uncertainty(quantise(probabilities), valid, method)
    foreground = float((probabilities.argmax(axis=0)[valid] > 0).mean())
    return TileScore(uncertainty, foreground, features.numpy(), probabilities)


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
