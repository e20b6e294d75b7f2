"""The round's acquisition: a tile's peak (region-level) uncertainty, and the batch ranked by it."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import pytest
import torch

from geolabel.classes import LabelClass
from trainer.model import build_model
from trainer.predictions import quantise
from trainer.scoring import tile_uncertainty
from trainer.selection import PEAK_SHARE, peak_uncertainty, score_tiles, select_batch, select_next
from trainer.versions import InputSpec, ModelManifest

SIDE = 40  # 1600 pixels: 5 % is 80


def probabilities(building: npt.NDArray[np.float64]) -> npt.NDArray[np.uint8]:
    """Two-class probabilities quantised as stored, from the building probability of each pixel."""
    stack = np.stack([1 - building, building]).astype(np.float32)
    return quantise(stack)


def sure_fields_with_one_unsure_roof() -> npt.NDArray[np.uint8]:
    """Background everywhere (p = 0.01) but one 8 x 10 patch (5 % of the tile) at p = 0.5."""
    building = np.full((SIDE, SIDE), 0.01)
    building[:8, :10] = 0.5
    return probabilities(building)


def mildly_unsure_everywhere() -> npt.NDArray[np.uint8]:
    """Every pixel at p = 0.2: entropy about 0.72 everywhere."""
    return probabilities(np.full((SIDE, SIDE), 0.2))


EVERYWHERE = np.ones((SIDE, SIDE), dtype=bool)
#: Entropy of a field pixel as stored (p = 0.01 is stored as 3 / 255): about 0.09.
FIELD = tile_uncertainty(probabilities(np.full((SIDE, SIDE), 0.01)), EVERYWHERE, "entropy")


def test_peak_is_the_mean_of_the_most_uncertain_share_of_pixels() -> None:
    roof = sure_fields_with_one_unsure_roof()
    assert peak_uncertainty(roof, EVERYWHERE, "entropy") == pytest.approx(1.0, abs=1e-3)  # the 80 roof pixels
    assert peak_uncertainty(roof, EVERYWHERE, "entropy", share=0.1) == pytest.approx(
        (1.0 + FIELD) / 2, abs=1e-3
    )  # 80 roof pixels and 80 field pixels
    assert peak_uncertainty(roof, EVERYWHERE, "entropy", share=1.0) == pytest.approx(
        tile_uncertainty(roof, EVERYWHERE, "entropy"), abs=1e-4
    )  # every pixel: the tile's mean uncertainty
    assert peak_uncertainty(roof, EVERYWHERE, "margin") == pytest.approx(1.0, abs=1e-2)


def test_peak_ranks_a_tile_with_one_unsure_region_above_a_tile_mildly_unsure_everywhere() -> None:
    roof, mild = sure_fields_with_one_unsure_roof(), mildly_unsure_everywhere()
    # the mean ranks them the other way round: that is what the peak is for
    assert tile_uncertainty(roof, EVERYWHERE, "entropy") < tile_uncertainty(mild, EVERYWHERE, "entropy")
    assert peak_uncertainty(roof, EVERYWHERE, "entropy") > peak_uncertainty(mild, EVERYWHERE, "entropy")
    assert peak_uncertainty(mild, EVERYWHERE, "entropy") == pytest.approx(0.722, abs=2e-3)


def test_peak_only_counts_valid_pixels() -> None:
    roof = sure_fields_with_one_unsure_roof()
    valid = EVERYWHERE.copy()
    valid[:8, :10] = False  # the unsure roof is nodata
    assert 0.05 < FIELD < 0.12
    assert peak_uncertainty(roof, valid, "entropy") == pytest.approx(FIELD, abs=1e-4)
    assert peak_uncertainty(roof, np.zeros_like(valid), "entropy") == 0.0
    one = np.zeros_like(valid)
    one[0, 0] = True  # a single valid pixel is its own peak
    assert peak_uncertainty(roof, one, "entropy") == pytest.approx(1.0, abs=1e-3)


def test_peak_refuses_wrong_shapes_and_shares() -> None:
    roof = sure_fields_with_one_unsure_roof()
    with pytest.raises(ValueError, match="differ in size"):
        peak_uncertainty(roof, np.ones((SIDE, SIDE + 1), dtype=bool), "entropy")
    for share in (0.0, 1.5):
        with pytest.raises(ValueError, match="share"):
            peak_uncertainty(roof, EVERYWHERE, "entropy", share=share)
    with pytest.raises(ValueError, match="unknown uncertainty method"):
        peak_uncertainty(roof, EVERYWHERE, "variance")  # type: ignore[arg-type]


@dataclass(frozen=True)
class Outcome:
    """A round's per-tile outcome as the round holds it (any object with these two fields)."""

    peak_uncertainty: float
    features: npt.NDArray[np.float32]
    uncertainty: float = 0.0


def test_select_next_ranks_by_peak_not_by_mean_uncertainty() -> None:
    features = np.eye(4, dtype=np.float32)  # all equally far apart: diversity does not reorder
    none = np.zeros((0, 4), dtype=np.float32)
    outcomes = [
        Outcome(0.3, features[0], uncertainty=0.6),
        Outcome(0.9, features[1], uncertainty=0.1),
        Outcome(0.6, features[2], uncertainty=0.3),
        Outcome(0.1, features[3], uncertainty=0.9),
    ]
    assert select_next(outcomes, none, 2, diversity=0) == [1, 2]
    assert select_next(outcomes, none, 4) == [1, 2, 0, 3]
    assert select_next([], none, 3) == []


def test_select_next_spreads_the_batch_as_select_batch_does() -> None:
    # tiles 0 and 1 look alike and are the most uncertain; 2 is elsewhere
    features = np.array([[1, 0], [0.99, 0.14], [0, 1]], dtype=np.float32)
    outcomes = [Outcome(0.9, features[0]), Outcome(0.88, features[1]), Outcome(0.7, features[2])]
    none = np.zeros((0, 2), dtype=np.float32)
    assert select_next(outcomes, none, 2, diversity=0) == [0, 1]
    assert select_next(outcomes, none, 2, diversity=1) == [0, 2]
    peaks = np.array([o.peak_uncertainty for o in outcomes])
    near_0 = np.array([[1, 0]], dtype=np.float32)  # a labelled tile like tile 0
    assert select_next(outcomes, near_0, 1) == select_batch(peaks, features, near_0, 1) == [2]


def test_score_tiles_gives_each_tile_its_peak_from_the_stored_probabilities() -> None:
    manifest = ModelManifest(
        version="test",
        created="",
        classes=[LabelClass(id=1, name="building", color="#ff0000")],
        input=InputSpec(bands=[1, 2, 3], mean=[0.0] * 3, std=[1.0] * 3),
    )
    torch.manual_seed(0)
    network = build_model(manifest)
    rng = np.random.default_rng(1)
    images = [rng.normal(size=(3, 48, 64)).astype(np.float32) for _ in range(2)]
    valid = [np.ones((48, 64), dtype=bool), np.zeros((48, 64), dtype=bool)]
    valid[1][:, :20] = True
    scores = list(score_tiles(network, images, valid, "entropy"))
    for score, mask in zip(scores, valid, strict=True):
        stored = quantise(score.probabilities)
        assert score.peak_uncertainty == pytest.approx(peak_uncertainty(stored, mask, "entropy", PEAK_SHARE))
        assert score.uncertainty <= score.peak_uncertainty <= 1.0
    (nothing,) = score_tiles(network, images[:1], [np.zeros((48, 64), dtype=bool)], "entropy")
    assert nothing.peak_uncertainty == 0.0
