"""The local Label Studio stack: credentials and refusals (the server itself runs in conftest)."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from geolabel.credentials import load_or_create_credentials, read_credentials
from geolabel.errors import StackError
from geolabel.stack import LocalLabelStudio
from tests.conftest import LabelStudioServer


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
