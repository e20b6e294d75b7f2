"""Credentials of the local services, kept private on disk (mode 0600, never logged).

``<data_dir>/label-studio/credentials.json`` holds the local Label Studio's admin and API token
(Label Studio only applies the token when it first creates the user, so later starts reuse it);
``<data_dir>/ml-backend/credentials.json`` the ML backend's generated basic-auth password.
"""

from __future__ import annotations

import json
import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from geolabel.errors import StackError


@dataclass(frozen=True)
class Credentials:
    """Admin login and API token of the local Label Studio."""

    username: str
    password: str
    token: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=***, token=***)"


def load_or_create_credentials(state_dir: Path, username: str) -> Credentials:
    """Read the local server's credentials, generating and saving them on first use."""
    existing = read_credentials(state_dir)
    if existing is not None:
        return existing
    creds = Credentials(username, secrets.token_urlsafe(12), secrets.token_hex(20))
    _write_private_json(
        state_dir / "credentials.json",
        {"username": creds.username, "password": creds.password, "token": creds.token},
    )
    return creds


def _write_private_json(file: Path, data: dict[str, str]) -> None:
    """Create ``file`` readable by its owner only (mode 0600) holding ``data``."""
    file.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        json.dump(data, handle)


@dataclass(frozen=True)
class BasicAuth:
    """User and password of HTTP basic auth (the ML backend's)."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"BasicAuth(username={self.username!r}, password=***)"


def ml_backend_auth(state_dir: Path, username: str, password: str = "") -> BasicAuth:
    """The ML backend's basic-auth login.

    The password is ``password`` if given (from ``geolabel.toml`` or the environment), else the one
    generated on first use and kept (mode 0600) in ``<state_dir>/credentials.json``.

    Raises:
        StackError: if the saved file exists but cannot be read.
    """
    if password:
        return BasicAuth(username, password)
    file = state_dir / "credentials.json"
    if not file.is_file():
        _write_private_json(file, {"password": secrets.token_urlsafe(18)})
    try:
        saved = str(json.loads(file.read_text(encoding="utf-8"))["password"])
    except (OSError, ValueError, KeyError, TypeError):
        raise StackError(f"{file} is damaged or unreadable; delete it to generate a new password") from None
    return BasicAuth(username, saved)


def read_credentials(state_dir: Path) -> Credentials | None:
    """The local server's saved credentials, or None if it never started.

    Raises:
        StackError: if the file exists but cannot be read.
    """
    file = state_dir / "credentials.json"
    if not file.is_file():
        return None
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
        return Credentials(str(data["username"]), str(data["password"]), str(data["token"]))
    except (OSError, ValueError, KeyError, TypeError):
        raise StackError(
            f"{file} is damaged or unreadable. Label Studio keeps the admin and token it was first "
            "started with: restore the file, or set label_studio.token to that token"
        ) from None
