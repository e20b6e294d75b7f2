"""Which unlabelled tiles to label next: per-tile uncertainty, and a batch that is uncertain *and* diverse.

Plain uncertainty ranking piles a batch into one area (fifty near-identical
tiles of the same blurry district). :func:`select_batch` picks greedily: each
next tile maximises its uncertainty times its distance (in the model's feature
space) to every tile already labelled or picked, a farthest-point traversal
weighted by uncertainty.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import numpy.typing as npt
import torch

from trainer.fit import probabilities

UncertaintyMethod = Literal["entropy", "margin"]
UNCERTAINTY_METHODS: tuple[UncertaintyMethod, ...] = ("entropy", "margin")


@dataclass(frozen=True)
class TileScore:
    """What the model says about one unlabelled tile.

    Attributes:
        uncertainty: mean pixel uncertainty over valid pixels, 0 (sure) .. 1.
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
        """``1 - uncertainty``: the ``score`` Label Studio ranks by (lowest served first)."""
        return 1.0 - self.uncertainty


def pixel_uncertainty(probabilities: torch.Tensor, method: UncertaintyMethod) -> torch.Tensor:
    """``(height, width)`` uncertainty in 0..1 of a ``(classes, height, width)`` softmax.

    ``entropy``: Shannon entropy divided by ``log(classes)``. ``margin``: ``1 - (p1 - p2)``, one minus the
    gap between the two most probable classes.
    """
    if method == "entropy":
        entropy = -(probabilities * torch.log(probabilities.clamp_min(1e-12))).sum(dim=0)
        return entropy / math.log(probabilities.shape[0])
    if method == "margin":
        top = probabilities.topk(2, dim=0).values
        return 1.0 - (top[0] - top[1])
    raise ValueError(f"unknown uncertainty method {method!r}; use one of {', '.join(UNCERTAINTY_METHODS)}")


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
        lambda _m, _i, output: features.extend(output[-1].mean(dim=(2, 3)).unbind(0))
    )
    try:
        for probability, mask in zip(probabilities(network, images), valid, strict=True):
            yield _tile_score(probability, torch.from_numpy(mask), features.popleft(), method)
    finally:
        hook.remove()


def _tile_score(
    probabilities: torch.Tensor, valid: torch.Tensor, pooled: torch.Tensor, method: UncertaintyMethod
) -> TileScore:
    features = pooled / pooled.norm().clamp_min(1e-12)
    if not bool(valid.any()):
        return TileScore(0.0, 0.0, features.numpy(), probabilities.numpy())
    uncertainty = float(pixel_uncertainty(probabilities, method)[valid].mean())
    foreground = float((probabilities.argmax(dim=0)[valid] > 0).float().mean())
    return TileScore(uncertainty, foreground, features.numpy(), probabilities.numpy())


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
