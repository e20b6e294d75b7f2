"""ML-backend benchmark: SAM click latency (cold and warm), embedding throughput, and a mixed load test.

Everything runs for real, as ``geolabel serve`` runs it: a Label Studio 1.23 server, the
sample orthophoto imported as tiles, the backend under gunicorn (1 worker, 4 threads)
connected to the project. SAM is the real vit_b architecture with random weights (no
checkpoint can be downloaded here): the encoder and decoder do exactly the work of the real
weights, but their masks are noise-like, which makes the brush RLE and polygons of every
answer larger than for a real object (reported separately as "post-processing").

The load test runs twice: with pre-annotations computed by the backend, then with the
predictions a round stores (``load_stored``), which the backend serves without the network.

Usage: .venv/bin/python bench/bench_ml_backend.py [--clicks 100] [--load 240] [--clients 8]
Writes bench/out/bench_ml_backend.json.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import psutil
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from geolabel.classes import LabelClass  # noqa: E402
from geolabel.config import parse_config  # noqa: E402
from geolabel.credentials import load_or_create_credentials  # noqa: E402
from geolabel.local import SAMPLE_RASTER, local_backend  # noqa: E402
from geolabel.lsclient import LabelStudioClient  # noqa: E402
from geolabel.stack import LocalLabelStudio  # noqa: E402
from georef.registry import TileRegistry, TileStatus  # noqa: E402
from importers.pipeline import ImportOptions, import_raster  # noqa: E402
from ml_backend.app import settings_from_config  # noqa: E402
from ml_backend.precompute import precompute  # noqa: E402
from ml_backend.sam import Prompt  # noqa: E402
from ml_backend.service import Backend  # noqa: E402
from trainer.model import build_model  # noqa: E402
from trainer.predict import predict_missing  # noqa: E402
from trainer.versions import InputSpec, ModelManifest, ModelStore  # noqa: E402

OUT = ROOT / "bench" / "out"
CLASSES = [
    LabelClass(id=1, name="building", color="#e31a1c"),
    LabelClass(id=2, name="vegetation", color="#33a02c"),
]
PASSWORD = "bench-password"


def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def random_checkpoint() -> Path:
    path = OUT / "sam_vit_b_random_seed0.pth"
    if not path.is_file():
        from segment_anything import sam_model_registry

        torch.manual_seed(0)
        OUT.mkdir(parents=True, exist_ok=True)
        torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), path)
    return path


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {
        "n": len(ordered),
        "p50_ms": round(statistics.median(ordered) * 1000, 1),
        "p95_ms": round(ordered[min(len(ordered) - 1, int(0.95 * len(ordered)))] * 1000, 1),
        "max_ms": round(ordered[-1] * 1000, 1),
    }


def keypoint_context(x: float, y: float, size: tuple[int, int], label: str = "building") -> dict[str, Any]:
    return {
        "result": [
            {
                "type": "keypointlabels",
                "from_name": "sam_point",
                "to_name": "image",
                "original_width": size[0],
                "original_height": size[1],
                "is_positive": True,
                "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]},
            }
        ]
    }


class Bench:
    def __init__(self, work: Path, args: argparse.Namespace) -> None:
        self.work, self.args = work, args
        self.data_dir = work / "data"
        self.ls_url = f"http://127.0.0.1:{free_port()}"
        self.ml_url = f"http://127.0.0.1:{free_port()}"
        self.config_path = work / "geolabel.toml"
        self.config = parse_config(
            {
                "project": {"name": "bench ml"},
                "classes": [{"id": c.id, "name": c.name, "color": c.color} for c in CLASSES],
                "label_studio": {"url": self.ls_url},
                "ml_backend": {"url": self.ml_url, "password": PASSWORD, "threads": 4},
                "sam": {"checkpoint": str(random_checkpoint()), "device": "cpu", "precompute": 0},
                "paths": {"data_dir": str(self.data_dir)},
            },
            base_dir=work,
        )
        lines = [
            '[project]\nname = "bench ml"',
            *[f'[[classes]]\nid = {c.id}\nname = "{c.name}"\ncolor = "{c.color}"' for c in CLASSES],
            f'[label_studio]\nurl = "{self.ls_url}"',
            f'[ml_backend]\nurl = "{self.ml_url}"\npassword = "{PASSWORD}"\nthreads = 4',
            f'[sam]\ncheckpoint = "{random_checkpoint()}"\ndevice = "cpu"\nprecompute = 0',
            f'[paths]\ndata_dir = "{self.data_dir}"',
        ]
        self.config_path.write_text("\n\n".join(lines) + "\n")
        self.results: dict[str, Any] = {}

    def run(self) -> dict[str, Any]:
        state = self.data_dir / "label-studio"
        creds = load_or_create_credentials(state, "admin@bench.local")
        print("starting Label Studio (first start migrates: ~1 min)...", flush=True)
        with LocalLabelStudio(self.ls_url, state, self.data_dir, creds) as ls:
            client = LabelStudioClient(ls.url, creds.token)
            self.import_sample(client)
            self.precompute_throughput()
            backend = local_backend(self.config, self.config_path)
            backend.precompute = False
            print("starting the ML backend under gunicorn...", flush=True)
            with backend:
                ref = client.connect_ml_backend(
                    self.project_id, self.ml_url, "geolabel", "geolabel", PASSWORD
                )
                self.worker = next(c for c in psutil.Process(backend._server.pid).children())  # type: ignore[union-attr]
                self.results["worker_rss_mb_after_start"] = round(self.worker.memory_info().rss / 1e6)
                self.clicks(client, ref.id)
                self.add_model_version(client)
                self.load_test("load")  # pre-annotations computed by the backend
                self.store_predictions()
                self.load_test("load_stored")  # pre-annotations the round stored, served as stored
        return self.results

    def import_sample(self, client: LabelStudioClient) -> None:
        options = ImportOptions("bench ml", CLASSES, self.data_dir, self.data_dir, tile_size=512, overlap=64)
        with TileRegistry(self.config.registry_path) as registry:
            report = import_raster(SAMPLE_RASTER, options, registry, client)
            self.tiles = sorted(registry.tiles(), key=lambda t: t.task_id or 0)
        self.project_id = report.project_id
        print(f"imported {len(self.tiles)} tiles of {SAMPLE_RASTER.name}", flush=True)

    def precompute_throughput(self) -> None:
        backend = Backend(settings_from_config(self.config))
        count = self.args.precompute
        report = precompute(backend, self.tiles[:count])
        self.results["precompute"] = {
            "tiles": len(report.computed),
            "seconds": round(report.seconds, 1),
            "tiles_per_min": round(60 * len(report.computed) / report.seconds, 2),
        }
        # decoder alone, in process, on a cached embedding (independent of the weights' values)
        assert backend.cache is not None
        assert backend.sam is not None
        tile = self.tiles[0]
        embedding = backend.cache.get(backend.cache.key(tile.id, backend.image_path(tile)))
        assert embedding is not None
        rng = random.Random(1)
        times, post = [], []
        from geolabel.lsmodels import read_schema
        from importers.labelconfig import label_config
        from trainer.preannotations import mask_results

        schema = read_schema(label_config(CLASSES))
        for _ in range(30):
            prompt = Prompt(np.array([[rng.uniform(0, 512), rng.uniform(0, 512)]]), np.array([1]))
            started = time.perf_counter()
            segmentation = backend.sam.segment(embedding, prompt)
            times.append(time.perf_counter() - started)
            started = time.perf_counter()
            mask_results(segmentation.mask, "building", schema)
            post.append(time.perf_counter() - started)
        self.results["decoder_only"] = percentiles(times)
        self.results["post_processing_random_weight_masks"] = percentiles(post)
        realistic = np.zeros((512, 512), dtype=bool)
        rows, cols = np.mgrid[0:512, 0:512]
        realistic[((rows - 200) ** 2 + (cols - 260) ** 2) < 60**2] = True
        realistic[300:380, 100:220] = True
        started = time.perf_counter()
        for _ in range(30):
            mask_results(realistic, "building", schema)
        self.results["post_processing_two_blob_mask_ms"] = round(
            (time.perf_counter() - started) / 30 * 1000, 1
        )
        print(json.dumps({k: self.results[k] for k in ("precompute", "decoder_only")}), flush=True)

    def size(self, tile_index: int) -> tuple[int, int]:
        """Width and height of a tile's image (edge tiles are smaller than the tile size)."""
        window = self.tiles[tile_index].window
        return window.width, window.height

    def predict(self, tile_index: int, context: dict[str, Any] | None) -> httpx.Response:
        tile = self.tiles[tile_index]
        body: dict[str, Any] = {
            "tasks": [{"id": tile.task_id, "data": {}}],
            "project": f"{self.project_id}.0",
            "label_config": self.label_config,
        }
        if context is not None:
            body["params"] = {"context": context}
        return httpx.post(f"{self.ml_url}/predict", json=body, auth=("geolabel", PASSWORD), timeout=300)

    def clicks(self, client: LabelStudioClient, ml_id: int) -> None:
        self.label_config = client.project(self.project_id)["label_config"]
        rng = random.Random(2)
        cold_index = self.args.precompute  # first tile without an embedding
        started = time.perf_counter()
        response = self.predict(cold_index, keypoint_context(40, 60, self.size(cold_index)))
        self.results["cold_click_s"] = round(time.perf_counter() - started, 2)
        response.raise_for_status()
        warm = list(range(self.args.precompute + 1))
        times = []
        for _ in range(self.args.clicks):
            index = rng.choice(warm)
            started = time.perf_counter()
            self.predict(
                index, keypoint_context(rng.uniform(1, 99), rng.uniform(1, 99), self.size(index))
            ).raise_for_status()
            times.append(time.perf_counter() - started)
        self.results["warm_click_http_backend"] = percentiles(times)
        times = []
        for _ in range(20):
            index = rng.choice(warm)
            task = self.tiles[index].task_id
            started = time.perf_counter()
            client.interactive(
                ml_id, task, keypoint_context(rng.uniform(1, 99), rng.uniform(1, 99), self.size(index))
            )
            times.append(time.perf_counter() - started)
        self.results["warm_click_through_label_studio"] = percentiles(times)
        print(
            json.dumps(
                {
                    k: self.results[k]
                    for k in ("cold_click_s", "warm_click_http_backend", "warm_click_through_label_studio")
                }
            ),
            flush=True,
        )

    def add_model_version(self, client: LabelStudioClient) -> None:
        manifest = ModelManifest(
            version="bench-v1",
            created="2026-11-22T00:00:00+00:00",
            classes=[LabelClass(id=c.id, name=c.name, color=c.color) for c in CLASSES],
            input=InputSpec(bands=[1, 2, 3], mean=[120.0] * 3, std=[50.0] * 3),
        )
        store = ModelStore(self.config.models_dir)
        if "bench-v1" not in store.versions():
            torch.manual_seed(0)
            store.save(manifest, build_model(manifest).state_dict())
        store.activate("bench-v1")

    def store_predictions(self) -> None:
        """What a round leaves behind: the active version's prediction of every tile, stored."""
        with TileRegistry(self.config.registry_path) as registry:
            tiles = registry.tiles(status=TileStatus.IMPORTED)
            predict_missing(self.config.with_scheduler("none"), registry, "bench-v1", tiles)

    def load_test(self, key: str) -> None:
        rng = random.Random(3)
        warm = list(range(self.args.precompute + 1))
        plan = [
            ("click" if rng.random() < 0.6 else "predict", rng.choice(warm)) for _ in range(self.args.load)
        ]
        timings: dict[str, list[float]] = {"click": [], "predict": []}
        errors: list[str] = []
        rss: list[int] = []
        stop = threading.Event()

        def sample() -> None:
            while not stop.is_set():
                rss.append(self.worker.memory_info().rss)
                stop.wait(0.2)

        def one(item: tuple[str, int]) -> None:
            kind, index = item
            context = (
                keypoint_context(rng.uniform(1, 99), rng.uniform(1, 99), self.size(index))
                if kind == "click"
                else None
            )
            started = time.perf_counter()
            try:
                response = self.predict(index, context)
                if response.status_code != 200:
                    errors.append(f"{kind} {response.status_code} {response.text[:100]}")
            except httpx.HTTPError as exc:
                errors.append(f"{kind} {type(exc).__name__}")
            timings[kind].append(time.perf_counter() - started)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        started = time.perf_counter()
        with ThreadPoolExecutor(self.args.clients) as pool:
            list(pool.map(one, plan))
        wall = time.perf_counter() - started
        stop.set()
        self.results[key] = {
            "requests": len(plan),
            "clients": self.args.clients,
            "wall_s": round(wall, 1),
            "requests_per_s": round(len(plan) / wall, 2),
            "errors": len(errors),
            "error_samples": errors[:5],
            "click": percentiles(timings["click"]),
            "predict": percentiles(timings["predict"]),
            "worker_rss_mb_min_max": [round(min(rss) / 1e6), round(max(rss) / 1e6)],
        }
        print(key, json.dumps(self.results[key]), flush=True)


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--clicks", type=int, default=100, help="sequential warm clicks (default 100)")
    parser.add_argument("--load", type=int, default=240, help="requests in the mixed load test (default 240)")
    parser.add_argument("--clients", type=int, default=8, help="concurrent clients (default 8)")
    parser.add_argument("--precompute", type=int, default=4, help="tiles embedded ahead (default 4)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="bench-ml-") as tmp:
        results = Bench(Path(tmp), args).run()
    results["host"] = {
        "cpus": psutil.cpu_count(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_ml_backend.json").write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
