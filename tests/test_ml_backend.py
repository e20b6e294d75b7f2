"""The ML backend served over HTTP and driven by a real Label Studio.

SAM is the real vit_b architecture with random weights (loaded from a checkpoint
file written by a fixture); the segmentation model is a real U-Net with random
weights. Masks are therefore arbitrary, so each answer is checked against the
same network called directly with the prompt the test expects: a swapped axis,
a shifted point or a wrong class gives another mask.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import logging
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch
from segment_anything import SamPredictor
from werkzeug.serving import make_server

from geolabel.classes import LabelClass
from geolabel.config import Config
from geolabel.lsclient import LabelStudioClient
from geolabel.lsmodels import ProjectSchema, read_schema
from georef.brush import rle_to_mask
from georef.registry import TileRecord, TileRegistry
from georef.tiling import TilePlan
from ml_backend.app import create_app, settings_from_config
from ml_backend.errors import PrecomputeBusyError
from ml_backend.precompute import exclusive, next_tiles, precompute
from ml_backend.sam import PIXEL_CENTRE, Embedding, OnnxDecoder, Prompt, SamEngine, TorchDecoder, load_sam
from ml_backend.service import Backend, load_rgb
from tests.conftest import CLASSES, LabelStudioServer, free_port, keypoint
from trainer import preannotations
from trainer.fit import Sample, probabilities
from trainer.inference import load_version, read_input
from trainer.loop import Watch, _score_and_push
from trainer.model import build_model
from trainer.predictions import PredictionStore, StoredPrediction, quantise
from trainer.rounds import RoundStatus, RoundStore
from trainer.scoring import prediction_score
from trainer.serving import served_score
from trainer.versions import InputSpec, ModelManifest, ModelStore

pytestmark = pytest.mark.labelstudio
PASSWORD = "test-ml-password"


@pytest.fixture(scope="session")
def sam_checkpoint(random_sam_vit_b: Path) -> Path:
    """A vit_b checkpoint file with random weights (seeded), shared with the topology tests."""
    return random_sam_vit_b


@pytest.fixture(scope="session")
def sam_engine(sam_checkpoint: Path) -> SamEngine:
    return load_sam("vit_b", sam_checkpoint, "cpu")


@dataclass
class Served:
    config: Config
    backend: Backend
    url: str
    client: LabelStudioClient
    project_id: int
    tiles: list[TileRecord]
    ml_id: int

    def post(
        self, path: str, body: object, auth: tuple[str, str] | None = ("geolabel", PASSWORD)
    ) -> httpx.Response:
        return httpx.post(f"{self.url}{path}", json=body, auth=auth, timeout=120)

    def registry(self) -> TileRegistry:
        return TileRegistry(self.config.registry_path)


@pytest.fixture(scope="module")
def served(
    label_studio: LabelStudioServer,
    sam_engine: SamEngine,
    sam_checkpoint: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Served]:
    """A project of 2 tiles (256 px) in the real Label Studio, and the backend on a free port, connected."""
    from tests.conftest import import_scene, synthetic

    url = f"http://127.0.0.1:{free_port()}"
    raster = tmp_path_factory.mktemp("ml_rasters") / "ortho.tif"
    imported = import_scene(
        label_studio, raster, synthetic(3, 256, 480, "uint8", seed=7), "ml backend project", overlap=32,
        ml_backend={"url": url, "password": PASSWORD},
        sam={"checkpoint": str(sam_checkpoint), "device": "cpu"},
    )  # fmt: skip
    config, report, tiles, client = imported.config, imported.report, imported.tiles, label_studio.client()
    backend = Backend(settings_from_config(config), sam=sam_engine)
    server = make_server(
        "127.0.0.1", int(url.rsplit(":", 1)[1]), create_app(config, backend=backend), threaded=True
    )
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        ref = client.connect_ml_backend(report.project_id, url, "geolabel", "geolabel", PASSWORD)
        yield Served(config, backend, url, client, report.project_id, tiles, ref.id)
    finally:
        server.shutdown()


def expected_mask(served: Served, tile: TileRecord, prompt: Prompt) -> np.ndarray:
    """SAM called directly on the cached embedding with the prompt the test expects."""
    assert served.backend.cache is not None
    assert served.backend.sam is not None
    image = served.backend.image_path(tile)
    embedding = served.backend.cache.get(served.backend.cache.key(tile.id, image))
    assert embedding is not None
    _, valid = load_rgb(image)
    return served.backend.sam.segment(embedding, prompt).mask & valid


def brush_mask(results: list[dict], width: int = 256, height: int = 256) -> np.ndarray:
    (brush,) = [r for r in results if r["type"] == "brushlabels"]
    assert (brush["original_width"], brush["original_height"]) == (width, height)
    assert (brush["from_name"], brush["to_name"], brush["value"]["format"]) == ("label_brush", "image", "rle")
    return rle_to_mask(brush["value"]["rle"], width, height)


# SAM decoder ----------------------------------------------------------------------


PROMPTS = {
    "one point": Prompt(np.array([[30.0, 200.5]]), np.array([1])),
    "positive and negative": Prompt(np.array([[30.0, 200.5], [300.25, 12.0]]), np.array([1, 0])),
    "box": Prompt(np.zeros((0, 2)), np.zeros(0, dtype=np.int64), box=(10.0, 20.0, 200.0, 120.0)),
    "box and point": Prompt(np.array([[50.0, 60.0]]), np.array([0]), box=(10.0, 20.0, 200.0, 120.0)),
}


@pytest.mark.parametrize("name", list(PROMPTS))
def test_onnx_and_torch_decoders_give_segment_anythings_own_answer(sam_engine: SamEngine, name: str) -> None:
    """Both decoders against SamPredictor (the reference) on one embedding of a 320x240 tile."""
    prompt = PROMPTS[name]
    rng = np.random.default_rng(1)
    embedding = Embedding(rng.normal(size=(256, 64, 64)).astype(np.float16), (240, 320), (768, 1024))
    predictor = SamPredictor(sam_engine.model)
    predictor.features = torch.from_numpy(embedding.features.astype(np.float32))[None]
    predictor.original_size, predictor.input_size = embedding.original_size, embedding.input_size
    predictor.is_image_set = True
    multimask = prompt.box is None and len(prompt.points) == 1
    _, scores, low_res = predictor.predict(
        point_coords=prompt.points - PIXEL_CENTRE if len(prompt.points) else None,
        point_labels=prompt.labels if len(prompt.points) else None,
        box=np.asarray(prompt.box) - PIXEL_CENTRE if prompt.box else None,
        multimask_output=multimask,
    )
    coords, labels = sam_engine._encode_prompt(prompt, embedding)
    for decoder in (sam_engine.decoder, TorchDecoder(sam_engine.model)):
        masks, iou = decoder(embedding.features, coords, labels)
        chosen = slice(1, 4) if multimask else slice(0, 1)
        np.testing.assert_allclose(iou[chosen], scores, atol=1e-4)
        np.testing.assert_allclose(masks[chosen], low_res, atol=1e-3)
    assert isinstance(sam_engine.decoder, OnnxDecoder)  # on a CPU clicks run in ONNX Runtime
    segmentation = sam_engine.segment(embedding, prompt)
    assert segmentation.mask.shape == (240, 320)
    assert segmentation.score == pytest.approx(float(scores.max()), abs=1e-4)


# connection and health ---------------------------------------------------------------


def test_label_studio_connects_the_backend_with_auth_and_webhook_header(served: Served) -> None:
    assert served.client.ml_backend(served.ml_id).state == "CO"  # Label Studio passed /health and /setup
    project = served.client.project(served.project_id)
    assert project["show_collab_predictions"] is True
    hooks = [h for h in served.client._sdk.webhooks.list(project=str(served.project_id))]
    (hook,) = [h for h in hooks if h.url == f"{served.url}/webhook"]
    expected = "Basic " + base64.b64encode(f"geolabel:{PASSWORD}".encode()).decode()
    assert hook.headers == {"Authorization": expected}
    assert served.post("/setup", {"project": f"{served.project_id}.0"}, auth=None).status_code == 401
    assert (
        served.post("/setup", {"project": f"{served.project_id}.0"}, auth=("geolabel", "wrong")).status_code
        == 401
    )


def test_health_is_open_and_reports_sam_model_and_cache(served: Served) -> None:
    health = httpx.get(f"{served.url}/health").json()
    assert health["status"] == "UP"
    assert health["sam"]["enabled"] is True
    assert health["sam"]["model_type"] == "vit_b"
    assert health["sam"]["checkpoint"].endswith("sam_vit_b_random.pth")
    assert health["model"]["active_version"] is None or "metrics" in health["model"]
    assert {"files", "bytes", "hit_rate", "computed"} <= set(health["embedding_cache"])


# SAM clicks through Label Studio ----------------------------------------------------------


def test_click_returns_the_sam_mask_of_the_class_and_a_second_click_reuses_the_embedding(
    served: Served,
) -> None:
    tile = served.tiles[0]
    cache = served.backend.cache
    assert cache is not None
    before = cache.stats()
    data = served.client.interactive(served.ml_id, tile.task_id, {"result": [keypoint(25, 75)]})["data"]
    assert cache.stats().computed == before.computed + 1
    mask = brush_mask(data["result"])
    (brush,) = [r for r in data["result"] if r["type"] == "brushlabels"]
    assert brush["value"]["brushlabels"] == ["building"]
    assert data["model_version"].startswith("sam-vit_b-")
    # 25 % / 75 % of a 256-px tile is the pixel point (64, 192): x is the column.
    one_point = Prompt(np.array([[64.0, 192.0]]), np.array([1]))
    assert np.array_equal(mask, expected_mask(served, tile, one_point))
    assert mask.any(), "random-weight SAM gave an empty mask: the format check would be vacuous"
    for polygon in (r for r in data["result"] if r["type"] == "polygonlabels"):
        assert polygon["value"]["polygonlabels"] == ["building"]
        assert all(0 <= x <= 100 and 0 <= y <= 100 for x, y in polygon["value"]["points"])

    after_first = cache.stats()
    refine = {"result": [keypoint(25, 75), keypoint(60, 30, positive=False)]}
    data = served.client.interactive(served.ml_id, tile.task_id, refine)["data"]
    after_second = cache.stats()
    assert after_second.computed == after_first.computed  # the encoder did not run again
    assert after_second.memory_hits == after_first.memory_hits + 1
    two_points = Prompt(np.array([[64.0, 192.0], [153.6, 76.8]]), np.array([1, 0]))
    assert np.array_equal(brush_mask(data["result"]), expected_mask(served, tile, two_points))

    worker = Backend(settings_from_config(served.config), sam=served.backend.sam)  # another worker
    assert worker.cache is not None
    key = worker.cache.key(tile.id, worker.image_path(tile))
    assert worker.cache.get(key) is not None
    assert worker.cache.stats().disk_hits == 1


def test_box_and_box_with_points(served: Served) -> None:
    tile = served.tiles[0]
    rectangle = {
        "type": "rectanglelabels",
        "from_name": "sam_box",
        "to_name": "image",
        "original_width": 256,
        "original_height": 256,
        "value": {"x": 10, "y": 20, "width": 50, "height": 25, "rotation": 0, "rectanglelabels": ["water"]},
    }
    data = served.client.interactive(served.ml_id, tile.task_id, {"result": [rectangle]})["data"]
    box = Prompt(np.zeros((0, 2)), np.zeros(0, dtype=int), (25.6, 51.2, 153.6, 115.2))
    mask = brush_mask(data["result"])
    assert np.array_equal(mask, expected_mask(served, tile, box))
    assert all(r["value"].get("brushlabels", ["water"]) == ["water"] for r in data["result"])

    context = {"result": [rectangle, keypoint(20, 30, label="water")]}
    data = served.client.interactive(served.ml_id, tile.task_id, context)["data"]
    both = Prompt(np.array([[51.2, 76.8]]), np.array([1]), (25.6, 51.2, 153.6, 115.2))
    assert np.array_equal(brush_mask(data["result"]), expected_mask(served, tile, both))


# pre-annotations ----------------------------------------------------------------------------


def test_no_model_means_no_prediction_then_the_active_model_predicts(served: Served) -> None:
    tile = served.tiles[1]
    served.client.task(tile.task_id)  # opening a task asks the backend (pre-label on)
    assert served.client.predictions(tile.task_id) == []
    health = httpx.get(f"{served.url}/health").json()
    assert health["model"]["active_version"] is None
    assert "no trained model" in health["model"]["reason"]

    manifest = activate_random_version(served, "v-test-1", seed=1)
    store = ModelStore(served.config.models_dir)

    served.client.retrieve_predictions(served.project_id, [t.task_id for t in served.tiles])
    loaded = load_version(store, "v-test-1")
    schema = read_schema(served.client.project(served.project_id)["label_config"])
    with served.registry() as registry:
        for tile in served.tiles:
            (prediction,) = served.client.predictions(tile.task_id)
            assert prediction["model_version"] == "v-test-1"
            tile_input = read_input(registry.raster(tile.raster_id), tile, manifest)
            (softmax,) = probabilities(loaded.network, [tile_input.pixels])
            stored = StoredPrediction(quantise(softmax.numpy()), tile_input.valid)
            score = prediction_score(stored.proba, stored.valid, "entropy")  # the project's method
            assert prediction["score"] == pytest.approx(score, abs=1e-9)
            assert 0.0 < prediction["score"] <= 1.0
            assert regions(prediction) == regions(expected_prediction(stored, manifest, schema))
            assert {r["type"] for r in prediction["result"]} <= {"polygonlabels"}  # the project has polygons
    served.client.set_model_version(served.project_id, "v-test-1")  # what the trainer does after a round
    queue = served.client.queue(served.project_id)
    scores = [t.score for t in queue]
    assert None not in scores
    assert scores == sorted(scores)


def activate_random_version(served: Served, version: str, seed: int) -> ModelManifest:
    """Save a model version of the project's classes with seeded random weights and make it active."""
    manifest = ModelManifest(
        version=version,
        created="2026-11-22T00:00:00+00:00",
        classes=[LabelClass(id=c.id, name=c.name, color=c.color) for c in CLASSES],
        input=InputSpec(bands=[1, 2, 3], mean=[120.0, 120.0, 120.0], std=[40.0, 40.0, 40.0]),
    )
    torch.manual_seed(seed)
    store = ModelStore(served.config.models_dir)
    store.save(manifest, build_model(manifest).state_dict())
    store.activate(version)
    return manifest


def regions(prediction: dict) -> list[tuple[str, dict]]:
    """A prediction's regions without their random ids."""
    return [(r["type"], r["value"]) for r in prediction["result"]]


def expected_prediction(stored: StoredPrediction, manifest: ModelManifest, schema: ProjectSchema) -> dict:
    return preannotations.prediction(stored, manifest.classes, schema, "entropy", manifest.version)


def test_backend_serves_the_rounds_stored_prediction_with_the_rounds_score(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Round and backend give one prediction (regions, score) per tile and version, computed once."""
    manifest = activate_random_version(served, "v-test-2", seed=2)
    loaded = served.backend.models.current()  # the backend's own copy of the active version
    assert loaded is not None
    assert loaded.manifest.version == "v-test-2"
    # one tile per model batch, as the backend predicts (batches of 16 agree within float rounding only)
    config = served.config.model_copy(
        update={"compute": served.config.compute.model_copy(update={"chunk": 1})}
    )
    with served.registry() as registry, RoundStore(config.registry_path) as rounds:
        first = read_input(registry.raster(served.tiles[0].raster_id), served.tiles[0], manifest)
        labelled = [Sample(first.pixels, np.zeros(first.valid.shape, dtype=np.uint8))]
        round_id = rounds.start(served.project_id, "test")
        queue, _ = _score_and_push(config, served.client, registry, rounds, round_id, loaded, [], labelled,
                                   Watch())  # fmt: skip
        rank = {e.task_id: e.rank for e in queue}  # the batch is pushed with serving scores (trainer.serving)
        rounds.finish(round_id, RoundStatus.KEPT)
    pushed = {
        tile.task_id: next(
            p for p in served.client.predictions(tile.task_id) if p["model_version"] == "v-test-2"
        )
        for tile in served.tiles
    }

    def no_network(*args: object) -> None:
        raise AssertionError("the backend ran the network for a prediction the round stored")

    monkeypatch.setattr(loaded.network, "forward", no_network)
    for tile in served.tiles:
        response = served.post("/predict", predict_body(served, int(tile.task_id or 0)))
        assert response.status_code == 200, response.text
        (answer,) = response.json()["results"]
        assert answer["model_version"] == "v-test-2"
        as_pushed = served_score(answer["score"], rank.get(int(tile.task_id or 0)), len(queue))
        assert as_pushed == pytest.approx(pushed[tile.task_id]["score"], abs=1e-12)  # one meaning
        assert regions(answer) == regions(pushed[tile.task_id])

    monkeypatch.undo()  # the network again, and no stored prediction: the backend computes the same
    stored = PredictionStore(served.config.predictions_dir, "v-test-2")
    for tile in served.tiles:
        stored.path(tile.id).unlink()
        (answer,) = served.post("/predict", predict_body(served, int(tile.task_id or 0))).json()["results"]
        as_pushed = served_score(answer["score"], rank.get(int(tile.task_id or 0)), len(queue))
        assert as_pushed == pytest.approx(pushed[tile.task_id]["score"], abs=1e-9)
        assert regions(answer) == regions(pushed[tile.task_id])


# webhooks ------------------------------------------------------------------------------------


def test_annotations_are_recorded_for_the_trainer(served: Served) -> None:
    tile = served.tiles[1]
    square = np.zeros((256, 256), dtype=bool)
    square[10:20, 10:20] = True
    from georef.labelstudio import brush_result

    annotation_id = served.client.create_annotation(
        tile.task_id, [brush_result(square, "water", "label_brush", "image")]
    )
    deadline = time.monotonic() + 30
    with served.registry() as registry:
        while time.monotonic() < deadline:
            events = registry.annotation_events(served.project_id)
            if any(e.annotation_id == annotation_id for e in events):
                break
            time.sleep(0.2)
        (event,) = [e for e in events if e.annotation_id == annotation_id]
    assert (event.task_id, event.action) == (tile.task_id, "ANNOTATION_CREATED")


# bad input -------------------------------------------------------------------------------------


def predict_body(served: Served, task_id: int, context: object = None, project: str | None = None) -> dict:
    body: dict = {
        "tasks": [{"id": task_id, "data": {}}],
        "project": project or f"{served.project_id}.1700000000",
        "label_config": served.client.project(served.project_id)["label_config"],
    }
    if context is not None:
        body["params"] = {"context": context}
    return body


def test_bad_requests_get_clear_json_errors_and_the_server_keeps_serving(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    tile = served.tiles[0]
    cases = [
        (predict_body(served, 999_999), 404, "task 999999 is not a geolabel tile"),
        (predict_body(served, tile.task_id, project="424242.1"), 404, "not project 424242"),
        (predict_body(served, tile.task_id, {"result": [keypoint(150, 20)]}), 400, "outside"),
        (predict_body(served, tile.task_id, {"result": "nope"}), 400, "params.context.result"),
        (predict_body(served, tile.task_id, {"result": [keypoint(5, 5, label="forest")]}), 400, "forest"),
        ({**predict_body(served, tile.task_id), "label_config": "<View/>"}, 422, "no <Image>"),
        ({"tasks": []}, 400, "tasks"),
        ([1, 2], 400, "JSON object"),
    ]
    for body, status, message in cases:
        response = served.post("/predict", body)
        assert response.status_code == status, (body, response.text)
        assert message in response.json()["error"]
        assert "Traceback" not in response.text

    response = httpx.post(f"{served.url}/predict", content=b"{not json", auth=("geolabel", PASSWORD))
    assert response.status_code == 400
    assert "JSON" in response.json()["error"]
    assert httpx.get(f"{served.url}/nowhere", auth=("geolabel", PASSWORD)).status_code == 404

    image = served.backend.image_path(tile)
    moved = image.with_suffix(".moved")
    image.rename(moved)
    try:
        response = served.post("/predict", predict_body(served, tile.task_id, {"result": [keypoint(5, 5)]}))
        assert response.status_code == 410
        assert "missing" in response.json()["error"]
    finally:
        moved.rename(image)

    secret = "SECRET-token-that-must-not-leak"
    with caplog.at_level(logging.DEBUG):
        response = served.post(
            "/setup", {"project": f"{served.project_id}.1", "schema": "<View/>", "access_token": secret}
        )
    assert response.status_code == 422
    assert secret not in response.text
    assert secret not in caplog.text
    assert httpx.get(f"{served.url}/health").status_code == 200


def test_hostile_requests_are_answered_400_with_a_message_never_500(served: Served) -> None:
    """Ids beyond 64 bits, over-long project keys, deep nesting, huge bodies: a 400 saying what is wrong."""
    tile = served.tiles[0]
    body = predict_body(served, tile.task_id)
    deep = '{"tasks": [{"id": 1, "data": ' + "[" * 100_000 + "]" * 100_000 + "}]}"
    cases: list[tuple[str, str, bytes, str]] = [
        ("/predict", "task id 2**63", _json({**body, "tasks": [{"id": 2**63}]}), "less than or equal"),
        ("/predict", "40-digit project", _json({**body, "project": "1" * 40 + ".1"}), "'<id>.<timestamp>'"),
        ("/predict", "5000-digit project", _json({**body, "project": "7" * 5000}), "5000 characters"),
        ("/setup", "project 2**63", _json({"project": f"{2**63}.1"}), "'<id>.<timestamp>'"),
        ("/predict", "nested 100 000 deep", deep.encode(), "nested too deeply"),
        ("/predict", "50 MB body", b'{"tasks": [' + b" " * 50_000_000 + b"]}", "at most"),
        ("/predict", "1 000 000 task ids", _json({**body, "tasks": [{"id": i} for i in range(1, 10**6 + 1)]}),
         "at most"),
        ("/predict", "101 tasks", _json({**body, "tasks": [{"id": tile.task_id}] * 101}), "at most 100"),
        ("/predict", "click at x = 10**400", _json(predict_body(served, tile.task_id, {"result": [
            {**keypoint(5, 5), "value": {"x": 10**400, "y": 5, "keypointlabels": ["building"]}}]})),
         "finite number in value.x"),
        ("/predict", "box rotated by 'abc'", _json(predict_body(served, tile.task_id, {"result": [
            {"type": "rectanglelabels", "from_name": "sam_box", "value": {"x": 5, "y": 5, "width": 5,
             "height": 5, "rotation": "abc", "rectanglelabels": ["building"]}}]})), "value.rotation"),
        ("/webhook", "project id 2**63", _json({"action": "ANNOTATION_CREATED", "project": {"id": 2**63}}),
         "names no project"),
    ]  # fmt: skip
    for path, case, content, message in cases:
        started = time.perf_counter()
        response = httpx.post(
            f"{served.url}{path}", content=content, auth=("geolabel", PASSWORD), timeout=120,
            headers={"Content-Type": "application/json"},
        )  # fmt: skip
        elapsed = time.perf_counter() - started
        assert response.status_code == 400, (case, response.text[:300])
        assert message in response.json()["error"], (case, response.json())
        logging.getLogger(__name__).info("%s: 400 in %.2f s", case, elapsed)
    assert httpx.get(f"{served.url}/health").status_code == 200


def _json(body: object) -> bytes:
    return json.dumps(body).encode()


def other_projects_task(registry: TileRegistry, tile: TileRecord) -> int:
    """A task of another project recorded in the same registry (a copy of ``tile``'s raster)."""
    raster = registry.raster(tile.raster_id)
    registry.record_project(424_242, "another project")
    other = registry.add_raster(
        dataclasses.replace(raster, path=raster.path + ".other", project_id=424_242),
        [TilePlan(0, 0, tile.window)],
    )
    (copy,) = registry.tiles(other.id)
    registry.mark_rendered([(copy.id, str(tile.image_path))])
    registry.set_task_ids({copy.id: 424_243})
    return 424_243


def test_webhook_counts_distinct_annotations_of_this_projects_tiles_only(served: Served) -> None:
    tile = served.tiles[0]
    with served.registry() as registry:
        since = max((e.id for e in registry.annotation_events(served.project_id)), default=0)
        foreign = other_projects_task(registry, tile)
    project = {"id": served.project_id, "title": "whatever the body says"}

    def created(annotation_id: int, task_id: int, action: str = "ANNOTATION_CREATED") -> dict:
        return {"action": action, "project": project, "annotation": {"id": annotation_id, "task": task_id},
                "task": {"id": task_id, "project": served.project_id}}  # fmt: skip

    fakes = [
        (created(9_000_001, 999_999), 200),  # a task the registry does not know
        (created(9_000_002, foreign), 200),  # a task of another project
        ({**created(9_000_003, tile.task_id), "project": None}, 400),  # no project
        ({"action": "ANNOTATION_CREATED", "annotation": {"id": 9_000_003, "task": tile.task_id}}, 400),
        (created(9_000_004, tile.task_id, action="PROJECT_UPDATED"), 200),  # not an annotation action
        ({"action": "ANNOTATIONS_DELETED", "project": project, "annotations": [{"id": 9_000_005}]}, 200),
        (created(2**63, tile.task_id), 200),  # not an id
    ]
    for body, status in fakes:
        response = served.post("/webhook", body)
        assert response.status_code == status, (body, response.text)
        assert status == 400 or response.json().get("events", 0) == 0, response.json()
    with served.registry() as registry:
        assert registry.count_changed_annotations(served.project_id, since) == 0

    copies = [{"id": 9_000_006, "task": tile.task_id}] * 5000
    flood = {"action": "ANNOTATIONS_CREATED", "project": project, "annotation": copies, "task": [{"id": 1}]}
    assert served.post("/webhook", flood).json()["events"] == 1
    for _ in range(5):  # the annotator saves the same annotation again and again
        response = served.post("/webhook", created(9_000_006, tile.task_id, "ANNOTATION_UPDATED"))
        assert response.json()["events"] == 1
    deleted = {"action": "ANNOTATIONS_DELETED", "project": project, "annotations": [{"id": 9_000_006}]}
    assert served.post("/webhook", deleted).json()["events"] == 1
    with served.registry() as registry:
        assert registry.count_changed_annotations(served.project_id, since) == 1
        events = registry.annotation_events(served.project_id, since)
    assert {(e.task_id, e.annotation_id) for e in events} == {(tile.task_id, 9_000_006)}
    assert [e.action for e in events] == ["ANNOTATIONS_CREATED"] + ["ANNOTATION_UPDATED"] * 5 + [
        "ANNOTATIONS_DELETED"
    ]


def test_the_access_log_has_every_request_and_no_secret(
    served: Served, caplog: pytest.LogCaptureFixture
) -> None:
    """No level set here: the backend itself makes its access log reach the log handlers."""
    httpx.get(f"{served.url}/health?token=SECRET-in-the-query&page=2", timeout=30)
    served.post("/predict", {"tasks": []})
    httpx.post(f"{served.url}/predict", json={}, auth=("geolabel", "wrong-password"), timeout=30)
    lines = [r.getMessage() for r in caplog.records if r.name == "geolabel.ml_backend.access"]
    patterns = [r"GET /health\?token=\*\*\*&page=2 200 \d+ ms", r"POST /predict 400 \d+ ms",
                r"POST /predict 401 \d+ ms"]  # fmt: skip
    for pattern in patterns:
        assert any(re.fullmatch(pattern, line) for line in lines), (pattern, lines)
    assert "SECRET" not in caplog.text
    assert PASSWORD not in caplog.text
    assert "wrong-password" not in caplog.text


# background precompute ------------------------------------------------------------------------


def test_precompute_embeds_the_next_tiles_of_the_queue_once(served: Served) -> None:
    backend = served.backend
    queue = served.client.queue(served.project_id)
    tiles = next_tiles(backend, queue, limit=5)
    assert [t.task_id for t in tiles] == [q.task_id for q in queue if q.tile_id]
    with exclusive(backend):
        with pytest.raises(PrecomputeBusyError), exclusive(backend):
            pass
        report = precompute(backend, tiles)
    assert report.failed == {}
    assert report.cached + len(report.computed) == len(tiles)
    again = precompute(backend, tiles)
    assert again.computed == []
    assert again.cached == len(tiles)


def test_sam_off_or_a_bad_checkpoint_is_explained_and_the_rest_works(served: Served, tmp_path: Path) -> None:
    def health_with(checkpoint: str, model_type: str = "vit_b") -> dict:
        config = served.config.model_copy(
            update={
                "sam": served.config.sam.model_copy(
                    update={"checkpoint": checkpoint, "model_type": model_type}
                )
            }
        )
        app = create_app(config)
        return app.test_client().get("/health").get_json()["sam"]

    assert "set sam.checkpoint" in health_with("")["reason"]
    assert "not found" in health_with(str(tmp_path / "missing.pth"))["reason"]
    (tmp_path / "junk.pth").write_bytes(b"not a checkpoint")
    assert "not a readable PyTorch checkpoint" in health_with(str(tmp_path / "junk.pth"))["reason"]
    torch.save({"unrelated": torch.zeros(1)}, tmp_path / "other.pth")
    assert "does not hold SAM vit_b weights" in health_with(str(tmp_path / "other.pth"))["reason"]

    config = served.config.model_copy(update={"sam": served.config.sam.model_copy(update={"checkpoint": ""})})
    client = create_app(config).test_client()
    auth = {"Authorization": "Basic " + base64.b64encode(f"geolabel:{PASSWORD}".encode()).decode()}
    response = client.post(
        "/predict",
        json=predict_body(served, served.tiles[0].task_id, {"result": [keypoint(5, 5)]}),
        headers=auth,
    )
    assert response.status_code == 503
    assert "SAM is off" in response.get_json()["error"]
    assert (
        client.post("/predict", json=predict_body(served, served.tiles[0].task_id), headers=auth).status_code
        == 200
    )
