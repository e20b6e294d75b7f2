"""The SAM-feature head: geometry, training on cached embeddings, saving, and serving pre-annotations.

SAM is the real vit_b architecture with random weights (the checkpoint file of the shared
fixture); its embeddings mean nothing, so most cached embeddings here are synthetic features
whose classes follow a rule a head can learn (a cell is a building where channel 0 is high).
They go through the real embedding cache, registry, display images and backend; one labelled
tile has no cached embedding and the round's contender computes it with the real encoder.
"""

from __future__ import annotations

import logging
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from PIL import Image
from rasterio.crs import CRS
from segment_anything.modeling import Sam
from segment_anything.utils.transforms import ResizeLongestSide

from geolabel.config import Config, parse_config
from geolabel.lsmodels import read_schema
from georef.grid import Grid
from georef.registry import RasterSpec, TileRecord, TileRegistry
from georef.tiling import plan_tiles
from importers.labelconfig import label_config
from ml_backend.embeddings import EmbeddingCache
from ml_backend.sam import Embedding, SamEngine, load_sam
from ml_backend.samhead import (
    HEAD_INFO,
    HEAD_NAME,
    HeadInfo,
    HeadSettings,
    SamHead,
    SamHeadContender,
    contender_from_config,
    covered_cells,
    evaluate_head,
    head_probabilities,
    load_head,
    save_head,
    tile_logits,
    train_head,
)
from ml_backend.service import Backend, BackendSettings
from tests.conftest import CLASSES, synthetic
from trainer.contender import WINNER_FILE
from trainer.errors import ModelStoreError
from trainer.fit import probabilities
from trainer.harvest import LabelledTile
from trainer.inference import load_version, read_input
from trainer.metrics import IGNORE
from trainer.model import build_model
from trainer.preannotations import prediction
from trainer.predictions import StoredPrediction, quantise
from trainer.versions import InputSpec, ModelManifest, ModelStore

SCHEMA = read_schema(label_config(CLASSES))
NAMES = ["background", *(c.name for c in CLASSES)]
FAST = HeadSettings(steps=30, batch_size=4)
#: A 320 x 200 raster in 128 px tiles: 128 x 128, 64 wide, 72 high and 72 x 64 edge tiles.
WIDTH, HEIGHT, TILE = 320, 200, 128


# geometry ------------------------------------------------------------------------------


def input_size(height: int, width: int) -> tuple[int, int]:
    """SAM's own resize of a tile's longest side to 1024 px."""
    return ResizeLongestSide.get_preprocess_shape(height, width, 1024)


def centres(pixels: int, input_pixels: int) -> np.ndarray:
    """Each pixel's centre in cell-centre coordinates of SAM's 64 x 64 grid (16 px cells of 1024)."""
    return (np.arange(pixels) + 0.5) * input_pixels / pixels / 16 - 0.5


@pytest.mark.parametrize(("height", "width"), [(72, 128), (128, 64), (72, 64), (128, 128)])
def test_tile_logits_are_sams_own_postprocessing_and_read_only_the_tiles_cells(
    height: int, width: int
) -> None:
    """Non-square edge tiles: the head's upsampling is SAM's (upscale, crop padding, resize) up to the
    last covered cell's centre, and cells beyond ``ceil(input / 16)`` (SAM's padding) change no pixel."""
    embedding = Embedding(np.zeros((256, 64, 64), np.float16), (height, width), input_size(height, width))
    input_h, input_w = embedding.input_size
    rows, cols = covered_cells(embedding)
    assert (rows, cols) == (-(-input_h // 16), -(-input_w // 16))
    logits = torch.from_numpy(np.random.default_rng(3).normal(size=(2, 64, 64)).astype(np.float32))
    mine = tile_logits(logits, embedding)
    assert mine.shape == (2, height, width)
    sams = SimpleNamespace(image_encoder=SimpleNamespace(img_size=1024))  # postprocess_masks reads only that
    reference = Sam.postprocess_masks(sams, logits[None], embedding.input_size, (height, width))[0]  # type: ignore[arg-type]
    inside = np.ix_(centres(height, input_h) <= rows - 1, centres(width, input_w) <= cols - 1)
    assert len(inside[0]) >= height - 1  # all but the last half cell
    assert len(inside[1][0]) >= width - 1
    np.testing.assert_allclose(mine.numpy()[:, *inside], reference.numpy()[:, *inside], atol=1e-4)

    padded = logits.clone()
    padded[:, rows:, :] = 1e6
    padded[:, :, cols:] = -1e6
    assert torch.equal(tile_logits(padded, embedding), mine)
    last_row, last_col = logits.clone(), logits.clone()
    last_row[:, rows - 1, :] += 10.0
    last_col[:, :, cols - 1] += 10.0
    assert (tile_logits(last_row, embedding) != mine)[:, -1, :].all()  # the bottom pixel row reads it
    assert (tile_logits(last_col, embedding) != mine)[:, :, -1].all()  # the right pixel column reads it


def test_a_ramp_across_the_cells_lands_at_each_pixels_centre() -> None:
    """Cell row / column index as logits: pixel (r, c) reads row (r + 0.5) * input_h / h / 16 - 0.5
    (a swapped axis or an input size taken from the other side would give another slope)."""
    height, width = 72, 128
    embedding = Embedding(np.zeros((256, 64, 64), np.float16), (height, width), input_size(height, width))
    assert embedding.input_size == (576, 1024)
    ramps = torch.stack(torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij"))
    rows, cols = tile_logits(ramps, embedding)
    expected_rows = np.clip(centres(height, 576), 0, 35)  # 576 px = 36 cells
    expected_cols = np.clip(centres(width, 1024), 0, 63)
    np.testing.assert_allclose(rows.numpy(), np.repeat(expected_rows[:, None], width, 1), atol=1e-4)
    np.testing.assert_allclose(cols.numpy(), np.repeat(expected_cols[None, :], height, 0), atol=1e-4)


# a project of six tiles ---------------------------------------------------------------------


#: What a building and a water cell add to their features: SAM-like, a class shows in every channel.
DIRECTIONS = np.random.default_rng(99).normal(size=(2, 256, 1, 1))


def rule_embedding(height: int, width: int, seed: int) -> tuple[Embedding, np.ndarray]:
    """Synthetic features of a tile and the target they imply: each cell is background, building or
    water, its features noise plus its class's direction; the target is the class of the cell nearest
    each pixel centre as the head interpolates cells (in SAM's padding too, where no pixel looks)."""
    rng = np.random.default_rng(seed)
    field = rng.normal(size=(2, 64, 64))
    building = field[0] > 0.6
    water = (field[1] > 0.9) & ~building
    features = rng.normal(size=(256, 64, 64)) + DIRECTIONS[0] * building + DIRECTIONS[1] * water
    embedding = Embedding(features.astype(np.float16), (height, width), input_size(height, width))
    classes = torch.from_numpy(np.stack([~(building | water), building, water]).astype(np.float32))
    target = tile_logits(classes, embedding).numpy().argmax(axis=0).astype(np.uint8)
    target[:3, :3] = IGNORE  # a few pixels left out, as unsure
    return embedding, target


class Project:
    """A registry of one raster's six tiles with display PNGs, an embedding cache and the backend."""

    def __init__(self, folder: Path, sam: SamEngine) -> None:
        self.folder, self.sam = folder, sam
        self.settings = BackendSettings(
            data_dir=folder, project_title="samhead", cache_dir=folder / "embeddings",
            models_dir=folder / "models", predictions_dir=folder / "predictions", sam_model_type="vit_b",
            sam_checkpoint=None,
        )  # fmt: skip
        self.tiles = self._import()
        self.cache = EmbeddingCache(self.settings.cache_dir, sam.identity)
        self.rules = {
            t.id: rule_embedding(t.grid.height, t.grid.width, seed) for seed, t in enumerate(self.tiles)
        }

    def _import(self) -> list[TileRecord]:
        image = synthetic(3, HEIGHT, WIDTH, "uint8", seed=11)
        grid = Grid(WIDTH, HEIGHT, Affine(0.2, 0, 650000, 0, -0.2, 6860000), CRS.from_epsg(2154))
        raster = self.folder / "ortho.tif"
        with rasterio.open(raster, "w", driver="GTiff", width=WIDTH, height=HEIGHT, count=3, dtype="uint8",
                           crs=grid.crs, transform=grid.transform) as dst:  # fmt: skip
            dst.write(image)
        with TileRegistry(self.settings.registry_path) as registry:
            registry.record_project(1, "samhead")
            spec = RasterSpec(path=str(raster), name=raster.name, content_hash="cd" * 32, grid=grid,
                              band_count=3, dtype="uint8", nodata=None, display_bands=(1, 2, 3), stretch=(),
                              tile_size=TILE, overlap=0, project_id=1, input_bands=(1, 2, 3))  # fmt: skip
            record = registry.add_raster(spec, plan_tiles(WIDTH, HEIGHT, TILE, 0))
            tiles = registry.tiles(record.id)
            rendered = []
            for tile in tiles:
                window = tile.window
                rows = slice(window.row_off, window.row_off + window.height)
                cols = slice(window.col_off, window.col_off + window.width)
                path = self.folder / "tiles" / f"{tile.id}.png"
                path.parent.mkdir(exist_ok=True)
                Image.fromarray(np.moveaxis(image[:, rows, cols], 0, -1)).save(path)
                rendered.append((tile.id, f"tiles/{tile.id}.png"))
            registry.mark_rendered(rendered)
            registry.set_task_ids({tile.id: 100 + i for i, tile in enumerate(tiles)})
            return registry.tiles(record.id)

    def image_path(self, tile: TileRecord) -> Path:
        assert tile.image_path is not None
        return self.folder / tile.image_path

    def cache_rule(self, tile: TileRecord) -> Embedding:
        """Put the tile's synthetic embedding in the cache, as if SAM had computed it."""
        key = self.cache.key(tile.id, self.image_path(tile))
        return self.cache.get_or_compute(key, lambda: self.rules[tile.id][0])

    def labelled(self, tile: TileRecord) -> LabelledTile:
        return LabelledTile(tile, self.rules[tile.id][1], frozenset({"a@b.c"}), (1,))


@pytest.fixture(scope="module")
def sam_engine(random_sam_vit_b: Path) -> SamEngine:
    return load_sam("vit_b", random_sam_vit_b, "cpu")


@pytest.fixture
def project(tmp_path: Path, sam_engine: SamEngine) -> Project:
    return Project(tmp_path, sam_engine)


#: Height and width of the project's tiles, in registry order (row-major).
SHAPES = [(128, 128), (128, 128), (128, 64), (72, 128), (72, 128), (72, 64)]


@pytest.fixture(scope="module")
def rule_head() -> SamHead:
    """A head trained once on the rule embeddings of the first four tiles (as :class:`Project` makes them)."""
    pairs = [rule_embedding(height, width, seed) for seed, (height, width) in enumerate(SHAPES[:4])]
    head, losses = train_head([e for e, _ in pairs], [t for _, t in pairs], 3, seed=0, settings=FAST)
    assert len(losses) == FAST.steps
    return head


# the round's contender ----------------------------------------------------------------------------


def test_the_head_trains_on_cached_embeddings_computes_at_most_its_cap_and_validates(
    project: Project,
) -> None:
    tiles = project.tiles
    for tile in (tiles[0], tiles[1], tiles[2], tiles[4]):
        project.cache_rule(tile)
    before = project.cache.stats().computed
    contender = SamHeadContender(project.sam, project.cache, project.image_path, max_new_embeddings=1,
                                 settings=FAST)  # fmt: skip
    train = [project.labelled(t) for t in (*tiles[:4], tiles[5])]  # tiles 3 and 5 are not cached
    result = contender.fit(train, [project.labelled(tiles[4])], CLASSES, seed=0)
    assert result is not None
    assert result.name == HEAD_NAME
    assert project.cache.stats().computed == before + 1  # the real encoder ran once (the cap), for tile 3
    assert project.cache.contains(project.cache.key(tiles[3].id, project.image_path(tiles[3])))
    assert "4 of 5 training tiles embedded (1 computed now, 1 not cached and over the cap)" in result.detail
    assert "1 of 1 validation tiles embedded (0 computed now)" in result.detail
    assert {"miou", "building_iou", "water_iou", "background_iou"} <= set(result.metrics)
    assert result.metrics["building_iou"] > 0.8, result.metrics  # the rule is learnt from 3 tiles
    assert result.metrics["water_iou"] > 0.6, result.metrics

    folder = project.folder / "models" / "v-saved"
    folder.mkdir(parents=True)
    result.save(folder)
    loaded = load_head(folder)
    assert loaded.info.sam_identity == project.sam.identity
    assert [c.name for c in loaded.info.classes] == ["building", "water"]
    embedding, target = project.rules[tiles[4].id]
    assert evaluate_head(loaded.head, [embedding], [target]).flat(NAMES) == result.metrics


def test_the_head_competes_only_when_it_can_be_compared_and_sam_off_takes_no_part(project: Project) -> None:
    tiles = project.tiles
    for tile in (tiles[0], tiles[1], tiles[4]):
        project.cache_rule(tile)
    contender = SamHeadContender(project.sam, project.cache, project.image_path, max_new_embeddings=0)
    train = [project.labelled(t) for t in tiles[:4]]
    cases = {
        "too few training tiles: 1 embedded with a labelled pixel, 2 needed": (train[1:], [tiles[4]]),
        "not every validation tile has an embedding": (train, [tiles[4], tiles[5]]),
        "no validation tile": (train, []),
    }
    for why, (training, validation) in cases.items():
        result = contender.fit(training, [project.labelled(t) for t in validation], CLASSES, seed=0)
        assert result is not None
        assert result.metrics == {}, why  # it cannot win
        assert result.detail.startswith(f"not trained ({why}"), result.detail
        with pytest.raises(RuntimeError, match="not trained"):
            result.save(project.folder)
    few = contender.fit(train[1:], [project.labelled(tiles[4])], CLASSES, seed=0)
    assert few is not None
    assert "1 of 3 training tiles embedded (0 computed now, 2 not cached and over the cap)" in few.detail
    assert project.cache.stats().computed == 3  # the three cached above, nothing by the contender
    off = SamHeadContender(None, None, project.image_path)
    assert off.fit(train, [], CLASSES, seed=0) is None


def test_a_saved_head_loads_and_predicts_the_same_probabilities(project: Project, rule_head: SamHead) -> None:
    assert [(t.grid.height, t.grid.width) for t in project.tiles] == SHAPES
    edge, target = project.rules[project.tiles[5].id]  # the 72 x 64 corner tile, not trained on
    before = head_probabilities(rule_head, edge)
    assert before.shape == (3, 72, 64)
    np.testing.assert_allclose(before.sum(axis=0), 1.0, atol=1e-5)
    info = HeadInfo(classes=CLASSES, sam_identity="vit_b-x", hidden=FAST.hidden, channels=256, train_tiles=4)
    save_head(project.folder, rule_head, info)
    loaded = load_head(project.folder)
    assert loaded.info == info
    np.testing.assert_array_equal(loaded.probabilities(edge), before)
    learnt = evaluate_head(loaded.head, [edge], [target]).per_class[1].iou
    assert learnt > 0.6  # a random head is near 0.2


def test_the_same_seed_trains_the_same_head(project: Project) -> None:
    pairs = [project.rules[t.id] for t in project.tiles[:2]]
    tiny = HeadSettings(steps=4, batch_size=2)
    threads = torch.get_num_threads()
    heads = [
        train_head([e for e, _ in pairs], [t for _, t in pairs], 3, seed=5, settings=tiny)[0] for _ in "ab"
    ]
    other, _ = train_head([e for e, _ in pairs], [t for _, t in pairs], 3, seed=6, settings=tiny)
    edge = project.rules[project.tiles[5].id][0]
    first, second, third = (head_probabilities(h, edge) for h in (*heads, other))
    np.testing.assert_allclose(first, second, atol=1e-5)  # CPU kernels may differ in the last bits
    assert np.abs(first - third).max() > 1e-3
    assert torch.get_num_threads() == threads  # training on one thread put torch's setting back


# pre-annotations ---------------------------------------------------------------------------------------


def active_version_with_head(project: Project, head: SamHead, version: str, identity: str) -> ModelManifest:
    """A U-Net version (seeded random weights) made active, whose winner is a head trained on the rule."""
    manifest = ModelManifest(
        version=version, created="2026-11-22T00:00:00+00:00", classes=CLASSES,
        input=InputSpec(bands=[1, 2, 3], mean=[120.0] * 3, std=[40.0] * 3),
    )  # fmt: skip
    torch.manual_seed(0)
    store = ModelStore(project.settings.models_dir)
    folder = store.save(manifest, build_model(manifest).state_dict())
    save_head(folder, head, HeadInfo(classes=CLASSES, sam_identity=identity, hidden=FAST.hidden,
                                     channels=256, train_tiles=4))  # fmt: skip
    (folder / WINNER_FILE).write_text(HEAD_NAME + "\n")
    store.activate(version)
    return manifest


def regions(answer: dict) -> list[tuple[str, dict]]:
    return [(r["type"], r["value"]) for r in answer["result"]]


def unet_prediction(project: Project, manifest: ModelManifest, tile: TileRecord, label: str) -> dict:
    loaded = load_version(ModelStore(project.settings.models_dir), manifest.version)
    with TileRegistry(project.settings.registry_path) as registry:
        tile_input = read_input(registry.raster(tile.raster_id), tile, manifest)
    (softmax,) = probabilities(loaded.network, [tile_input.pixels])
    stored = StoredPrediction(quantise(softmax.numpy()), tile_input.valid)
    return prediction(stored, manifest.classes, SCHEMA, "entropy", label)


def test_the_backend_serves_the_heads_pre_annotation_where_the_embedding_is_cached(
    project: Project, rule_head: SamHead
) -> None:
    manifest = active_version_with_head(project, rule_head, "v-head", project.sam.identity)
    cached, cold = project.tiles[5], project.tiles[4]  # the corner tile (72 x 64) has its embedding cached
    embedding = project.cache_rule(cached)
    backend = Backend(project.settings, sam=project.sam)
    label = "v-head"  # Label Studio shows one model version per version: the head's predictions carry it
    assert backend.model_version() == label  # /setup answers what the predictions carry

    answer, fallback = backend.pre_annotations([cached, cold], SCHEMA)
    head = load_head(project.settings.models_dir / "v-head")
    stored = StoredPrediction(quantise(head.probabilities(embedding)), np.ones((72, 64), dtype=bool))
    expected = prediction(stored, CLASSES, SCHEMA, "entropy", label)
    assert answer["model_version"] == label
    assert answer["score"] == pytest.approx(expected["score"], abs=1e-12)
    assert regions(answer) == regions(expected)
    assert any(r["value"].get("polygonlabels") == ["building"] for r in answer["result"]), answer["result"]
    assert backend.cache is not None
    assert backend.cache.stats().computed == 0  # a pre-annotation never runs the image encoder

    expected_unet = unet_prediction(project, manifest, cold, label)  # no embedding: the version's U-Net
    assert fallback["model_version"] == label
    assert fallback["score"] == pytest.approx(expected_unet["score"], abs=1e-9)
    assert regions(fallback) == regions(expected_unet)


def test_a_head_of_another_sam_checkpoint_is_not_used(
    project: Project, rule_head: SamHead, caplog: pytest.LogCaptureFixture
) -> None:
    manifest = active_version_with_head(project, rule_head, "v-other-sam", "vit_b-0123456789abcdef")
    tile = project.tiles[5]
    project.cache_rule(tile)
    backend = Backend(project.settings, sam=project.sam)
    with caplog.at_level(logging.WARNING, logger="geolabel.samhead"):
        (first,) = backend.pre_annotations([tile], SCHEMA)
        (second,) = backend.pre_annotations([tile], SCHEMA)
    assert backend.model_version() == "v-other-sam"
    expected = unet_prediction(project, manifest, tile, "v-other-sam")
    for answer in (first, second):
        assert answer["model_version"] == "v-other-sam"
        assert regions(answer) == regions(expected)
    warnings = [r.getMessage() for r in caplog.records if "trained on embeddings of SAM" in r.getMessage()]
    assert len(warnings) == 1, warnings  # logged once per version
    assert "vit_b-0123456789abcdef" in warnings[0]
    assert project.sam.identity in warnings[0]


def test_an_unreadable_head_is_a_clear_error_and_the_unet_serves(
    project: Project, rule_head: SamHead
) -> None:
    active_version_with_head(project, rule_head, "v-broken", project.sam.identity)
    folder = project.settings.models_dir / "v-broken"
    (folder / HEAD_INFO).write_text("{broken")
    with pytest.raises(ModelStoreError, match=r"SAM head in .*v-broken cannot be loaded"):
        load_head(folder)
    backend = Backend(project.settings, sam=project.sam)
    assert backend.model_version() == "v-broken"
    project.cache_rule(project.tiles[5])
    (answer,) = backend.pre_annotations([project.tiles[5]], SCHEMA)
    assert answer["model_version"] == "v-broken"


# the command line's contender ------------------------------------------------------------------------


def test_contender_from_config_needs_a_loadable_checkpoint(
    project: Project, random_sam_vit_b: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def config(checkpoint: str) -> Config:
        return parse_config(
            {"project": {"name": "samhead"}, "classes": [c.model_dump() for c in CLASSES],
             "paths": {"data_dir": str(project.folder)}, "sam": {"checkpoint": checkpoint, "device": "cpu"}},
            base_dir=project.folder,
        )  # fmt: skip

    with caplog.at_level(logging.INFO, logger="geolabel.samhead"):
        assert contender_from_config(config("")) is None
        assert contender_from_config(config(str(project.folder / "missing.pth"))) is None
    reasons = [r.getMessage() for r in caplog.records if r.name == "geolabel.samhead"]
    assert "set sam.checkpoint" in reasons[0]
    assert "missing.pth not found" in reasons[1]
    contender = contender_from_config(config(str(random_sam_vit_b)))
    assert contender is not None
    assert contender.sam is not None
    assert contender.sam.identity == project.sam.identity
    assert contender.cache is not None
    assert contender.cache.folder == project.folder / "embeddings" / project.sam.identity  # the backend's
    assert contender.image_path(project.tiles[0]) == project.image_path(project.tiles[0])
