"""Trainer building blocks on in-memory data: metrics, spatial split, uncertainty, selection, training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from geolabel.classes import LabelClass
from trainer.fit import Sample, TrainSettings, evaluate, train
from trainer.metrics import IGNORE, confusion, metrics_from_confusion
from trainer.model import build_model
from trainer.selection import pixel_uncertainty, score_tiles, select_batch
from trainer.splits import Footprint, spatial_split
from trainer.versions import InputSpec, ModelManifest


def test_metrics_ignore_unlabelled_pixels_and_match_hand_counts() -> None:
    target = np.array([[0, 0, 1, 1], [2, 2, IGNORE, IGNORE]], dtype=np.uint8)
    predicted = np.array([[0, 1, 1, 1], [2, 0, 2, 2]], dtype=np.uint8)
    matrix = confusion(predicted, target, 3)
    assert matrix.sum() == 6  # the two ignored pixels are not counted, whatever was predicted there
    metrics = metrics_from_confusion(matrix)
    building, water = metrics.per_class[1], metrics.per_class[2]
    assert building.iou == pytest.approx(2 / 3)  # TP 2, FP 1 (a background pixel), FN 0
    assert (building.precision, building.recall) == (pytest.approx(2 / 3), 1.0)
    assert water.iou == pytest.approx(1 / 2)
    assert water.f1 == pytest.approx(2 / 3)
    assert metrics.accuracy == pytest.approx(4 / 6)
    assert metrics.miou == pytest.approx((2 / 3 + 1 / 2) / 2)
    assert metrics.flat(["background", "building", "water"])["water_recall"] == pytest.approx(1 / 2)


def test_a_class_absent_everywhere_does_not_count_in_the_mean() -> None:
    metrics = metrics_from_confusion(confusion(np.zeros((4, 4)), np.zeros((4, 4)), 3))
    assert math.isnan(metrics.per_class[1].iou)
    assert math.isnan(metrics.miou)
    assert metrics.flat(["background", "building", "water"]) == {
        "accuracy": 1.0, "background_iou": 1.0, "background_f1": 1.0, "background_precision": 1.0,
        "background_recall": 1.0,
    }  # fmt: skip


def grid_footprints(columns: int, rows: int, side: float = 100.0) -> list[Footprint]:
    return [
        Footprint("EPSG:2154", side * (c + 0.5), side * (r + 0.5), side)
        for r in range(rows)
        for c in range(columns)
    ]


def test_validation_takes_whole_blocks_so_no_validation_tile_has_a_training_neighbour_inside_its_block() -> (
    None
):
    footprints = grid_footprints(8, 8)
    split = spatial_split(footprints, 0.25, block_tiles=4, seed=3)
    assert sorted(split.train + split.validation) == list(range(64))
    assert len(split.validation) == 16  # one whole 4 x 4 block of the four
    rows = {footprints[i].y // 400 for i in split.validation}
    columns = {footprints[i].x // 400 for i in split.validation}
    assert len(rows) == len(columns) == 1  # a single block, not scattered tiles
    assert split == spatial_split(footprints, 0.25, block_tiles=4, seed=3)  # seeded


def test_one_block_is_halved_until_validation_is_possible() -> None:
    split = spatial_split(grid_footprints(2, 2), 0.25, block_tiles=8)
    assert split.block_tiles == 1
    assert len(split.validation) == 1
    assert len(split.train) == 3
    assert spatial_split(grid_footprints(1, 1), 0.25, block_tiles=4).validation == []


def test_different_crs_are_different_blocks() -> None:
    a = Footprint("EPSG:32631", 50, 50, 100)
    b = Footprint("EPSG:32632", 50, 50, 100)
    split = spatial_split([a, b], 0.5, block_tiles=4)
    assert len(split.validation) == 1
    assert len(split.train) == 1


def test_pixel_uncertainty_entropy_and_margin() -> None:
    sure = torch.tensor([1.0, 0.0, 0.0])[:, None, None]
    split = torch.tensor([0.5, 0.5, 0.0])[:, None, None]
    even = torch.full((3, 1, 1), 1 / 3)
    for method in ("entropy", "margin"):
        values = [float(pixel_uncertainty(p, method)) for p in (sure, split, even)]  # type: ignore[arg-type]
        assert values[0] == pytest.approx(0, abs=1e-6)
        assert values[0] < values[1] <= values[2] + 1e-6
    assert float(pixel_uncertainty(even, "entropy")) == pytest.approx(1.0)
    assert float(pixel_uncertainty(split, "margin")) == pytest.approx(1.0)


def test_selection_is_uncertainty_first_then_spreads_out() -> None:
    uncertainty = np.array([0.9, 0.89, 0.88, 0.5, 0.1])
    # tiles 0..2 look alike, 3 is elsewhere, 4 is far but certain
    features = np.array([[1, 0], [0.99, 0.01], [0.98, 0.02], [0, 1], [-1, 0]], dtype=np.float32)
    assert select_batch(uncertainty, features, np.zeros((0, 2), np.float32), 3, diversity=0) == [0, 1, 2]
    assert select_batch(uncertainty, features, np.zeros((0, 2), np.float32), 2, diversity=1) == [0, 3]
    labelled_near_3 = np.array([[0, 1]], dtype=np.float32)
    assert select_batch(uncertainty, features, labelled_near_3, 1, diversity=1) == [0]
    assert select_batch(uncertainty, features, np.zeros((0, 2), np.float32), 10)[:1] == [0]
    assert len(select_batch(uncertainty, features, np.zeros((0, 2), np.float32), 10)) == 5


def tiny_manifest(bands: int = 3, classes: int = 1) -> ModelManifest:
    return ModelManifest(
        version="test",
        created="",
        classes=[LabelClass(id=i + 1, name=f"c{i + 1}", color="#ff0000") for i in range(classes)],
        input=InputSpec(bands=list(range(1, bands + 1)), mean=[0.0] * bands, std=[1.0] * bands),
    )


def bright_square_samples(count: int, seed: int) -> list[Sample]:
    """Class 1 where the image is bright: a pattern a U-Net learns in a few steps."""
    rng = np.random.default_rng(seed)
    samples = []
    for _ in range(count):
        image = rng.normal(0, 0.3, (3, 64, 64)).astype(np.float32)
        target = np.zeros((64, 64), dtype=np.uint8)
        r, c = rng.integers(0, 40, 2)
        image[:, r : r + 24, c : c + 24] += 2.0
        target[r : r + 24, c : c + 24] = 1
        samples.append(Sample(image, target))
    return samples


def test_training_learns_a_simple_pattern_and_ignores_unlabelled_pixels() -> None:
    torch.manual_seed(0)
    network = build_model(tiny_manifest())
    samples = bright_square_samples(16, seed=1)
    # hide half of every target: the model must still learn from the labelled half only
    partial = [
        Sample(s.image, np.where(np.arange(64)[None, :] < 32, s.target, IGNORE).astype(np.uint8))
        for s in samples
    ]
    before = evaluate(network, bright_square_samples(8, seed=2), 2).miou
    losses = train(network, partial, TrainSettings(epochs=12, batch_size=8, learning_rate=3e-3))
    after = evaluate(network, bright_square_samples(8, seed=2), 2).miou
    assert losses[-1] < losses[0]
    assert after > 0.8 > before


def test_tile_scores_give_confidence_foreground_and_unit_features() -> None:
    torch.manual_seed(0)
    network = build_model(tiny_manifest())
    image = np.random.default_rng(0).normal(size=(3, 40, 50)).astype(np.float32)  # padded to 64, cropped back
    valid = np.ones((40, 50), dtype=bool)
    valid[:, 25:] = False
    (score,) = score_tiles(network, [image], [valid], "entropy")
    assert score.probabilities.shape == (2, 40, 50)
    assert 0 <= score.uncertainty <= 1
    assert score.confidence == pytest.approx(1 - score.uncertainty)
    assert np.linalg.norm(score.features) == pytest.approx(1.0, abs=1e-5)
    (nothing,) = score_tiles(network, [image], [np.zeros((40, 50), bool)], "margin")
    assert nothing.uncertainty == 0.0
    assert nothing.foreground == 0.0


def test_batched_scores_equal_one_tile_at_a_time_whatever_the_sizes() -> None:
    torch.manual_seed(0)
    network = build_model(tiny_manifest())
    rng = np.random.default_rng(3)
    shapes = [(40, 50)] * 3 + [(64, 64)] * 2 + [(40, 50)]  # three runs of same-size tiles
    images = [rng.normal(size=(3, *shape)).astype(np.float32) for shape in shapes]
    valid = [np.ones(shape, dtype=bool) for shape in shapes]
    together = list(score_tiles(network, images, valid, "entropy"))
    pairs = zip(images, valid, strict=True)
    alone = [next(iter(score_tiles(network, [image], [ok], "entropy"))) for image, ok in pairs]
    assert [s.probabilities.shape[1:] for s in together] == shapes
    for a, b in zip(together, alone, strict=True):
        assert np.allclose(a.probabilities, b.probabilities, atol=1e-5)
        assert np.allclose(a.features, b.features, atol=1e-5)  # each tile's own features, in order
        assert a.uncertainty == pytest.approx(b.uncertainty, abs=1e-5)
    assert not np.allclose(together[0].features, together[1].features)
    assert not torch.is_inference_mode_enabled()  # the generator kept inference mode to itself
