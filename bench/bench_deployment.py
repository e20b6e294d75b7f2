"""Deployment load bench: simulated annotators against the whole topology, PostgreSQL and SQLite.

Each run starts :class:`geolabel.topology.Topology` (Label Studio 1.23.2 under gunicorn with SSRF
protection on, the ML backend under gunicorn with 2 workers on 127.0.0.2, one round scheduler, one
embedding job), imports the sample orthophoto as 16 tiles of 256 px (one task each; each task takes
as many annotators as the load needs: Label Studio's ``maximum_annotations``), connects the backend,
and signs up ``--annotators`` Label Studio users through the organisation's invite link, as real
annotators join (each then reads its own API token). The admin labels ``--prelabel`` tasks and one round
runs (``geolabel train --now``), so the other tasks carry the model's pre-annotations, as after a
project's first round. While the scheduler runs rounds, every annotator
is one bounded client (one request at a time, no think time) that repeats ``--iterations`` times:

1. ``next``: ``GET /api/projects/{id}/next/`` (Label Studio picks and locks the user's next task and
   serialises its pre-annotations, asking the backend when the project's model version is its own);
2. ``open``: ``GET /api/tasks/{id}/`` (the task with its predictions: the pre-annotation);
3. ``click``: ``POST /api/ml/{backend}/interactive-annotating`` with a SAM key point, as the labelling
   page sends it (``warm`` when the tile's embedding was cached before the click, else ``cold``);
4. ``submit``: ``POST /api/tasks/{id}/annotations/`` with the SAM click's brush region and a polygon;
   Label Studio's webhook then tells the backend, which records an annotation event in the registry.

SAM is the real vit_b architecture with random weights (``bench/out/sam_vit_b_random_seed0.pth``, as in
``bench_ml_backend.py``). Embeddings cost ~10-14 s per tile on a 2-core CPU whatever the tile size, so
a one-off ``geolabel embed --limit N`` embeds every task's tile before the scheduler and the embedding
job start (then ``geolabel embed --follow`` finds them cached and only watches the queue).
Embeddings are kept in ``bench/out/deploy_embeddings/`` by the SHA-256 of the tile's PNG and copied
into each run's cache under the run's own key (the cache key stamps the file's mtime): the second run,
and later invocations, reuse the first one's encoder work. The JSON says how many were computed.

Usage: .venv/bin/python bench/bench_deployment.py [--annotators 20] [--iterations 3]
Writes bench/out/bench_deployment.json.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import os
import random
import secrets
import shutil
import signal
import sqlite3
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from bench_ml_backend import keypoint_context, percentiles, random_checkpoint  # noqa: E402

from geolabel.config import TOKEN_ENV  # noqa: E402
from geolabel.local import SAMPLE_RASTER  # noqa: E402
from geolabel.paths import PRIVATE_UMASK  # noqa: E402
from geolabel.stack import spawn, terminate  # noqa: E402
from geolabel.topology import Topology, postgres_problem  # noqa: E402
from georef.registry import TileRecord, TileRegistry  # noqa: E402
from ml_backend.embeddings import EmbeddingCache  # noqa: E402
from ml_backend.sam import checkpoint_identity  # noqa: E402
from trainer.rounds import RoundStore  # noqa: E402

OUT = ROOT / "bench" / "out"
KINDS = ("next", "open", "click_warm", "click_cold", "submit")
BRUSH, POLYGON = "label_brush", "label_polygon"


class BenchError(RuntimeError):
    """A step of the bench could not be done (not a measured request failing)."""


@dataclass(frozen=True)
class Annotator:
    """One Label Studio user of the organisation (the password and token never leave the process)."""

    email: str
    password: str
    token: str


@dataclass
class Recorder:
    """Timings and errors per request type, shared by the annotator threads."""

    timings: dict[str, list[float]] = field(default_factory=lambda: defaultdict(list))
    errors: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    submitted: list[int] = field(default_factory=list)
    with_predictions: int = 0
    no_task: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)

    def call(self, kind: str, send: Callable[[], httpx.Response]) -> httpx.Response | None:
        """Send one request, time it, and record it as an error unless it is a 2xx."""
        started = time.perf_counter()
        try:
            response = send()
        except httpx.HTTPError as exc:
            self._add(kind, time.perf_counter() - started, f"{type(exc).__name__}: {exc}"[:200])
            return None
        error = None if response.is_success else f"{response.status_code} {response.text[:160]}"
        self._add(kind, time.perf_counter() - started, error)
        return response

    def _add(self, kind: str, seconds: float, error: str | None) -> None:
        with self.lock:
            self.timings[kind].append(seconds)
            if error is not None:
                self.errors[kind].append(error)

    def fail(self, kind: str, message: str) -> None:
        """Record an answer that was a 2xx but not a valid one (e.g. a click answering ``errors``)."""
        with self.lock:
            self.errors[kind].append(message[:200])


# annotators ------------------------------------------------------------------------------------


def sign_up(url: str, invite_path: str, email: str) -> Annotator:
    """Join the organisation through its invite link as a browser does, then read the user's token.

    Raises:
        BenchError: if Label Studio refuses the sign-up or gives no token.
    """
    password = secrets.token_urlsafe(16)
    with httpx.Client(base_url=url, timeout=120.0) as browser:
        browser.get(invite_path).raise_for_status()  # sets the CSRF cookie
        csrf = browser.cookies.get("csrftoken") or ""
        form = {"email": email, "password": password, "csrfmiddlewaretoken": csrf}
        response = browser.post(invite_path, data=form, headers={"Referer": url + invite_path})
        if response.status_code not in (302, 303):
            raise BenchError(f"sign-up of {email} answered {response.status_code}")
        answer = browser.get("/api/current-user/token")
        if answer.status_code != 200 or not answer.json().get("token"):
            raise BenchError(f"no API token for {email}: {answer.status_code}")
        return Annotator(email, password, str(answer.json()["token"]))


def set_overlap(topo: Topology, args: argparse.Namespace, tasks: int) -> int:
    """Annotators per task (Label Studio's ``maximum_annotations``): enough slots for the whole load."""
    # one slot of slack per task: Label Studio locks a task while an annotator holds it, so with every
    # slot needed the last annotators can find only locked tasks ("There are no tasks for ...", 404)
    needed = -(-(args.annotators * args.iterations + args.prelabel) // tasks)  # ceiling
    overlap = int(args.overlap or 1 + max(1, needed))
    headers = {"Authorization": f"Token {topo.token}"}
    url = f"{topo.label_studio_url}/api/projects/{topo.project_id}/"
    httpx.patch(url, json={"maximum_annotations": overlap}, headers=headers, timeout=60.0).raise_for_status()
    return overlap


def sign_up_all(topo: Topology, count: int) -> tuple[list[Annotator], str]:
    """Sign ``count`` annotators up; return them and the organisation's invite token (a secret too)."""
    headers = {"Authorization": f"Token {topo.token}"}
    invite = httpx.get(f"{topo.label_studio_url}/api/invite", headers=headers, timeout=60.0)
    invite.raise_for_status()
    path, token = str(invite.json()["invite_url"]), str(invite.json()["token"])
    run = secrets.token_hex(3)
    annotators = [
        sign_up(topo.label_studio_url, path, f"annotator{i:02d}.{run}@geolabel.test") for i in range(count)
    ]
    if len({a.token for a in annotators} | {topo.token}) != count + 1:
        raise BenchError("annotators do not have distinct API tokens")
    return annotators, token


# embeddings ------------------------------------------------------------------------------------


class Embeddings:
    """The run's SAM cache and the bench's store of embeddings keyed by tile PNG content."""

    def __init__(self, topo: Topology, store: Path, identity: str) -> None:
        config = topo.config
        self.data_dir = config.data_dir
        self.cache = EmbeddingCache(config.embedding_cache_dir, identity)
        self.store = store / identity
        self.store.mkdir(parents=True, exist_ok=True)

    def image(self, tile: TileRecord) -> Path:
        if tile.image_path is None:
            raise BenchError(f"tile {tile.id} has no display image")
        return self.data_dir / tile.image_path

    def cached(self, tile: TileRecord) -> bool:
        return self.cache.path(self.cache.key(tile.id, self.image(tile))).is_file()

    def _stored(self, tile: TileRecord) -> Path:
        digest = hashlib.sha256(self.image(tile).read_bytes()).hexdigest()
        return self.store / f"{digest}.npz"

    def seed(self, tiles: list[TileRecord]) -> int:
        """Copy stored embeddings of identical tile images into the run's cache; return how many."""
        seeded = 0
        for tile in tiles:
            stored = self._stored(tile)
            if stored.is_file() and not self.cached(tile):
                shutil.copyfile(stored, self.cache.path(self.cache.key(tile.id, self.image(tile))))
                seeded += 1
        return seeded

    def keep(self, tiles: list[TileRecord]) -> int:
        """Store the run's embeddings by image content for later runs; return how many were new."""
        kept = 0
        for tile in tiles:
            stored = self._stored(tile)
            if self.cached(tile) and not stored.is_file():
                shutil.copyfile(self.cache.path(self.cache.key(tile.id, self.image(tile))), stored)
                kept += 1
        return kept

    def wait(self, tiles: list[TileRecord], timeout: float) -> dict[str, Any]:
        """Wait until every tile is embedded (by the topology's embedding job) or ``timeout``."""
        started = time.monotonic()
        missing = [t for t in tiles if not self.cached(t)]
        before = len(missing)
        if not missing:
            return {"missing_after_embed_once": 0, "still_missing": 0}
        while missing and time.monotonic() - started < timeout:
            time.sleep(2.0)
            missing = [t for t in missing if not self.cached(t)]
            print(f"  embeddings: {len(tiles) - len(missing)}/{len(tiles)}", end="\r", flush=True)
        seconds = time.monotonic() - started
        print()
        return {
            "missing_after_embed_once": before,
            "computed_by_embed_job": before - len(missing),
            "still_missing": len(missing),
            "wait_s": round(seconds, 1),
        }


def embed_once(topo: Topology, limit: int) -> dict[str, Any]:
    """``geolabel embed --limit N`` before the jobs start (its log joins the topology's logs).

    Raises:
        BenchError: if it fails.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEOLABEL_", "LABEL_STUDIO_"))}
    env[TOKEN_ENV] = topo.token  # it reads the annotation queue from Label Studio
    command = [sys.executable, "-m", "geolabel.cli", "--config", str(topo.config_path)]
    log = topo.log_dir / "embed-once.log"
    started = time.perf_counter()
    process = spawn([*command, "embed", "--limit", str(limit)], env, log, umask=PRIVATE_UMASK)
    try:
        code = process.wait()
    finally:
        terminate(process)  # interrupted (SIGTERM, Ctrl-C): never leave it behind
    if code != 0:
        raise BenchError(f"geolabel embed --limit {limit} exited with {code}; see {log}")
    return {"embed_once_s": round(time.perf_counter() - started, 1)}


def warm_up_round(topo: Topology, load: Load, count: int) -> dict[str, Any]:
    """The admin labels ``count`` tasks and one round runs (``geolabel train --now``) before the load.

    The round pushes its predictions for the other tasks and sets the project's model version, so
    annotators open tasks with a pre-annotation, as they would after the project's first round.

    Raises:
        BenchError: if the round fails.
    """
    if count <= 0:
        return {"prelabelled": 0, "annotation_ids": []}
    client, rng = topo.client(), random.Random(99)
    ids = [
        client.create_annotation(task_id, [load.polygon(task_id, rng)])
        for task_id in sorted(load.tiles)[:count]
    ]
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEOLABEL_", "LABEL_STUDIO_"))}
    env[TOKEN_ENV] = topo.token
    command = [sys.executable, "-m", "geolabel.cli", "--config", str(topo.config_path), "train", "--now"]
    log = topo.log_dir / "warm-up-round.log"
    started = time.perf_counter()
    process = spawn(command, env, log, umask=PRIVATE_UMASK)
    try:
        code = process.wait()
    finally:
        terminate(process)
    if code != 0:
        raise BenchError(f"the warm-up round exited with {code}; see {log}")
    return {
        "prelabelled": len(ids),
        "annotation_ids": ids,
        "round_s": round(time.perf_counter() - started, 1),
    }


# resident memory ---------------------------------------------------------------------------------


class MemorySampler(threading.Thread):
    """Peak RSS per service every ``interval`` s (gunicorn masters + workers), PostgreSQL backends too."""

    def __init__(self, topo: Topology, interval: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.topo, self.interval = topo, interval
        self.peak: dict[str, int] = defaultdict(int)
        self.peak_total = 0
        self.samples = 0
        self.stop = threading.Event()

    def run(self) -> None:
        while not self.stop.is_set():
            rss = dict(self.topo.rss())
            if self.topo.db is not None:
                rss["postgresql (db backends)"] = _postgres_rss(self.topo.db.name)
            for name, value in rss.items():
                self.peak[name] = max(self.peak[name], value)
            self.peak_total = max(self.peak_total, sum(rss.values()))
            self.samples += 1
            self.stop.wait(self.interval)

    def report(self) -> dict[str, Any]:
        peaks = {name: round(value / 1e6) for name, value in sorted(self.peak.items())}
        return {"peak_mb": peaks, "peak_total_mb": round(self.peak_total / 1e6), "samples": self.samples}


def _postgres_rss(database: str) -> int:
    """RSS of the PostgreSQL backend processes serving ``database`` (their title names it)."""
    total = 0
    for process in psutil.process_iter(["name", "cmdline"]):
        try:
            title = " ".join(process.info["cmdline"] or [])
            if title.startswith("postgres:") and f" {database} " in f"{title} ":
                total += process.memory_info().rss
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return total


# the load --------------------------------------------------------------------------------------


class Load:
    """The annotator threads of one run."""

    def __init__(self, topo: Topology, tiles: dict[int, TileRecord], embeddings: Embeddings) -> None:
        self.topo, self.tiles, self.embeddings = topo, tiles, embeddings
        self.project_id, self.backend_id = int(topo.project_id or 0), int(topo.ml_backend_id or 0)
        self.recorder = Recorder()

    def run(self, annotators: list[Annotator], iterations: int) -> float:
        """Run every annotator in its own thread; return the wall time."""
        threads = [
            threading.Thread(target=self.annotate, args=(a, iterations, random.Random(i)), daemon=True)
            for i, a in enumerate(annotators)
        ]
        started = time.perf_counter()
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        return time.perf_counter() - started

    def annotate(self, annotator: Annotator, iterations: int, rng: random.Random) -> None:
        headers = {"Authorization": f"Token {annotator.token}"}
        with httpx.Client(base_url=self.topo.label_studio_url, headers=headers, timeout=600.0) as http:
            for _ in range(iterations):
                if not self.iteration(http, rng):
                    return

    def iteration(self, http: httpx.Client, rng: random.Random) -> bool:
        """One task: next, open, click, submit. False when there is no next task."""
        rec = self.recorder
        response = rec.call("next", lambda: http.get(f"/api/projects/{self.project_id}/next/"))
        if response is None or response.status_code == 404:
            with rec.lock:
                rec.no_task += response is not None
            return False
        if not response.is_success:
            return True
        task_id = int(response.json()["id"])
        opened = rec.call("open", lambda: http.get(f"/api/tasks/{task_id}/"))
        if opened is not None and opened.is_success and opened.json().get("predictions"):
            with rec.lock:
                rec.with_predictions += 1
        regions = self.click(http, task_id, rng)
        body = {"result": [*regions, self.polygon(task_id, rng)], "lead_time": 1.0}
        submitted = rec.call("submit", lambda: http.post(f"/api/tasks/{task_id}/annotations/", json=body))
        if submitted is not None and submitted.is_success:
            with rec.lock:
                rec.submitted.append(int(submitted.json()["id"]))
        return True

    def size(self, task_id: int) -> tuple[int, int]:
        window = self.tiles[task_id].window
        return window.width, window.height

    def click(self, http: httpx.Client, task_id: int, rng: random.Random) -> list[dict[str, Any]]:
        """A SAM key-point click through Label Studio; return the brush regions it answered."""
        kind = "click_warm" if self.embeddings.cached(self.tiles[task_id]) else "click_cold"
        context = keypoint_context(rng.uniform(5, 95), rng.uniform(5, 95), self.size(task_id))
        body = {"task": task_id, "context": context}
        path = f"/api/ml/{self.backend_id}/interactive-annotating"
        response = self.recorder.call(kind, lambda: http.post(path, json=body))
        if response is None or not response.is_success:
            return []
        answer = response.json()
        result = (answer.get("data") or {}).get("result") if isinstance(answer, dict) else None
        if not result:
            self.recorder.fail(kind, f"no SAM result: {json.dumps(answer)[:160]}")
            return []
        return [r for r in result if r.get("from_name") == BRUSH]

    def polygon(self, task_id: int, rng: random.Random) -> dict[str, Any]:
        """A quadrilateral of class ``building`` around a random centre, in Label Studio percents."""
        width, height = self.size(task_id)
        x, y, r = rng.uniform(25, 75), rng.uniform(25, 75), rng.uniform(5, 20)
        points = [[x - r, y - r], [x + r, y - r], [x + r, y + r], [x - r, y + r]]
        return {
            "id": uuid.uuid4().hex[:10],
            "type": "polygonlabels",
            "from_name": POLYGON,
            "to_name": "image",
            "original_width": width,
            "original_height": height,
            "image_rotation": 0,
            "value": {"points": points, "closed": True, "polygonlabels": ["building"]},
        }

    def report(self, wall: float) -> dict[str, Any]:
        rec = self.recorder
        requests = sum(len(v) for v in rec.timings.values())
        return {
            "wall_s": round(wall, 1),
            "requests": requests,
            "requests_per_s": round(requests / wall, 2) if wall else None,
            "latency": {k: percentiles(rec.timings[k]) for k in KINDS if rec.timings.get(k)},
            "errors": {k: len(rec.errors.get(k, [])) for k in KINDS},
            "error_samples": {k: v[:3] for k, v in rec.errors.items() if v},
            "opened_with_predictions": rec.with_predictions,
            "no_task_left": rec.no_task,
            "annotations_submitted": len(rec.submitted),
        }


# after the load --------------------------------------------------------------------------------


def wait_for_rounds(topo: Topology, quiet_s: float, timeout: float) -> None:
    """Wait until no round runs and none started for ``quiet_s`` seconds (or ``timeout``)."""
    started = last_busy = time.monotonic()
    while time.monotonic() - started < timeout:
        rounds = read_rounds(topo)
        if any(r["status"] == "running" for r in rounds):
            last_busy = time.monotonic()
        elif time.monotonic() - last_busy > quiet_s:
            return
        time.sleep(2.0)


def read_rounds(topo: Topology) -> list[dict[str, Any]]:
    """The project's rounds: status, trigger, step, duration, error."""
    with RoundStore(topo.config.registry_path) as store:
        records = store.rounds(int(topo.project_id or 0))
    rounds = []
    for r in records:
        duration = None
        if r.ended:
            duration = (_time(r.ended) - _time(r.started)).total_seconds()
        rounds.append(
            {
                "number": r.number, "status": str(r.status), "trigger": r.trigger, "started": r.started,
                "duration_s": duration, "labelled_tiles": r.labelled_tiles, "step": r.step,
                "model_version": r.model_version, "error": r.error,
            }
        )  # fmt: skip
    return rounds


def _time(text: str) -> Any:
    import datetime as dt

    return dt.datetime.fromisoformat(text)


def count_annotations(topo: Topology, submitted: list[int]) -> dict[str, Any]:
    """Annotations submitted, in Label Studio (per task, by the API) and as events in the registry."""
    headers = {"Authorization": f"Token {topo.token}"}
    url = f"{topo.label_studio_url}/api/projects/{topo.project_id}/"
    project = httpx.get(url, headers=headers, timeout=60.0).json()
    in_tasks = sum(t.annotations for t in topo.client().tasks(int(topo.project_id or 0)))
    with sqlite3.connect(f"file:{topo.config.registry_path}?mode=ro", uri=True) as conn:
        events, distinct, ids = conn.execute(
            "SELECT COUNT(*), COUNT(DISTINCT annotation_id), GROUP_CONCAT(annotation_id) "
            "FROM annotation_events WHERE project_id = ? AND action = 'ANNOTATION_CREATED'",
            (topo.project_id,),
        ).fetchone()
    recorded = {int(i) for i in (ids or "").split(",") if i}
    return {
        "submitted_2xx": len(submitted),
        "label_studio_project_total": project.get("total_annotations_number"),
        "label_studio_tasks_sum": in_tasks,
        "registry_created_events": events,
        "registry_distinct_annotations": distinct,
        "submitted_without_event": len(set(submitted) - recorded),
        "nothing_lost": len(submitted) == in_tasks == distinct and not set(submitted) - recorded,
    }


def check_secrets(topo: Topology, annotators: list[Annotator], invite: str) -> dict[str, Any]:
    """Grep every log of the topology for every secret; say which log holds which kind, if any."""
    named = {"admin/backend secrets (topology)": topo.secrets(), "organisation invite token": (invite,)}
    named["annotator tokens"] = tuple(a.token for a in annotators)
    named["annotator passwords"] = tuple(a.password for a in annotators)
    logs = topo.log_paths()
    found: dict[str, list[str]] = {}
    for name, path in logs.items():
        text = path.read_bytes()
        hits = [kind for kind, values in named.items() if any(v and v.encode() in text for v in values)]
        if hits:
            found[name] = hits
    return {
        "logs": {name: path.stat().st_size for name, path in logs.items()},
        "secrets_checked": sum(len(v) for v in named.values()),
        "found": found,
    }


# one run -------------------------------------------------------------------------------------


def settings(args: argparse.Namespace, tasks: int) -> dict[str, dict[str, object]]:
    return {
        "tiling": {"size": args.tile_size, "overlap": 0},
        "sam": {"precompute": tasks, "precompute_interval": 5.0},
        "trainer": {"threshold": args.threshold, "check_interval": args.check_interval},
    }


def run(database: str, args: argparse.Namespace, checkpoint: Path, identity: str) -> dict[str, Any]:
    """One run of the topology on ``database``: set-up, embeddings, load, rounds, counts, secrets."""
    tasks = args.annotators * args.iterations + 8  # at most (sam.precompute)
    with tempfile.TemporaryDirectory(prefix=f"bench-deploy-{database}-") as tmp:
        started = time.perf_counter()
        topo = Topology(
            Path(tmp) / "topo", database=database,  # type: ignore[arg-type]
            sam_checkpoint=checkpoint, settings=settings(args, tasks),
        )  # fmt: skip
        with topo:
            result: dict[str, Any] = {"database": database}
            result["label_studio_workers"] = topo.label_studio_workers
            topo.import_rasters([args.raster])
            with TileRegistry(topo.config.registry_path) as registry:
                tiles = {t.task_id: t for t in registry.tiles() if t.task_id is not None}
            embeddings = Embeddings(topo, args.embedding_store, identity)
            result["tasks"] = len(tiles)
            result["embeddings_seeded"] = embeddings.seed(list(tiles.values()))
            topo.connect_backend()
            result["maximum_annotations"] = set_overlap(topo, args, len(tiles))
            annotators, invite = sign_up_all(topo, args.annotators)
            result["setup_s"] = round(time.perf_counter() - started, 1)
            print(f"[{database}] {len(tiles)} tasks, {len(annotators)} annotators; embedding...", flush=True)
            result["embedding"] = embed_once(topo, len(tiles))
            embeddings.keep(list(tiles.values()))
            load = Load(topo, tiles, embeddings)
            print(f"[{database}] warm-up round on {args.prelabel} labelled tasks...", flush=True)
            warm_up = warm_up_round(topo, load, args.prelabel)
            result["warm_up"] = {k: v for k, v in warm_up.items() if k != "annotation_ids"}
            topo.start_jobs()
            result["embedding"].update(embeddings.wait(list(tiles.values()), args.embed_timeout))
            result.update(measure(topo, load, annotators, args, warm_up["annotation_ids"]))
            result["embeddings_kept_for_later_runs"] = embeddings.keep(list(tiles.values()))
            result["secrets"] = check_secrets(topo, annotators, invite)
        result["total_s"] = round(time.perf_counter() - started, 1)
    return result


def measure(
    topo: Topology, load: Load, annotators: list[Annotator], args: argparse.Namespace, prelabelled: list[int]
) -> dict[str, Any]:
    """The load phase with the memory sampler, then the rounds settle and everything is counted."""
    sampler = MemorySampler(topo)
    sampler.start()
    print(f"[{topo.database}] load: {len(annotators)} annotators x {args.iterations} tasks", flush=True)
    load_started = time.time()
    loadavg_before = os.getloadavg()
    wall = load.run(annotators, args.iterations)
    load_ended = time.time()
    wait_for_rounds(topo, args.check_interval + 10, args.settle)
    sampler.stop.set()
    sampler.join()
    rounds = read_rounds(topo)
    for r in rounds:
        start = _time(r["started"]).timestamp()
        r["when"] = (
            "before load"
            if start < load_started - 1
            else ("during load" if start <= load_ended + 1 else "after load")
        )
    return {
        "load": load.report(wall),
        "counts": count_annotations(topo, [*prelabelled, *load.recorder.submitted]),
        "rounds": rounds,
        "rss": sampler.report(),
        "host_load_average_1m_before_after": [round(loadavg_before[0], 1), round(os.getloadavg()[0], 1)],
    }


# output ----------------------------------------------------------------------------------------


def table(results: list[dict[str, Any]]) -> str:
    """The runs side by side as a Markdown table."""
    names = [r["database"] for r in results]
    rows = [("measure", *names), ("---",) * (len(names) + 1)]

    def row(label: str, get: Callable[[dict[str, Any]], object]) -> None:
        rows.append((label, *(str(_safe(get, r)) for r in results)))

    row("tasks / annotators x iterations", lambda r: f"{r['tasks']} / {r['annotators']}")
    row("Label Studio app processes", lambda r: r["label_studio_workers"])
    row("annotators per task (maximum_annotations)", lambda r: r["maximum_annotations"])
    for kind in KINDS:
        row(f"{kind} p50 / p95 / max ms (n)", functools.partial(_lat, kind))
    row("errors by type", lambda r: r["load"]["errors"])
    row("load wall s / requests / req/s", _throughput)
    row("tasks opened with a pre-annotation", lambda r: r["load"]["opened_with_predictions"])
    row("submitted = in Label Studio = registry events", _counts)
    row("rounds (number status duration_s when)", _rounds)
    row("peak RSS MB per service", lambda r: r["rss"]["peak_mb"])
    row("peak RSS MB total", lambda r: r["rss"]["peak_total_mb"])
    row("embeddings seeded / computed / missing before load", _embeddings)
    row("secrets found in logs", lambda r: r["secrets"]["found"] or "none")
    row("run total s", lambda r: r["total_s"])
    return "\n".join("| " + " | ".join(cells) + " |" for cells in rows)


def _throughput(r: dict[str, Any]) -> str:
    load = r["load"]
    return f"{load['wall_s']} / {load['requests']} / {load['requests_per_s']}"


def _counts(r: dict[str, Any]) -> str:
    c = r["counts"]
    same = " = ".join(
        str(c[k]) for k in ("submitted_2xx", "label_studio_tasks_sum", "registry_distinct_annotations")
    )
    return same + (" (nothing lost)" if c["nothing_lost"] else " (MISMATCH)")


def _rounds(r: dict[str, Any]) -> str:
    return (
        "; ".join(f"#{x['number']} {x['status']} {x['duration_s']} {x['when']}" for x in r["rounds"])
        or "none"
    )


def _embeddings(r: dict[str, Any]) -> str:
    e = r["embedding"]
    computed = r["tasks"] - r["embeddings_seeded"] - e["still_missing"]
    return f"{r['embeddings_seeded']} / {computed} in {e['embed_once_s']} s / {e['still_missing']}"


def _lat(kind: str, r: dict[str, Any]) -> str:
    stats = r["load"]["latency"].get(kind)
    if not stats:
        return "-"
    return f"{stats['p50_ms']:.0f} / {stats['p95_ms']:.0f} / {stats['max_ms']:.0f} ({stats['n']})"


def _safe(get: Callable[[dict[str, Any]], object], result: dict[str, Any]) -> object:
    try:
        return get(result)
    except (KeyError, TypeError):
        return "-"


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--annotators", type=int, default=20, help="simulated annotators (default 20)")
    parser.add_argument("--iterations", type=int, default=3, help="tasks each annotator does (default 3)")
    parser.add_argument("--databases", default="postgresql,sqlite", help="runs, in order (default both)")
    parser.add_argument("--raster", type=Path, default=SAMPLE_RASTER, help="raster to import")
    parser.add_argument("--tile-size", type=int, default=256, help="tiling.size (default 256: 16 tasks)")
    parser.add_argument(
        "--overlap", type=int, default=0, help="annotators per task (default: enough for the load)"
    )
    parser.add_argument(
        "--prelabel",
        type=int,
        default=4,
        help="tasks the admin labels for a round before the load (default 4)",
    )
    parser.add_argument("--threshold", type=int, default=20, help="trainer.threshold (default 20)")
    parser.add_argument("--check-interval", type=float, default=15.0, help="trainer.check_interval (s)")
    parser.add_argument("--embed-timeout", type=float, default=60.0, help="max wait for embeddings (s)")
    parser.add_argument("--settle", type=float, default=300.0, help="max wait for rounds after the load (s)")
    parser.add_argument("--embedding-store", type=Path, default=OUT / "deploy_embeddings")
    args = parser.parse_args()
    databases = [d.strip() for d in args.databases.split(",") if d.strip()]
    if "postgresql" in databases and (problem := postgres_problem()):
        print(f"skipping the PostgreSQL run: {problem}", file=sys.stderr)
        databases.remove("postgresql")
    checkpoint = random_checkpoint()
    identity = checkpoint_identity("vit_b", checkpoint)
    started = time.perf_counter()
    results = []
    for database in databases:
        result = run(database, args, checkpoint, identity)
        result["annotators"] = f"{args.annotators} x {args.iterations}"
        results.append(result)
    report = {
        "runs": results,
        "wall_s": round(time.perf_counter() - started, 1),
        "host": {"cpus": psutil.cpu_count(), "memory_gb": round(psutil.virtual_memory().total / 2**30, 1)},
        "args": {k: str(v) for k, v in vars(args).items()},
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "bench_deployment.json").write_text(json.dumps(report, indent=2))
    print(table(results))
    print(f"wall time {report['wall_s']} s; details in {OUT / 'bench_deployment.json'}")
    return 0


if __name__ == "__main__":
    # a SIGTERM (e.g. `timeout`) unwinds the topology's context manager: no orphaned servers
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    raise SystemExit(main())
