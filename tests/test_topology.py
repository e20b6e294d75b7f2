"""The deployment's topology for real without containers: Label Studio on PostgreSQL with two app
processes and SSRF protection on, the ML backend under gunicorn with two workers on its own loopback
address, one round scheduler, one embedding job (:mod:`geolabel.topology`).

One topology is started for the module (about two minutes on two cores) and shared by the tests.
"""

from __future__ import annotations

import itertools
import re
import stat
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TypeVar

import httpx
import numpy as np
import numpy.typing as npt
import psutil
import pytest

from geolabel.errors import StackError
from geolabel.local import SAMPLE_RASTER
from geolabel.stack import loopback_address
from geolabel.topology import EMBEDDER, LABEL_STUDIO, ML_BACKEND, SCHEDULER, Topology
from georef.brush import rle_to_mask
from georef.labelstudio import brush_result
from georef.registry import TileRegistry
from tests.conftest import free_port, keypoint, require_postgres

pytestmark = pytest.mark.labelstudio
T = TypeVar("T")


# helpers shared with test_topology_faults ------------------------------------------------------------


def start_topology(folder: Path, checkpoint: Path, **trainer: object) -> Topology:
    """A started topology on PostgreSQL with the sample raster imported, SAM on, the backend connected."""
    require_postgres()
    topo = Topology(folder, rasters=[SAMPLE_RASTER], sam_checkpoint=checkpoint, settings={"trainer": trainer})
    try:
        topo.start()
    except BaseException:
        topo.stop()
        raise
    return topo


def wait_for(what: str, probe: Callable[[], T | None], timeout: float = 120.0, every: float = 0.5) -> T:
    """Poll ``probe`` until it returns something truthy; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        try:
            value = probe()
            if value:
                return value
        except Exception as exc:  # a service still coming back
            last = exc
        time.sleep(every)
    pytest.fail(f"{what}: not within {timeout:.0f} s (last error: {last})")


def task_ids(topo: Topology) -> list[int]:
    """The project's task ids, in id order."""
    assert topo.project_id is not None
    return sorted(t.task_id for t in topo.client().tasks(topo.project_id))


def event_count(topo: Topology) -> int:
    """Annotation events the backend's webhook recorded in the registry."""
    assert topo.project_id is not None
    with TileRegistry(topo.config.registry_path) as registry:
        return len(registry.annotation_events(topo.project_id))


_stripes = itertools.count()


def submit(topo: Topology, task_id: int) -> int:
    """Submit an annotation through Label Studio's API (a building stripe and water); return its id."""
    offset = next(_stripes) % 8 * 16
    mask = np.zeros((256, 256), dtype=bool)
    mask[offset : offset + 40, 20:200] = True
    water = np.zeros_like(mask)
    water[200:250, 100:220] = True
    regions = [
        brush_result(mask, "building", "label_brush", "image"),
        brush_result(water, "water", "label_brush", "image"),
    ]
    return topo.client().create_annotation(task_id, regions)


def sam_mask(topo: Topology, task_id: int, timeout: float = 300.0) -> npt.NDArray[np.bool_]:
    """A SAM click through Label Studio's own interactive endpoint; the brush mask it returns."""
    assert topo.ml_backend_id is not None
    data = topo.client(timeout=timeout).interactive(
        topo.ml_backend_id, task_id, {"result": [keypoint(30, 40)]}
    )["data"]
    (brush,) = [r for r in data["result"] if r["type"] == "brushlabels"]
    assert brush["value"]["brushlabels"] == ["building"]
    return rle_to_mask(brush["value"]["rle"], 256, 256)


def api_get(topo: Topology, path: str, token: str | None = None) -> httpx.Response:
    """GET a Label Studio API path with the admin's token (or ``token``), on a fresh connection."""
    headers = {"Authorization": f"Token {token or topo.token}"}
    return httpx.get(f"{topo.label_studio_url}{path}", headers=headers, timeout=30)


def served_by(topo: Topology, path: str) -> set[int]:
    """Label Studio app processes whose access log shows a 200 answer to GET ``path``."""
    log = (topo.log_dir / f"{LABEL_STUDIO}.log").read_text(errors="replace")
    pattern = re.compile(rf'^<(\d+)> "GET {re.escape(path)}" 200 ', re.MULTILINE)
    return {int(pid) for pid in pattern.findall(log)}


# the topology ------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory, random_sam_vit_b: Path) -> Iterator[Topology]:
    topology = start_topology(tmp_path_factory.mktemp("topology"), random_sam_vit_b)
    try:
        yield topology
    finally:
        topology.stop()


def test_any_loopback_address_with_a_port_and_nothing_else() -> None:
    assert loopback_address("http://127.0.0.2:9090", "x") == ("127.0.0.2", 9090)
    assert loopback_address("http://localhost:8080", "x") == ("127.0.0.1", 8080)
    for url in ("http://0.0.0.0:9090", "http://10.0.0.2:9090", "http://[::1]:9090", "http://127.0.0.2"):
        with pytest.raises(StackError, match="needs loopback"):
            loopback_address(url, "needs loopback")


def test_every_service_runs_as_its_own_processes(topo: Topology) -> None:
    processes = topo.processes()
    assert set(processes) == {LABEL_STUDIO, ML_BACKEND, SCHEDULER, EMBEDDER}
    assert len(topo.label_studio_worker_pids()) == 2
    assert len(topo.backend_worker_pids()) == 2
    assert all(rss > 0 for rss in topo.rss().values())
    listening = {c.laddr for c in psutil.net_connections("tcp") if c.status == psutil.CONN_LISTEN}
    backend_port = loopback_address(topo.backend_url, "")[1]
    assert ("127.0.0.2", backend_port) in {(a.ip, a.port) for a in listening}
    assert topo.db is not None
    import psycopg

    with psycopg.connect(host="127.0.0.1", user="postgres", dbname=topo.db.name) as conn:
        tables = conn.execute("SELECT count(*) FROM information_schema.tables WHERE table_name = 'task'")
        assert tables.fetchone() == (1,)  # Label Studio's data is in the throw-away database
        tasks = conn.execute("SELECT count(*) FROM task WHERE project_id = %s", (topo.project_id,))
        assert tasks.fetchone() == (16,)  # the 1024-px sample in 256-px tiles


def test_the_backend_is_reachable_and_ssrf_protection_refuses_other_loopback_addresses(
    topo: Topology,
) -> None:
    assert topo.ml_backend_id is not None
    ref = topo.client().ml_backend(topo.ml_backend_id)
    assert ref.url == topo.backend_url
    assert ref.state == "CO"
    headers = {"Authorization": f"Token {topo.token}"}
    ls_port = loopback_address(topo.label_studio_url, "")[1]
    for target in ("http://127.0.0.1:5432", f"http://127.0.0.1:{ls_port}", f"http://127.0.0.3:{free_port()}"):
        hook = httpx.post(
            f"{topo.label_studio_url}/api/webhooks/",
            json={"project": topo.project_id, "url": f"{target}/hook", "send_payload": True},
            headers=headers,
            timeout=30,
        )
        assert hook.status_code in (400, 403), (target, hook.text)
        assert "reserved network address" in hook.text, hook.text
        ml = httpx.post(
            f"{topo.label_studio_url}/api/ml/",
            json={"project": topo.project_id, "url": target, "title": "intruder"},
            headers=headers,
            timeout=30,
        )
        assert ml.status_code in (400, 403), (target, ml.text)
        assert "reserved network address" in ml.text, ml.text


def test_the_token_works_on_both_app_processes(topo: Topology) -> None:
    path = f"/api/projects/{topo.project_id}/"
    for _ in range(40):
        assert api_get(topo, path).status_code == 200
        if served_by(topo, path) >= set(topo.label_studio_worker_pids()):
            break
    assert served_by(topo, path) == set(topo.label_studio_worker_pids())
    assert api_get(topo, path, token="0" * 40).status_code == 401


def embedded(topo: Topology, task_id: int) -> bool:
    """Whether the embedding cache holds the task's tile (computed by the embedding job or a click)."""
    with TileRegistry(topo.config.registry_path) as registry:
        tile_id = registry.tile_by_task(task_id).id
    return any(topo.config.embedding_cache_dir.glob(f"*/{tile_id}-*.npz"))


def test_the_embedding_job_feeds_a_sam_click_through_label_studio(topo: Topology) -> None:
    first = topo.client().queue(int(topo.project_id or 0))[0].task_id
    wait_for("the embedding job's first tile", lambda: embedded(topo, first), timeout=300, every=2)
    mask = sam_mask(topo, first)
    assert mask.shape == (256, 256)
    assert mask.any(), "random-weight SAM gave an empty mask: the check would be vacuous"


def test_annotations_submitted_in_label_studio_are_recorded_by_the_webhook(topo: Topology) -> None:
    before = event_count(topo)
    tasks = task_ids(topo)[-3:]
    for task_id in tasks:
        submit(topo, task_id)
    assert wait_for("3 annotation events", lambda: event_count(topo) == before + 3, timeout=60)
    with TileRegistry(topo.config.registry_path) as registry:
        recorded = registry.annotation_events(int(topo.project_id or 0))[-3:]
    assert sorted(int(e.task_id or 0) for e in recorded) == tasks


def test_the_backend_requires_its_login_everywhere_but_health(topo: Topology) -> None:
    url, auth = topo.backend_url, (topo.backend_auth.username, topo.backend_auth.password)
    assert httpx.get(f"{url}/health", timeout=10).status_code == 200
    for method, path in (("GET", "/"), ("GET", "/dashboard"), ("GET", "/versions"), ("POST", "/predict"),
                         ("POST", "/setup"), ("POST", "/webhook")):  # fmt: skip
        assert httpx.request(method, f"{url}{path}", json={}, timeout=30).status_code == 401, path
        wrong = httpx.request(method, f"{url}{path}", json={}, auth=("geolabel", "wrong"), timeout=30)
        assert wrong.status_code == 401, path
    assert httpx.get(f"{url}/versions", auth=auth, timeout=30).status_code == 200


def test_secrets_stay_out_of_logs_command_lines_and_the_config(topo: Topology) -> None:
    assert stat.S_IMODE(topo.data_dir.stat().st_mode) == 0o700
    assert stat.S_IMODE(topo.log_dir.stat().st_mode) == 0o700
    logs = topo.log_paths()
    assert {LABEL_STUDIO, ML_BACKEND, SCHEDULER, EMBEDDER, "import", "label-studio-init"} <= set(logs)
    invite = "invite-" + "5" * 24  # an organisation invite link carries its token in the query string
    assert httpx.get(f"{topo.label_studio_url}/user/signup/?token={invite}", timeout=30).status_code < 500
    assert httpx.get(f"{topo.backend_url}/health?token={invite}", timeout=30).status_code == 200
    secrets = topo.secrets()
    assert len(secrets) == 3
    assert all(len(s) >= 16 for s in secrets)
    secrets = (*secrets, invite)
    for name, path in logs.items():
        text = path.read_text(errors="replace")
        assert not [s for s in secrets if s in text], f"a secret is in the {name} log"
    assert not [s for s in secrets if s in topo.config_path.read_text()]
    for name, procs in topo.processes().items():
        for proc in procs:
            assert not [s for s in secrets if s in " ".join(proc.cmdline())], f"a secret in {name}'s argv"


def test_the_same_topology_runs_label_studio_on_sqlite_with_one_app_process(tmp_path: Path) -> None:
    with Topology(tmp_path / "sqlite", database="sqlite") as topology:
        assert topology.db is None
        assert (topology.data_dir / "label-studio" / "label_studio.sqlite3").is_file()
        assert len(topology.label_studio_worker_pids()) == 1  # SQLite has one writer
        assert len(topology.backend_worker_pids()) == 2
        assert topology.client().check()  # the token works
        assert topology.backend_health() is not None
        processes = [p for procs in topology.processes().values() for p in procs]
    assert not [p for p in processes if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
