"""Trainer building blocks on in-memory data: metrics, spatial split, uncertainty, selection, training."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from rasterio.crs import CRS

from geolabel.classes import UNSURE_LABEL, LabelClass
from geolabel.lsmodels import LabelledTask, read_schema
from georef.grid import Grid, PixelWindow
from georef.labelstudio import ImageSize, brush_result, polygon_result
from georef.registry import RasterSpec, TileRecord, TileRegistry, TileStatus
from georef.tiling import plan_tiles
from importers.labelconfig import label_config
from trainer.fit import Sample, TrainSettings, evaluate, train
from trainer.harvest import harvest
from trainer.loop import _sample
from trainer.metrics import IGNORE, confusion, metrics_from_confusion
from trainer.model import build_model
from trainer.preannotations import prediction
from trainer.predictions import StoredPrediction, quantise
from trainer.scoring import UncertaintyMethod, prediction_score, tile_uncertainty
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


# what annotations teach: background, unsure, nodata ----------------------------------------------

BUILDING = LabelClass(id=1, name="building", color="#ff0000")


def drawn_task(task_id: int, *annotations: list[dict]) -> LabelledTask:
    """A task whose annotations (one result list each, by annotators 1, 2, ...) were submitted."""
    submitted = [
        {"id": 10 * task_id + n, "completed_by": n + 1, "result": result}
        for n, result in enumerate(annotations)
    ]
    return LabelledTask.model_validate({"id": task_id, "annotations": submitted})


def brush_region(mask: np.ndarray, label: str = "building") -> dict:
    return brush_result(mask, label, "label_brush", "image")


def polygon_region(points: list[tuple[float, float]], size: ImageSize, label: str) -> dict:
    return polygon_result(np.asarray(points, dtype=float), size, label, "label_polygon", "image")


def one_tile_project(
    tmp_path: Path, image: np.ndarray, nodata: float | None
) -> tuple[TileRegistry, TileRecord]:
    """A registry holding one 64 x 64 tile of a real GeoTIFF of ``image``."""
    path = tmp_path / "scene.tif"
    grid = Grid(64, 64, Affine(0.2, 0, 650000, 0, -0.2, 6860000), CRS.from_epsg(2154))
    profile = {"driver": "GTiff", "width": 64, "height": 64, "count": 3, "dtype": "uint8", "nodata": nodata,
               "crs": grid.crs, "transform": grid.transform}  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(image)
    registry = TileRegistry(tmp_path / "registry.sqlite")
    registry.record_project(1, "project")
    spec = RasterSpec(path=str(path), name=path.name, content_hash="ab" * 32, grid=grid, band_count=3,
                      dtype="uint8", nodata=nodata, display_bands=(1, 2, 3), stretch=(), tile_size=64,
                      overlap=0, project_id=1)  # fmt: skip
    record = registry.add_raster(spec, plan_tiles(64, 64, 64, 0))
    (tile,) = registry.tiles(record.id)
    return registry, tile


def test_one_drawn_building_trains_the_rest_as_background_unsure_and_nodata_left_out(tmp_path: Path) -> None:
    image = np.full((3, 64, 64), 90, dtype=np.uint8)
    image[:, :, :8] = 0  # nodata: the raster's left edge
    registry, tile = one_tile_project(tmp_path, image, nodata=0)
    building = np.zeros((64, 64), dtype=bool)
    building[10:20, 20:40] = True
    unsure = polygon_region([(30, 40), (50, 40), (50, 50), (30, 50)], ImageSize(64, 64), UNSURE_LABEL)
    found = harvest([drawn_task(1, [brush_region(building), unsure])], {1: tile}, [BUILDING])
    assert found.problems == []  # "unsure" is known: not reported as an unknown class
    (labelled,) = found.tiles
    with registry:
        sample = _sample(registry, labelled, tiny_manifest())
    expected = np.zeros((64, 64), dtype=np.uint8)  # background: valid pixels nobody drew
    expected[10:20, 20:40] = 1
    expected[40:50, 30:50] = IGNORE  # unsure
    expected[:, :8] = IGNORE  # nodata
    assert np.array_equal(sample.target, expected)


def test_sparse_labelling_keeps_undrawn_pixels_unknown() -> None:
    tile = registry_free_tile()
    building = np.zeros((64, 64), dtype=bool)
    building[10:20, 20:40] = True
    unsure = polygon_region([(30, 40), (50, 40), (50, 50), (30, 50)], ImageSize(64, 64), UNSURE_LABEL)
    tasks = [drawn_task(1, [brush_region(building), unsure]), drawn_task(2, [unsure])]
    found = harvest(tasks, {1: tile, 2: tile}, [BUILDING], labelling="sparse")
    (labelled,) = found.tiles  # task 2 labels nothing but "unsure": not used in sparse mode
    expected = np.full((64, 64), IGNORE, dtype=np.uint8)
    expected[10:20, 20:40] = 1
    assert np.array_equal(labelled.target, expected)
    assert [p.task_id for p in found.problems] == [2]
    (exhaustive,) = harvest(tasks[1:], {2: tile}, [BUILDING]).tiles  # exhaustive: the rest is background
    assert int((exhaustive.target == 0).sum()) == 64 * 64 - 200
    assert int((exhaustive.target == IGNORE).sum()) == 200


def test_annotators_disagreeing_about_background_leave_the_pixel_out_whoever_comes_next() -> None:
    tile = registry_free_tile()
    building = np.zeros((64, 64), dtype=bool)
    building[0:10, 0:10] = True
    # annotator 2 submitted the tile empty: all background; annotator 3 agrees with annotator 1
    found = harvest(
        [drawn_task(1, [brush_region(building)], [], [brush_region(building)])], {1: tile}, [BUILDING]
    )
    (labelled,) = found.tiles
    assert (labelled.target[0:10, 0:10] == IGNORE).all()  # a class for some, background for another
    assert (labelled.target[10:, :] == 0).all()
    assert (labelled.target[:, 10:] == 0).all()
    assert labelled.annotators == frozenset({"1", "2", "3"})
    assert found.class_pixels(["background", "building"]) == {"background": 64 * 64 - 100, "building": 0}


def registry_free_tile() -> TileRecord:
    grid = Grid(64, 64, Affine(0.2, 0, 650000, 0, -0.2, 6860000), CRS.from_epsg(2154))
    return TileRecord(
        "t", 1, 0, 0, PixelWindow(0, 0, 64, 64), grid, None, 1, TileStatus.IMPORTED, "EPSG:2154"
    )


def test_a_model_trained_on_one_drawn_building_predicts_no_region_on_an_empty_area() -> None:
    """The harvest's targets train background: an empty area gives a prediction without any region."""
    rng = np.random.default_rng(5)
    tile, samples = registry_free_tile(), []
    for task_id in range(1, 9):
        image = rng.normal(0, 0.3, (3, 64, 64)).astype(np.float32)
        building = np.zeros((64, 64), dtype=bool)
        row, col = rng.integers(0, 40, 2)
        building[row : row + 24, col : col + 24] = True
        image[:, building] += 2.0
        (labelled,) = harvest(
            [drawn_task(task_id, [brush_region(building)])], {task_id: tile}, [BUILDING]
        ).tiles
        samples.append(Sample(image, labelled.target))
    torch.manual_seed(0)
    network = build_model(tiny_manifest())
    train(network, samples, TrainSettings(epochs=12, batch_size=8, learning_rate=1e-3))
    empty = rng.normal(0, 0.3, (3, 64, 64)).astype(np.float32)  # trained without background: 2 regions
    (score,) = score_tiles(network, [empty], [np.ones((64, 64), dtype=bool)], "entropy")
    stored = StoredPrediction(quantise(score.probabilities), np.ones((64, 64), dtype=bool))
    schema = read_schema(label_config([BUILDING]))
    assert prediction(stored, [BUILDING], schema, "entropy", "v1")["result"] == []
    assert score.foreground < 0.01


def test_the_score_is_one_minus_the_mean_uncertainty_of_the_stored_probabilities() -> None:
    sure = np.zeros((2, 4, 4), dtype=np.uint8)
    sure[1] = 255
    even = np.full((2, 4, 4), 128, dtype=np.uint8)
    valid = np.ones((4, 4), dtype=bool)
    assert prediction_score(sure, valid, "entropy") == pytest.approx(1.0)
    assert prediction_score(even, valid, "entropy") == pytest.approx(0.0)
    assert prediction_score(even, valid, "margin") == pytest.approx(0.0)
    half = sure.copy()
    half[:, :, :2] = 128  # half the pixels unsure
    assert prediction_score(half, valid, "entropy") == pytest.approx(0.5)
    valid[:, :2] = False  # ... but they hold no data
    assert prediction_score(half, valid, "entropy") == pytest.approx(1.0)
    assert prediction_score(half, np.zeros((4, 4), dtype=bool), "entropy") == 1.0  # nothing to be unsure of
    probabilities = (
        np.random.default_rng(0).dirichlet([1, 1, 1], (8, 8)).transpose(2, 0, 1).astype(np.float32)
    )
    expected = 1 - float(pixel_uncertainty(torch.from_numpy(probabilities), "entropy").mean())
    assert prediction_score(quantise(probabilities), np.ones((8, 8), bool), "entropy") == pytest.approx(
        expected, abs=5e-3
    )  # quantisation moves it by less than a rounding step


@pytest.mark.parametrize("method", ["entropy", "margin"])
def test_tile_uncertainty_from_integers_is_the_mean_pixel_uncertainty_of_the_renormalised_pixels(
    method: UncertaintyMethod,
) -> None:
    rng = np.random.default_rng(4)
    proba = quantise(rng.dirichlet([0.3, 1, 2, 0.5], (30, 20)).transpose(2, 0, 1).astype(np.float32))
    proba[:, 0, 0] = [255, 0, 0, 0]  # sure pixels and a zero band
    valid = rng.random((30, 20)) > 0.3
    pixels = torch.from_numpy(proba[:, valid].astype(np.float64))
    expected = float(pixel_uncertainty(pixels / pixels.sum(dim=0), method).mean())
    assert tile_uncertainty(proba, valid, method) == pytest.approx(expected, abs=1e-12)
