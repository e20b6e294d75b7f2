"""The deployment's commands: ``geolabel backend``, ``geolabel connect`` and ``geolabel ssrf-allow``.

In a multi-user deployment (``docker/``) each geolabel process runs in the foreground under a supervisor
(Docker, systemd): the ML backend under gunicorn, the one round scheduler (``geolabel train
--schedule``), the embedding job (``geolabel embed --follow``). These commands are the pieces the local
stack (:mod:`geolabel.local`) starts itself.
"""

from __future__ import annotations

import ipaddress
import os
from pathlib import Path

from rich.console import Console

from geolabel.config import ML_PASSWORD_ENV, Config
from geolabel.errors import ConfigError, GeolabelError
from geolabel.lsclient import client_for
from geolabel.ssrf import SSRF_SETTINGS, banned_subnets_except
from ml_backend.app import CONFIG_ENV, gunicorn_argv


def parse_bind(bind: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as a host and a port.

    Raises:
        ConfigError: if ``bind`` is not of that form or the port is out of range.
    """
    host, sep, port = bind.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--bind {bind!r}: give HOST:PORT, e.g. 0.0.0.0:9090 or 127.0.0.1:9090")
    return host.strip("[]"), int(port)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (only this machine can connect)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_backend_secret(config: Config, host: str) -> None:
    """Refuse to serve the backend beyond loopback with a password nobody chose.

    On loopback (``geolabel serve``) a password generated once and kept in the data folder is fine; a
    backend other hosts can reach needs one set by the operator (``.env`` in the deployment), so that
    Label Studio's connection and the webhooks use it.

    Raises:
        ConfigError: if ``host`` is not loopback and no password is set.
    """
    if is_loopback(host):
        return
    if not (config.ml_backend.password.get_secret_value() or os.environ.get(ML_PASSWORD_ENV, "")):
        raise ConfigError(
            f"the ML backend listens on {host}, beyond this machine, but has no password: set "
            f"${ML_PASSWORD_ENV} (in the deployment's .env) or ml_backend.password; generate one with "
            "python3 -c 'import secrets; print(secrets.token_urlsafe(24))'"
        )


def exec_backend(config: Config, config_path: Path, bind: str, workers: int, threads: int) -> None:
    """Replace this process with gunicorn serving the ML backend (signals go straight to gunicorn).

    Raises:
        ConfigError: if ``bind`` is malformed, or the backend would be reachable without a set password.
    """
    host, _port = parse_bind(bind)
    check_backend_secret(config, host)
    config.ml_backend_auth()  # a damaged credentials file fails here, with its message, not in a worker
    argv = gunicorn_argv(bind, workers, threads)
    os.execve(argv[0], argv, {**os.environ, CONFIG_ENV: str(config_path.resolve())})  # noqa: S606


def connect(config: Config, console: Console) -> None:
    """Connect the ML backend at ``ml_backend.url`` to the project (webhook auth, SAM tools).

    Raises:
        GeolabelError: if the project was not imported yet.
        LabelStudioError: if Label Studio is unreachable or refuses the backend (SSRF protection:
            see :func:`ssrf_settings`).
    """
    from geolabel.local import connect_backend  # the local stack's own connection step
    from georef.registry import TileRegistry

    if config.registry_path.is_file():
        with TileRegistry(config.registry_path) as registry:
            imported = registry.project_id(config.project.name) is not None
    else:
        imported = False
    if not imported:
        raise GeolabelError(
            f"no project {config.project.name!r} imported yet in {config.data_dir}: run geolabel import "
            "RASTER first (it creates the project), then geolabel connect"
        )
    connect_backend(config, client_for(config), None, console)


def ssrf_settings(addresses: list[str]) -> dict[str, str]:
    """Label Studio's environment keeping SSRF protection on while it may reach exactly ``addresses``.

    Raises:
        ConfigError: if an address is not an IP address Label Studio would otherwise ban.
    """
    banned = banned_subnets_except(addresses)
    return {**SSRF_SETTINGS, "USER_ADDITIONAL_BANNED_SUBNETS": ",".join(banned)}
