"""ML-backend building blocks without a server: brush RLE, polygons, prompts, schema, caches, model store."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import shapely
import torch
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from label_studio_sdk.converter import brush as ls_brush
from shapely.geometry import Polygon

from geolabel.classes import LabelClass
from geolabel.errors import LabelConfigError
from geolabel.lsmodels import read_schema
from georef.brush import mask_to_rle, rle_to_mask
from georef.labelstudio import ImageSize
from georef.shapes import mask_shape
from importers.labelconfig import label_config
from ml_backend.embeddings import EmbeddingCache
from ml_backend.errors import BadRequestError
from ml_backend.protocol import Context, prompt_from_context
from ml_backend.sam import Embedding
from trainer.errors import ModelStoreError
from trainer.preannotations import class_results, mask_polygons, mask_results, prediction, too_fragmented
from trainer.predictions import StoredPrediction
from trainer.versions import InputSpec, ModelManifest, ModelStore

SCHEMA = read_schema(
    label_config(
        [LabelClass(id=1, name="building", color="#ff0000"), LabelClass(id=2, name="water", color="#0000ff")]
    )
)


# brush RLE ----------------------------------------------------------------------


@given(arrays(np.bool_, st.tuples(st.integers(1, 40), st.integers(1, 40))))
def test_brush_rle_is_byte_for_byte_label_studios(mask: np.ndarray) -> None:
    reference = [int(v) for v in ls_brush.mask2rle(np.where(mask, 255, 0).astype(np.uint8))]
    assert mask_to_rle(mask) == reference
    assert np.array_equal(rle_to_mask(mask_to_rle(mask), mask.shape[1], mask.shape[0]), mask)


@pytest.mark.parametrize("fill", [False, True])
def test_brush_rle_of_runs_longer_than_65536_bytes(fill: bool) -> None:
    mask = np.full((512, 512), fill)
    mask[300, 7] = not fill
    reference = [int(v) for v in ls_brush.mask2rle(np.where(mask, 255, 0).astype(np.uint8))]
    assert mask_to_rle(mask) == reference


# polygons -----------------------------------------------------------------------


def test_mask_polygon_follows_pixel_edges() -> None:
    mask = np.zeros((64, 80), dtype=bool)
    mask[10:20, 30:50] = True  # rows 10..19, cols 30..49
    (ring,) = mask_polygons(mask)
    assert {tuple(p) for p in ring.tolist()} == {(30.0, 10.0), (50.0, 10.0), (50.0, 20.0), (30.0, 20.0)}


def test_parts_touching_at_a_pixel_corner_are_repaired_exactly() -> None:
    """8-connected squares meet at one corner: the outline touches itself and must be repaired, not lost."""
    mask = np.zeros((64, 64), dtype=bool)
    mask[10:20, 10:20] = True
    mask[20:30, 20:30] = True  # touches the first square at (20, 20) only
    mask[40:50, 40:50] = True
    mask[44:46, 40:50] = False  # a cut that leaves two 4x10 bars ...
    mask[44:46, 45] = True  # ... joined by a 2-pixel bridge
    rings = mask_polygons(mask)
    union = shapely.union_all([Polygon(r) for r in rings])
    assert union.area == mask.sum()  # no pixel lost or added by the repair
    assert all(np.array_equal(r, np.round(r)) for r in rings)  # vertices on pixel corners


def test_a_mask_too_fragmented_for_polygons_comes_as_brush_only() -> None:
    rng = np.random.default_rng(0)
    noise = rng.random((256, 256)) < 0.5  # thousands of parts and holes: no annotator edits that
    noise[:64] = noise[:64] | (np.arange(256) % 2 == 0)  # stripes, sieving keeps them
    assert too_fragmented(noise)
    assert [r["type"] for r in mask_results(noise, "building", SCHEMA)] == ["brushlabels"]
    classes = [
        LabelClass(id=1, name="building", color="#ff0000"),
        LabelClass(id=2, name="water", color="#0000ff"),
    ]
    class_ids = np.where(noise, 1, 0).astype(np.uint8)
    class_ids[200:240, 200:240] = 2  # a pond: one polygon
    kinds = sorted((r["type"], r["value"][r["type"]][0]) for r in class_results(classes, class_ids, SCHEMA))
    assert kinds == [("brushlabels", "building"), ("polygonlabels", "water")]
    blob = np.zeros((256, 256), dtype=bool)
    blob[40:120, 60:200] = True
    assert not too_fragmented(blob)
    assert [r["type"] for r in mask_results(blob, "building", SCHEMA)] == ["brushlabels", "polygonlabels"]


def test_parts_under_the_minimum_size_get_no_polygon_largest_part_first() -> None:
    mask = np.zeros((64, 80), dtype=bool)
    mask[0:4, 0:4] = True  # 16 px: kept
    mask[40:43, 60:65] = True  # 15 px: dropped
    mask[50, 10] = True  # a speck: dropped
    mask[20:30, 20:30] = True  # 100 px: first
    mask[24:26, 24:26] = False  # a hole: Label Studio polygons have none
    big, small = mask_polygons(mask)
    assert {tuple(p) for p in big.tolist()} == {(20.0, 20.0), (30.0, 20.0), (30.0, 30.0), (20.0, 30.0)}
    assert {tuple(p) for p in small.tolist()} == {(0.0, 0.0), (4.0, 0.0), (4.0, 4.0), (0.0, 4.0)}


def test_mask_results_give_brush_and_polygons_in_percent_of_the_tile() -> None:
    mask = np.zeros((100, 200), dtype=bool)
    mask[50:60, 20:40] = True
    mask[0:2, 0:2] = True  # 4 pixels: brush only, no polygon (below MIN_POLYGON_PX)
    results = mask_results(mask, "water", SCHEMA)
    kinds = [r["type"] for r in results]
    assert kinds == ["brushlabels", "polygonlabels"]
    brush, polygon = results
    assert (brush["from_name"], brush["to_name"]) == ("label_brush", "image")
    assert (brush["original_width"], brush["original_height"]) == (200, 100)
    assert np.array_equal(rle_to_mask(brush["value"]["rle"], 200, 100), mask)
    assert polygon["value"]["polygonlabels"] == ["water"]
    xs = sorted({p[0] for p in polygon["value"]["points"]})
    ys = sorted({p[1] for p in polygon["value"]["points"]})
    assert xs == pytest.approx([10.0, 20.0])
    assert ys == pytest.approx([50.0, 60.0])
    assert mask_results(np.zeros((4, 4), dtype=bool), "water", SCHEMA) == []


# pre-annotations ----------------------------------------------------------------

BUILDING, WATER = (
    LabelClass(id=1, name="building", color="#ff0000"),
    LabelClass(id=2, name="water", color="#0000ff"),
)
BRUSH_ONLY = read_schema(
    '<View><Image name="image" value="$image"/>'
    '<BrushLabels name="label_brush" toName="image">'
    '<Label value="building"/><Label value="water"/></BrushLabels>'
    "</View>"
)


def stored_of(class_ids: np.ndarray, classes: int = 2) -> StoredPrediction:
    """A sure prediction of ``class_ids`` (0 = background), quantised as the prediction store keeps it."""
    proba = np.stack([np.where(class_ids == band, 255, 0) for band in range(classes + 1)]).astype(np.uint8)
    return StoredPrediction(proba, np.ones(class_ids.shape, dtype=bool))


def polygons_of(results: list[dict], label: str, size: ImageSize) -> list[np.ndarray]:
    """The pixel vertices of the polygon results of ``label``."""
    return [
        np.asarray(r["value"]["points"]) * [size.width / 100, size.height / 100]
        for r in results
        if r["value"]["polygonlabels"] == [label]
    ]


def test_pre_annotations_are_foreground_polygons_on_pixel_corners_with_holes_kept() -> None:
    class_ids = np.zeros((64, 80), dtype=np.uint8)
    class_ids[10:40, 10:50] = 1  # a building with a courtyard
    class_ids[20:30, 20:32] = 0
    class_ids[50:60, 60:75] = 2  # a pond
    class_ids[2, 2] = 1  # a speck: sieved
    size = ImageSize(80, 64)
    found = prediction(stored_of(class_ids), [BUILDING, WATER], SCHEMA, "entropy", "v1")
    results = found["result"]
    assert found["model_version"] == "v1"
    assert found["score"] == pytest.approx(1.0)  # a sure prediction
    assert {r["type"] for r in results} == {"polygonlabels"}  # editable vertices, no brush layer
    assert {r["value"]["polygonlabels"][0] for r in results} == {"building", "water"}  # no background
    assert len({r["id"] for r in results}) == len(results)
    for label, class_id in (("building", 1), ("water", 2)):
        rings = polygons_of(results, label, size)
        for ring in rings:
            assert np.allclose(ring, np.round(ring), rtol=0, atol=1e-9)  # every vertex a pixel corner
        union = shapely.union_all([Polygon(ring) for ring in rings])
        mask = class_ids == class_id
        mask[2, 2] = False
        assert union.symmetric_difference(mask_shape(mask).geometry).area == pytest.approx(0, abs=1e-9)
    building = shapely.union_all([Polygon(r) for r in polygons_of(results, "building", size)])
    assert len(building.interiors) == 1  # the courtyard is no building: Label Studio has no holes, so it
    assert len(polygons_of(results, "building", size)) >= 2  # is kept by cutting the building in pieces


def test_without_a_polygon_control_each_class_is_one_brush_region_and_empty_gives_nothing() -> None:
    class_ids = np.zeros((64, 80), dtype=np.uint8)
    class_ids[10:40, 10:50] = 2
    class_ids[20:30, 20:32] = 0
    class_ids[60, 70] = 1  # a speck, the only building pixel: no region
    results = prediction(stored_of(class_ids), [BUILDING, WATER], BRUSH_ONLY, "entropy", "v1")["result"]
    (water,) = results
    assert water["value"]["brushlabels"] == ["water"]
    assert np.array_equal(rle_to_mask(water["value"]["rle"], 80, 64), class_ids == 2)  # the hole kept
    empty = np.zeros((64, 80), dtype=np.uint8)
    for schema in (SCHEMA, BRUSH_ONLY):
        assert prediction(stored_of(empty), [BUILDING, WATER], schema, "entropy", "v1")["result"] == []
    nodata = stored_of(np.ones((64, 80), dtype=np.uint8))
    nodata = StoredPrediction(nodata.proba, np.zeros((64, 80), dtype=bool))
    assert prediction(nodata, [BUILDING, WATER], SCHEMA, "entropy", "v1")["result"] == []  # no data, no class


# prompts ------------------------------------------------------------------------


def keypoint(x: float, y: float, label: str = "building", positive: bool = True) -> dict:
    return {
        "type": "keypointlabels",
        "from_name": "sam_point",
        "original_width": 400,
        "original_height": 200,
        "is_positive": positive,
        "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]},
    }


def box(x: float, y: float, w: float, h: float, label: str = "building") -> dict:
    return {
        "type": "rectanglelabels",
        "from_name": "sam_box",
        "original_width": 400,
        "original_height": 200,
        "value": {"x": x, "y": y, "width": w, "height": h, "rotation": 0, "rectanglelabels": [label]},
    }


def parse(*regions: dict):
    return prompt_from_context(Context.model_validate({"result": list(regions)}), SCHEMA, ImageSize(400, 200))


def test_points_are_converted_to_tile_pixels_x_then_y() -> None:
    request = parse(keypoint(25, 75), keypoint(50, 10, positive=False))
    assert request.label == "building"
    assert request.prompt.points.tolist() == [[100.0, 150.0], [200.0, 20.0]]
    assert request.prompt.labels.tolist() == [1, 0]
    assert request.prompt.box is None


def test_box_and_points_together_and_latest_class_wins() -> None:
    request = parse(keypoint(1, 1, label="water"), box(10, 20, 50, 40), keypoint(30, 40))
    assert request.label == "building"
    assert request.prompt.box == pytest.approx((40.0, 40.0, 240.0, 120.0))
    assert request.prompt.points.tolist() == [[120.0, 80.0]]  # the water point is another object


@pytest.mark.parametrize(
    ("regions", "message"),
    [
        ([], "no key point or rectangle"),
        ([keypoint(10, 10, label="forest")], "not in the project"),
        ([{**keypoint(10, 10), "original_width": 512}], "512x200 image"),
        ([{**keypoint(10, 10), "value": {"y": 3, "keypointlabels": ["building"]}}], "value.x"),
        ([{**keypoint(10, 10), "value": {"x": 3, "y": 3}}], "no class"),
    ],
)
def test_bad_prompts_are_refused_with_a_reason(regions: list[dict], message: str) -> None:
    with pytest.raises(BadRequestError, match=message):
        parse(*regions)


def test_schema_needs_an_image_and_brush_labels() -> None:
    assert (SCHEMA.brush, SCHEMA.polygon, SCHEMA.image) == ("label_brush", "label_polygon", "image")
    assert SCHEMA.labels == ("building", "water", "unsure")  # unsure: brush and polygon only
    no_polygon = read_schema(
        '<View><Image name="img" value="$image"/>'
        '<BrushLabels name="b" toName="img"><Label value="a"/></BrushLabels></View>'
    )
    assert (no_polygon.polygon, no_polygon.image) == (None, "img")
    with pytest.raises(LabelConfigError, match="BrushLabels"):
        read_schema(
            '<View><Image name="img" value="$image"/><PolygonLabels name="p" toName="img">'
            '<Label value="a"/></PolygonLabels></View>'
        )
    with pytest.raises(LabelConfigError):
        read_schema("<View><oops")


# embedding cache ----------------------------------------------------------------


def embedding(seed: int) -> Embedding:
    features = np.random.default_rng(seed).normal(size=(256, 64, 64)).astype(np.float16)
    return Embedding(features, (200, 300), (683, 1024))


def test_cache_round_trip_and_keys_follow_the_image(tmp_path: Path) -> None:
    image = tmp_path / "tile.png"
    image.write_bytes(b"one")
    cache = EmbeddingCache(tmp_path / "cache", "vit_b-test", memory_items=1)
    key = cache.key("t1", image)
    stored = cache.get_or_compute(key, lambda: embedding(0))
    other = EmbeddingCache(tmp_path / "cache", "vit_b-test")  # another worker: reads the file
    read = other.get(key)
    assert read is not None
    assert np.array_equal(read.features, stored.features)
    assert (read.original_size, read.input_size) == ((200, 300), (683, 1024))
    assert read.features.dtype == np.float16
    assert other.stats().disk_hits == 1
    assert other.stats().files == 1
    image.write_bytes(b"re-rendered")  # a new display image never reuses the old embedding
    assert cache.key("t1", image) != key
    assert EmbeddingCache(tmp_path / "cache", "vit_h-other").get(key) is None


def test_cache_computes_once_under_concurrency_and_evicts_from_memory(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, "id", memory_items=2)
    calls: list[int] = []

    def compute() -> Embedding:
        calls.append(1)
        return embedding(1)

    threads = [threading.Thread(target=cache.get_or_compute, args=("k", compute)) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(calls) == 1
    for key in ("a", "b", "c"):
        cache.get_or_compute(key, lambda: embedding(2))
    stats = cache.stats()
    assert stats.computed == 4
    assert stats.files == 4
    assert cache.get("k") is not None
    assert cache.stats().disk_hits >= 1


def test_damaged_cache_file_is_recomputed(tmp_path: Path) -> None:
    cache = EmbeddingCache(tmp_path, "id")
    cache.path("k").write_bytes(b"truncated")
    assert cache.get("k") is None
    assert cache.get_or_compute("k", lambda: embedding(3)).features.shape == (256, 64, 64)


# model store --------------------------------------------------------------------


def manifest(version: str) -> ModelManifest:
    return ModelManifest(
        version=version,
        created="2026-11-22T00:00:00+00:00",
        classes=[LabelClass(id=1, name="building", color="#ff0000")],
        input=InputSpec(bands=[1, 2, 3], mean=[0.0] * 3, std=[1.0] * 3),
    )


def test_model_store_versions_are_atomic_and_activated_explicitly(tmp_path: Path) -> None:
    store = ModelStore(tmp_path / "models")
    assert store.versions() == []
    assert store.active_name() is None
    store.save(manifest("v1"), {"w": torch.zeros(2)})
    assert store.versions() == ["v1"]
    assert store.active_name() is None
    store.activate("v1")
    assert store.active_name() == "v1"
    (tmp_path / "models" / ".v2.partial").mkdir()  # a crash mid-write leaves only a hidden folder
    assert store.versions() == ["v1"]
    with pytest.raises(ModelStoreError, match="exists already"):
        store.save(manifest("v1"), {})
    with pytest.raises(ModelStoreError, match="no such version"):
        store.activate("v9")
    (tmp_path / "models" / "v1" / "weights.pt").write_bytes(b"garbage")
    with pytest.raises(ModelStoreError, match="cannot read"):
        store.weights("v1")


def test_nodata_pixels_are_known_from_the_png_without_decoding_opaque_tiles(tmp_path: Path) -> None:
    from PIL import Image

    from ml_backend.service import has_transparency, load_rgb

    pixels = np.full((4, 6, 4), 200, dtype=np.uint8)
    pixels[1, 2, 3] = 0  # one transparent (nodata) pixel
    Image.fromarray(pixels, "RGBA").save(tmp_path / "nodata.png")
    Image.fromarray(pixels[..., :3], "RGB").save(tmp_path / "full.png")
    assert has_transparency(tmp_path / "nodata.png")
    assert not has_transparency(tmp_path / "full.png")
    rgb, valid = load_rgb(tmp_path / "nodata.png")
    assert rgb.shape == (4, 6, 3)
    assert valid.sum() == 23
    assert not valid[1, 2]
    assert rgb[1, 2].tolist() == [0, 0, 0]


def test_the_embedding_job_waits_for_the_first_import(tmp_path: Path) -> None:
    """`geolabel embed --follow` started before any import (a deployment) waits instead of exiting."""
    import threading
    import time
    import types

    from geolabel.embedding import wait_for_project
    from georef.registry import TileRegistry

    path = tmp_path / "registry.sqlite"
    TileRegistry(path).close()

    def import_later() -> None:
        time.sleep(0.3)
        with TileRegistry(path) as registry:
            registry.record_project(41, "parcels")

    thread = threading.Thread(target=import_later)
    thread.start()
    with TileRegistry(path) as registry:
        holder = types.SimpleNamespace(registry=registry)
        assert wait_for_project(holder, "other", 0.05, timeout=0.2) is None  # type: ignore[arg-type]
        found = wait_for_project(holder, "parcels", 0.05, timeout=30)  # type: ignore[arg-type]
    thread.join()
    assert found == 41
