"""The local Label Studio stack: credentials and refusals (the server itself runs in conftest)."""

from __future__ import annotations

import os
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import psutil
import pytest

from geolabel.credentials import load_or_create_credentials, read_credentials
from geolabel.errors import StackError
from geolabel.paths import private_dir
from geolabel.stack import LocalLabelStudio
from tests.conftest import LabelStudioServer, free_port
from tests.test_cli import write_config


def test_credentials_are_generated_once_and_kept_private(tmp_path: Path) -> None:
    creds = load_or_create_credentials(tmp_path / "ls", "admin@example.org")
    file = tmp_path / "ls" / "credentials.json"
    assert stat.S_IMODE(file.stat().st_mode) == 0o600
    assert len(creds.token) == 40
    assert load_or_create_credentials(tmp_path / "ls", "other@example.org") == creds
    assert read_credentials(tmp_path / "ls") == creds
    assert read_credentials(tmp_path / "none") is None
    assert creds.token not in repr(creds)
    assert creds.password not in repr(creds)


def test_only_loopback_urls_with_a_port(tmp_path: Path) -> None:
    creds = load_or_create_credentials(tmp_path, "a@b.c")
    for url in ("http://0.0.0.0:8080", "http://example.org:8080", "http://127.0.0.1"):
        with pytest.raises(StackError, match="loopback"):
            LocalLabelStudio(url, tmp_path, tmp_path, creds)


def test_environment_holds_the_settings_label_studio_needs(tmp_path: Path) -> None:
    creds = load_or_create_credentials(tmp_path, "a@b.c")
    env = LocalLabelStudio("http://127.0.0.1:9", tmp_path / "s", tmp_path / "d", creds).environment()
    assert env["LABEL_STUDIO_USER_TOKEN"] == creds.token
    assert env["LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN"] == "true"
    assert env["LOCAL_FILES_SERVING_ENABLED"] == "true"
    assert env["LOCAL_FILES_DOCUMENT_ROOT"] == str(tmp_path / "d")
    assert env["LABEL_STUDIO_BASE_DATA_DIR"] == str(tmp_path / "s")


@pytest.mark.labelstudio
def test_a_second_server_on_a_busy_port_is_refused(label_studio: LabelStudioServer, tmp_path: Path) -> None:
    creds = load_or_create_credentials(tmp_path, "a@b.c")
    with pytest.raises(StackError, match="already answers"):
        LocalLabelStudio(label_studio.url, tmp_path / "s", tmp_path / "d", creds).start()
    log = (label_studio.state_dir / "label-studio.log").read_text()
    assert label_studio.token not in log


def test_private_dir_creates_or_tightens_to_0700(tmp_path: Path) -> None:
    created = private_dir(tmp_path / "new" / "data")
    assert stat.S_IMODE(created.stat().st_mode) == 0o700
    shared = tmp_path / "shared"
    shared.mkdir()
    shared.chmod(0o755)
    (shared / "label_studio.sqlite3").write_text("secrets")
    private_dir(shared)
    assert stat.S_IMODE(shared.stat().st_mode) == 0o700


def _wait_for(predicate: Callable[[], bool], what: str, serve: subprocess.Popen[bytes], out: Path) -> None:
    deadline = time.monotonic() + 600
    while not predicate():
        if serve.poll() is not None or time.monotonic() > deadline:
            pytest.fail(f"{what}: serve exited with {serve.returncode}; its output:\n{out.read_text()}")
        time.sleep(0.5)


def _label_studio_pid(serve: subprocess.Popen[bytes]) -> int:
    children = psutil.Process(serve.pid).children(recursive=True)
    (server,) = [p for p in children if "label_studio.server" in " ".join(p.cmdline())]
    return int(server.pid)


@pytest.mark.labelstudio
def test_serve_keeps_its_data_private_logs_requests_and_exits_non_zero_when_label_studio_dies(
    tmp_path: Path,
) -> None:
    """The real local stack on free ports: `geolabel serve`, then ``kill -9`` of its Label Studio."""
    data = tmp_path / "data"
    data.mkdir()
    data.chmod(0o755)  # an existing data folder, as older geolabel versions left it
    ls_url, ml_url = f"http://127.0.0.1:{free_port()}", f"http://127.0.0.1:{free_port()}"
    config = write_config(tmp_path, ls_url, data, **{'url = "http://127.0.0.1:9090"': f'url = "{ml_url}"'})
    out, err = tmp_path / "serve.out", tmp_path / "serve.err"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("GEOLABEL_", "LABEL_STUDIO_"))}
    with open(out, "wb") as stdout, open(err, "wb") as stderr:
        serve = subprocess.Popen(
            [sys.executable, "-m", "geolabel.cli", "--config", str(config), "serve"],
            stdout=stdout, stderr=stderr, env=env, start_new_session=True,
        )  # fmt: skip
    try:
        _wait_for(lambda: "Press Ctrl-C" in out.read_text(), "serve did not start", serve, out)
        for folder in (data, data / "label-studio"):
            assert stat.S_IMODE(folder.stat().st_mode) == 0o700, folder
        database = data / "label-studio" / "label_studio.sqlite3"
        assert stat.S_IMODE(database.stat().st_mode) & 0o077 == 0  # written under umask 077

        assert httpx.get(f"{ml_url}/health?token=SECRET-query", timeout=30).status_code == 200
        backend_log = data / "ml-backend" / "ml-backend.log"
        _wait_for(lambda: "GET /health?token=*** 200" in backend_log.read_text(), "no access log", serve, out)
        assert "SECRET-query" not in backend_log.read_text()

        os.kill(_label_studio_pid(serve), signal.SIGKILL)
        code = serve.wait(timeout=120)
    finally:
        if serve.poll() is None:
            os.killpg(serve.pid, signal.SIGTERM)
            serve.wait(timeout=60)
    message = err.read_text()
    assert code == 5, message
    assert "Label Studio was killed by signal 9 (SIGKILL); the ML backend is stopped with it" in message
    assert str(data / "label-studio" / "label-studio.log") in message
    assert "run `geolabel serve` again" in message
    with pytest.raises(httpx.HTTPError):
        httpx.get(f"{ml_url}/health", timeout=5)
