"""The local stack: a real Label Studio server on SQLite with a known admin and API token.

Credentials are generated on first start and kept (mode 0600) in
``<data_dir>/label-studio/credentials.json``: Label Studio only applies the
token when it first creates the user, so later starts must reuse it.
"""

from __future__ import annotations

import ipaddress
import os
import signal
import subprocess
import sys
import time
from abc import ABC, abstractmethod
from pathlib import Path
from types import TracebackType
from typing import Self
from urllib.parse import urlsplit

import httpx

from geolabel.credentials import Credentials
from geolabel.errors import StackError
from geolabel.paths import PRIVATE_UMASK, private_dir

START_TIMEOUT_S = 300.0


def loopback_address(url: str, requirement: str) -> tuple[str, int]:
    """The IPv4 loopback address (any of 127.0.0.0/8; ``localhost`` is 127.0.0.1) and port of ``url``.

    Linux routes all of 127.0.0.0/8 to the loopback interface, so services on one host can each have
    their own loopback address (Label Studio's SSRF allow-list then admits exactly one of them).

    Raises:
        StackError: ``requirement`` and the URL, if it is not on loopback or has no explicit port.
    """
    parts = urlsplit(url)
    host = "127.0.0.1" if parts.hostname == "localhost" else parts.hostname or ""
    try:
        address = ipaddress.ip_address(host)
        port = parts.port
    except ValueError:
        raise StackError(f"{requirement}; got {url}") from None
    if address.version != 4 or not address.is_loopback or port is None:
        raise StackError(f"{requirement}; got {url}")
    return host, port


def is_up(url: str, timeout: float = 2.0) -> bool:
    """True when a Label Studio answers ``/health`` at ``url``."""
    try:
        response = httpx.get(f"{url.rstrip('/')}/health/", timeout=timeout)
    except httpx.HTTPError:
        return False
    return response.status_code == 200 and '"UP"' in response.text


class Started(ABC):
    """Started and stopped as a context manager: leaving, or failing to start, stops it."""

    @abstractmethod
    def start(self) -> None:
        """Start it and wait until it answers."""

    @abstractmethod
    def stop(self) -> None:
        """Stop it (no-op when it is not running)."""

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:  # Ctrl-C or a failure while starting: leave no server behind
            self.stop()
            raise
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()


class _Service(Started):
    """A child server."""

    @abstractmethod
    def exit_code(self) -> int | None:
        """The exit code of a server that exited by itself (negative: killed by that signal), else None."""


def exit_reason(code: int) -> str:
    """A child's exit code in words: ``exited with code 1``, ``was killed by signal 9 (SIGKILL)``."""
    if code >= 0:
        return f"exited with code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = "unknown signal"
    return f"was killed by signal {-code} ({name})"


class LocalLabelStudio(_Service):
    """A Label Studio child process, context-managed: leaving the block stops it.

    Args:
        url: ``http://127.0.0.1:PORT`` the server listens on (loopback only).
        state_dir: where Label Studio keeps its SQLite database, media and log.
        document_root: ``LOCAL_FILES_DOCUMENT_ROOT`` (display tiles live under it).
        credentials: admin login and token to create on first start.
    """

    def __init__(self, url: str, state_dir: Path, document_root: Path, credentials: Credentials) -> None:
        self.host, self.port = loopback_address(
            url,
            "the local Label Studio listens on loopback with an explicit port, e.g. http://127.0.0.1:8080",
        )
        self.url = url.rstrip("/")
        self.state_dir = state_dir
        self.document_root = document_root
        self.credentials = credentials
        self.log_path = state_dir / "label-studio.log"
        self._process: subprocess.Popen[bytes] | None = None

    def environment(self) -> dict[str, str]:
        """Environment of the server process (it holds the password and token: never log it)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("LABEL_STUDIO_")}
        env.update(
            {
                "LABEL_STUDIO_BASE_DATA_DIR": str(self.state_dir),
                "LABEL_STUDIO_USERNAME": self.credentials.username,
                "LABEL_STUDIO_PASSWORD": self.credentials.password,
                "LABEL_STUDIO_USER_TOKEN": self.credentials.token,
                "LABEL_STUDIO_ENABLE_LEGACY_API_TOKEN": "true",
                "LABEL_STUDIO_DISABLE_SIGNUP_WITHOUT_LINK": "true",
                "LOCAL_FILES_SERVING_ENABLED": "true",
                "LOCAL_FILES_DOCUMENT_ROOT": str(self.document_root),
                # Label Studio refuses ML backends and webhooks on loopback addresses by default; this
                # server only listens on loopback and its backend runs beside it.
                "ML_BLOCK_LOCAL_IP": "false",
                "SSRF_PROTECTION_ENABLED": "false",
                "COLLECT_ANALYTICS": "false",
                "LATEST_VERSION_CHECK": "false",
                "SENTRY_DSN": "",
                "FRONTEND_SENTRY_DSN": "",
            }
        )
        return env

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start the server and wait until ``/health`` answers (first start runs migrations).

        Raises:
            StackError: if the port is taken or the server exits or does not answer in time.
        """
        if is_up(self.url):
            raise StackError(
                f"something already answers at {self.url}; stop it or set another port in label_studio.url"
            )
        private_dir(
            self.state_dir
        )  # its database holds the API token, the backend password, the webhook auth
        self.document_root.mkdir(parents=True, exist_ok=True)
        command = [
            sys.executable,
            "-m",
            "label_studio.server",
            "start",
            "--no-browser",
            "--internal-host",
            self.host,
            "--port",
            str(self.port),
        ]
        self._process = spawn(command, self.environment(), self.log_path, umask=PRIVATE_UMASK)
        self._wait_until_up(timeout)

    def _wait_until_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        process = self._process
        while process is not None and time.monotonic() < deadline:
            if process.poll() is not None:
                raise StackError(
                    f"Label Studio exited with code {process.returncode} while starting; "
                    f"last lines of {self.log_path}:\n{self.log_tail()}"
                )
            if is_up(self.url, timeout=1.0):
                return
            time.sleep(0.5)
        self.stop()
        raise StackError(f"Label Studio did not answer within {timeout:.0f} s; see {self.log_path}")

    def log_tail(self, lines: int = 15) -> str:
        """Last lines of the server log, with the password and token masked."""
        return tail(self.log_path, lines, (self.credentials.password, self.credentials.token))

    @property
    def running(self) -> bool:
        """True while the child process is alive."""
        return self._process is not None and self._process.poll() is None

    def wait(self) -> int:
        """Block until the server exits; return its exit code."""
        if self._process is None:
            return 0
        return self._process.wait()

    def exit_code(self) -> int | None:
        """Label Studio's exit code once it has exited by itself, else None."""
        return None if self._process is None else self._process.poll()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the server and its children (SIGTERM, then SIGKILL after ``timeout``)."""
        process, self._process = self._process, None
        terminate(process, timeout)


def spawn(
    command: list[str], env: dict[str, str], log_path: Path, nice: int = 0, umask: int = -1
) -> subprocess.Popen[bytes]:
    """Start ``command`` in its own session (its children stop with it), output appended to ``log_path``.

    ``nice``: lower its CPU priority by this much; ``umask``: its file-creation mask (-1: inherited).
    """
    log_path.parent.mkdir(parents=True, exist_ok=True)

    def lower_priority() -> None:  # runs in the child before exec
        if nice:
            os.nice(nice)

    with open(log_path, "ab") as log:
        return subprocess.Popen(
            command,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            preexec_fn=lower_priority if nice else None,
            umask=umask,
        )


def terminate(process: subprocess.Popen[bytes] | None, timeout: float = 15.0) -> None:
    """Stop a process started by :func:`spawn` and its children (SIGTERM, then SIGKILL after ``timeout``)."""
    if process is None or process.poll() is not None:
        return
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()
    except ProcessLookupError:
        pass


def tail(path: Path, lines: int, secrets_to_mask: tuple[str, ...]) -> str:
    """Last ``lines`` of a log file with every secret replaced by ``***``."""
    if not path.is_file():
        return ""
    text = "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    for secret in secrets_to_mask:
        if secret:
            text = text.replace(secret, "***")
    return text


class LocalMLBackend(_Service):
    """The ML backend (gunicorn serving ``ml_backend.app:create_app()``) and its helper jobs, as children.

    Args:
        url: ``http://127.0.0.1:PORT`` to listen on (loopback only).
        config_path: the project's ``geolabel.toml`` (passed as ``$GEOLABEL_CONFIG``).
        log_dir: where ``ml-backend.log`` and ``embed.log`` are written.
        workers: gunicorn worker processes; threads: threads per worker.
        precompute: run ``geolabel embed --follow`` beside it (at low CPU priority).
        schedule: run ``geolabel train --schedule`` beside it (at low CPU priority).
        secrets_to_mask: strings never shown from the logs.
    """

    def __init__(
        self,
        url: str,
        config_path: Path,
        log_dir: Path,
        workers: int = 1,
        threads: int = 4,
        precompute: bool = True,
        schedule: bool = False,
        secrets_to_mask: tuple[str, ...] = (),
    ) -> None:
        host, port = loopback_address(
            url, "the local ML backend listens on loopback with a port, e.g. http://127.0.0.1:9090"
        )
        self.url = url.rstrip("/")
        self.bind = f"{host}:{port}"
        self.config_path = config_path.resolve()
        self.log_path = log_dir / "ml-backend.log"
        self.embed_log_path = log_dir / "embed.log"
        self.trainer_log_path = log_dir / "trainer.log"
        self.workers, self.threads, self.precompute = workers, threads, precompute
        self.schedule = schedule
        self.secrets_to_mask = secrets_to_mask
        self._server: subprocess.Popen[bytes] | None = None
        self._embed: subprocess.Popen[bytes] | None = None
        self._trainer: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start gunicorn and wait until ``/health`` answers (SAM loads first); then the helper jobs.

        Raises:
            StackError: if the port is taken, or the server exits or does not answer in time.
        """
        if _answers(f"{self.url}/health"):
            raise StackError(
                f"something already answers at {self.url}; stop it or set another port in ml_backend.url"
            )
        env = {**os.environ, "GEOLABEL_CONFIG": str(self.config_path)}
        cli = [sys.executable, "-m", "geolabel.cli", "--config", str(self.config_path)]
        backend = [
            *cli,
            "backend",
            "--bind",
            self.bind,
            "--workers",
            str(self.workers),
            "--threads",
            str(self.threads),
        ]
        self._server = spawn(backend, env, self.log_path)  # `geolabel backend` becomes gunicorn (exec)
        self._wait_until_up(timeout)
        if self.precompute:
            self._embed = spawn([*cli, "embed", "--follow"], env, self.embed_log_path, nice=10)
        if self.schedule:
            self._trainer = spawn([*cli, "train", "--schedule"], env, self.trainer_log_path, nice=10)

    def _wait_until_up(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while self._server is not None and time.monotonic() < deadline:
            if self._server.poll() is not None:
                raise StackError(
                    f"the ML backend exited with code {self._server.returncode} while starting; "
                    f"last lines of {self.log_path}:\n{tail(self.log_path, 15, self.secrets_to_mask)}"
                )
            if _answers(f"{self.url}/health"):
                return
            time.sleep(0.5)
        self.stop()
        raise StackError(f"the ML backend did not answer within {timeout:.0f} s; see {self.log_path}")

    @property
    def running(self) -> bool:
        """True while the server process is alive."""
        return self._server is not None and self._server.poll() is None

    def exit_code(self) -> int | None:
        """The gunicorn server's exit code once it has exited by itself, else None."""
        return None if self._server is None else self._server.poll()

    def stop(self, timeout: float = 15.0) -> None:
        """Stop the helper jobs and the server."""
        helpers, self._embed, self._trainer = (self._embed, self._trainer), None, None
        server, self._server = self._server, None
        for helper in helpers:
            terminate(helper, timeout)
        terminate(server, timeout)


def _answers(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2.0).status_code == 200
    except httpx.HTTPError:
        return False
