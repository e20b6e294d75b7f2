"""The deployment's process topology on one host, without containers, everything on loopback.

What ``docker/`` runs as containers, run here as child processes of one context manager:

- a throw-away PostgreSQL database (random name, created at start and dropped at stop) on an existing
  server (default ``127.0.0.1:5432``, user ``postgres``, trust auth), or Label Studio's SQLite;
- Label Studio 1.23.2 on it: ``label-studio init`` (migrations, admin and token), then gunicorn serving
  ``label_studio.core.wsgi:application`` with several worker processes (2 on PostgreSQL; 1 on SQLite,
  whose single writer would make several app processes fight over its lock), with SSRF protection on:
  Label Studio may reach the ML backend's own loopback address and nothing else on loopback;
- the ML backend under gunicorn (2 workers) on its own loopback address (default ``127.0.0.2``);
- exactly one round scheduler (``geolabel train --schedule``) and one embedding job
  (``geolabel embed --follow``).

Every process has its own log in ``<work_dir>/logs``; secrets (the admin password, the API token, the
backend's password) travel in environment variables only, never in a command line, a log or the
config file. Used by the topology tests and the load bench::

    with Topology(tmp / "topo", rasters=[SAMPLE_RASTER], sam_checkpoint=ckpt) as topo:
        topo.client().tasks(topo.project_id)
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Literal

import httpx
import psutil

from geolabel.config import ML_PASSWORD_ENV, TOKEN_ENV, Config, load_config
from geolabel.credentials import BasicAuth, Credentials, load_or_create_credentials
from geolabel.errors import StackError
from geolabel.lsclient import LabelStudioClient
from geolabel.paths import PRIVATE_UMASK, private_dir
from geolabel.stack import LocalLabelStudio, Started, is_up, loopback_address, spawn, tail, terminate

Database = Literal["postgresql", "sqlite"]
#: The services, by the names :meth:`Topology.pids` and :meth:`Topology.log_paths` use.
LABEL_STUDIO, ML_BACKEND, SCHEDULER, EMBEDDER = "label-studio", "ml-backend", "scheduler", "embedder"
START_TIMEOUT_S = 300.0
#: Small, fast rounds: a topology is for tests and benches, not for a real model.
DEFAULT_SETTINGS: dict[str, dict[str, object]] = {
    "tiling": {"size": 256, "overlap": 0},
    "sam": {"device": "cpu", "precompute": 2, "precompute_interval": 5.0, "round_embeddings": 0},
    "trainer": {
        "schedule": True, "threshold": 1_000_000, "check_interval": 2.0, "epochs": 1, "batch_size": 2,
        "crop": 64, "validation_share": 0.25, "block_tiles": 1, "batch": 4,
    },
    "import": {"workers": 1},
}  # fmt: skip
CLASSES = (("building", "#e31a1c"), ("water", "#1f78b4"))


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` now."""
    import socket

    with socket.socket() as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def postgres_problem(host: str = "127.0.0.1", port: int = 5432, user: str = "postgres") -> str | None:
    """Why no throw-away database can be made on that server (None: it can)."""
    import psycopg

    try:
        with psycopg.connect(host=host, port=port, user=user, dbname="postgres", connect_timeout=3) as conn:
            conn.execute("SELECT 1")
    except psycopg.Error as exc:
        return f"no PostgreSQL at {host}:{port} as {user} ({str(exc).strip().splitlines()[0]})"
    return None


class ThrowawayDatabase:
    """A PostgreSQL database with a random name: ``create()`` makes it, ``drop()`` removes it."""

    def __init__(self, host: str = "127.0.0.1", port: int = 5432, user: str = "postgres") -> None:
        self.host, self.port, self.user = host, port, user
        self.name = f"geolabel_topology_{secrets.token_hex(6)}"
        self.created = False

    def _admin(self, statement: str) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(
            host=self.host,
            port=self.port,
            user=self.user,
            dbname="postgres",
            autocommit=True,
            connect_timeout=5,
        ) as conn:
            conn.execute(sql.SQL(statement).format(sql.Identifier(self.name)))

    def create(self) -> None:
        """Create the database.

        Raises:
            StackError: if the server cannot be reached or refuses.
        """
        import psycopg

        try:
            self._admin("CREATE DATABASE {}")
        except psycopg.Error as exc:
            raise StackError(
                f"cannot create database {self.name} on {self.host}:{self.port}: {exc}"
            ) from None
        self.created = True

    def drop(self) -> None:
        """Drop the database, closing its connections (no-op when it was never created)."""
        if self.created:
            self._admin("DROP DATABASE IF EXISTS {} WITH (FORCE)")
            self.created = False


class Topology(Started):
    """Label Studio (PostgreSQL or SQLite), the ML backend, one scheduler and one embedding job.

    Args:
        work_dir: created if missing: ``geolabel.toml``, ``data/`` (0700: registry, tiles, Label Studio's
            files) and ``logs/`` (0700).
        database: ``"postgresql"`` (a throw-away database on ``postgres``) or ``"sqlite"``.
        rasters: imported with ``geolabel import`` at start; then the backend is connected and the
            scheduler and the embedding job start (without rasters: call :meth:`import_rasters`,
            :meth:`connect_backend` and :meth:`start_jobs` yourself).
        sam_checkpoint: SAM vit_b checkpoint (None: SAM off, no embedding job).
        settings: config sections merged over :data:`DEFAULT_SETTINGS`, e.g. ``{"trainer": {...}}``.
        label_studio_workers: app processes (default 2 on PostgreSQL, 1 on SQLite); threads each.
        backend_workers, backend_threads: the ML backend's gunicorn workers and threads per worker.
        backend_address: the backend's own loopback address (Label Studio may reach only it).
        postgres: host, port and user of the PostgreSQL server (trust auth).
    """

    def __init__(
        self,
        work_dir: Path,
        *,
        database: Database = "postgresql",
        rasters: Sequence[Path] = (),
        sam_checkpoint: Path | None = None,
        settings: Mapping[str, Mapping[str, object]] | None = None,
        label_studio_workers: int | None = None,
        label_studio_threads: int = 4,
        backend_workers: int = 2,
        backend_threads: int = 4,
        backend_address: str = "127.0.0.2",
        postgres: tuple[str, int, str] = ("127.0.0.1", 5432, "postgres"),
    ) -> None:
        loopback_address(f"http://{backend_address}:1", "the backend's address must be on loopback")
        self.work_dir = work_dir.resolve()
        self.data_dir = self.work_dir / "data"
        self.log_dir = self.work_dir / "logs"
        self.config_path = self.work_dir / "geolabel.toml"
        self.database: Database = database
        self.db = ThrowawayDatabase(*postgres) if database == "postgresql" else None
        self.rasters = [Path(r).resolve() for r in rasters]
        self.sam_checkpoint = sam_checkpoint.resolve() if sam_checkpoint else None
        self.settings = _merge(DEFAULT_SETTINGS, settings or {})
        self.label_studio_workers = label_studio_workers or (2 if database == "postgresql" else 1)
        self.label_studio_threads = label_studio_threads
        self.backend_workers, self.backend_threads = backend_workers, backend_threads
        self.backend_address = backend_address
        self.label_studio_url = ""
        self.backend_url = ""
        self.credentials: Credentials | None = None
        self.backend_auth = BasicAuth("geolabel", secrets.token_urlsafe(18))
        self.project_id: int | None = None
        self.ml_backend_id: int | None = None
        self._processes: dict[str, subprocess.Popen[bytes]] = {}

    # life cycle ------------------------------------------------------------------------------

    def start(self) -> None:
        """Create the database, start Label Studio and the backend; with rasters, import, connect, jobs.

        Raises:
            StackError: if a step fails (the message names the log to read); call :meth:`stop` after.
        """
        private_dir(self.work_dir)
        private_dir(self.data_dir)
        private_dir(self.log_dir)
        self.credentials = load_or_create_credentials(self.data_dir / "label-studio", "admin@geolabel.test")
        self.label_studio_url = f"http://127.0.0.1:{free_port()}"
        self.backend_url = f"http://{self.backend_address}:{free_port(self.backend_address)}"
        self._write_config()
        if self.db is not None:
            self.db.create()
        self._spawn_backend()  # loads while Label Studio migrates its database
        self._run_once("label-studio-init", self._label_studio_init_command(), self._label_studio_env())
        self.start_label_studio()
        self._wait(ML_BACKEND, lambda: self.backend_health() is not None, START_TIMEOUT_S)
        if self.rasters:
            self.import_rasters(self.rasters)
            self.connect_backend()
            self.start_jobs()

    def stop(self) -> None:
        """Stop every process (their whole process groups) and drop the database, whatever failed before."""
        problems: list[str] = []
        for name in (EMBEDDER, SCHEDULER, ML_BACKEND, LABEL_STUDIO):
            try:
                self._stop(name)
            except Exception as exc:  # keep stopping the others
                problems.append(f"{name}: {exc}")
        if self.db is not None:
            try:
                self.db.drop()
            except Exception as exc:
                problems.append(f"dropping database {self.db.name}: {exc}")
        if problems:
            raise StackError("the topology did not stop cleanly: " + "; ".join(problems))

    # Label Studio ----------------------------------------------------------------------------

    def _label_studio_env(self) -> dict[str, str]:
        from geolabel.ssrf import SSRF_SETTINGS, banned_subnets_except

        if self.credentials is None:
            raise StackError("the topology is not started")
        state = self.data_dir / "label-studio"
        env = LocalLabelStudio(self.label_studio_url, state, self.data_dir, self.credentials).environment()
        env.update(
            {
                # SSRF protection on; the one loopback address allowed is the backend's own.
                **SSRF_SETTINGS,
                "USER_ADDITIONAL_BANNED_SUBNETS": ",".join(banned_subnets_except([self.backend_address])),
                "DJANGO_SETTINGS_MODULE": "core.settings.label_studio",
            }
        )
        if self.db is not None:
            env.update(
                {
                    "DJANGO_DB": "default",
                    "POSTGRE_NAME": self.db.name,
                    "POSTGRE_USER": self.db.user,
                    "POSTGRE_PASSWORD": "unused-trust-auth",
                    "POSTGRE_HOST": self.db.host,
                    "POSTGRE_PORT": str(self.db.port),
                }
            )
        else:
            env["DJANGO_DB"] = "sqlite"
        return env

    def _label_studio_init_command(self) -> list[str]:
        return [sys.executable, "-m", "label_studio.server", "init", "--no-browser"]

    def start_label_studio(self, timeout: float = START_TIMEOUT_S) -> None:
        """Start Label Studio's gunicorn (after :meth:`stop_label_studio`) and wait for ``/health/``.

        Raises:
            StackError: if it exits or does not answer in time.
        """
        host, port = loopback_address(self.label_studio_url, "Label Studio listens on loopback")
        command = [
            sys.executable, "-m", "gunicorn",
            "--bind", f"{host}:{port}",
            "--workers", str(self.label_studio_workers),
            "--threads", str(self.label_studio_threads),
            "--timeout", "300",  # an interactive call waits for the backend's SAM encoder
            "--graceful-timeout", "10",
            "--pythonpath", str(_label_studio_dir()),  # Label Studio imports `core.settings`
            # pid, method and path, status, seconds: never headers nor the query string, which may
            # carry a secret (the organisation's invite link: /user/signup/?token=...)
            "--access-logfile", "-",
            "--access-logformat", '%(p)s "%(m)s %(U)s" %(s)s %(L)s',
            "label_studio.core.wsgi:application",
        ]  # fmt: skip
        self._spawn(LABEL_STUDIO, command, self._label_studio_env())
        self._wait(LABEL_STUDIO, lambda: is_up(self.label_studio_url, timeout=2.0), timeout)

    def stop_label_studio(self) -> None:
        """Stop Label Studio (all its app processes); the database and everything else keep running."""
        self._stop(LABEL_STUDIO)

    @property
    def token(self) -> str:
        """The admin's API token."""
        if self.credentials is None:
            raise StackError("the topology is not started")
        return self.credentials.token

    def client(self, timeout: float = 60.0) -> LabelStudioClient:
        """A client of this Label Studio with the admin's token."""
        return LabelStudioClient(self.label_studio_url, self.token, timeout=timeout)

    # geolabel ------------------------------------------------------------------------------

    def _geolabel_env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("GEOLABEL_", "LABEL_STUDIO_"))}
        env.update(
            {
                "GEOLABEL_CONFIG": str(self.config_path),
                TOKEN_ENV: self.token,
                ML_PASSWORD_ENV: self.backend_auth.password,
            }
        )
        return env

    def _cli(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "geolabel.cli", "--config", str(self.config_path), *args]

    def _spawn_backend(self) -> None:
        host, port = loopback_address(self.backend_url, "the backend listens on loopback")
        bind = ["--bind", f"{host}:{port}", "--workers", str(self.backend_workers)]
        threads = ["--threads", str(self.backend_threads)]
        command = self._cli("backend", *bind, *threads)
        self._spawn(ML_BACKEND, command, self._geolabel_env())

    def backend_health(self) -> dict[str, object] | None:
        """The backend's ``/health`` answer, or None when it does not answer."""
        from geolabel.local import ml_backend_health

        return ml_backend_health(self.backend_url)

    def import_rasters(self, rasters: Iterable[Path]) -> None:
        """Import rasters with ``geolabel import`` (the real importer) into this Label Studio.

        Raises:
            StackError: if the import fails (the message holds the end of its log).
        """
        self._run_once("import", self._cli("import", *(str(r) for r in rasters)), self._geolabel_env())
        from georef.registry import TileRegistry

        with TileRegistry(self.config.registry_path) as registry:
            self.project_id = registry.project_id(self.config.project.name)

    def connect_backend(self) -> int:
        """Connect the backend to the project with ``geolabel connect``, as an operator does; return its id.

        Raises:
            StackError: if no project was imported yet, or ``geolabel connect`` fails (e.g. Label
                Studio's SSRF protection blocks the backend's address).
        """
        if self.project_id is None:
            raise StackError("import a raster first (Topology.import_rasters)")
        self._run_once("connect", self._cli("connect"), self._geolabel_env())
        response = httpx.get(
            f"{self.label_studio_url}/api/ml/",
            params={"project": self.project_id},
            headers={"Authorization": f"Token {self.token}"},
            timeout=60.0,
        )
        response.raise_for_status()
        ids = [int(b["id"]) for b in response.json() if str(b.get("url", "")).rstrip("/") == self.backend_url]
        if not ids:
            raise StackError(f"geolabel connect left no ML backend at {self.backend_url}; see {self.log_dir}")
        self.ml_backend_id = ids[0]
        return ids[0]

    def start_jobs(self) -> None:
        """Start the round scheduler and (with SAM) the embedding job, one process each."""
        self.restart_scheduler()
        if self.sam_checkpoint is not None and EMBEDDER not in self._alive():
            self._spawn(EMBEDDER, self._cli("embed", "--follow"), self._geolabel_env(), nice=10)

    def restart_scheduler(self) -> None:
        """Stop the scheduler if it runs (or is left killed), then start one again."""
        self._stop(SCHEDULER)
        self._spawn(SCHEDULER, self._cli("train", "--schedule"), self._geolabel_env(), nice=10)

    def update_settings(self, settings: Mapping[str, Mapping[str, object]]) -> None:
        """Change sections of ``geolabel.toml``, e.g. ``{"trainer": {"epochs": 20}}``.

        The scheduler applies them from its next check (it reads the file at every check); the backend
        and the embedding job read it when they start.
        """
        self.settings = _merge(self.settings, settings)
        self._write_config()

    @property
    def config(self) -> Config:
        """The topology's ``geolabel.toml`` as read by the geolabel processes (no secrets in it)."""
        return load_config(self.config_path)

    def _write_config(self) -> None:
        sections: dict[str, dict[str, object]] = {
            "project": {"name": "topology"},
            "label_studio": {"url": self.label_studio_url, "username": "admin@geolabel.test"},
            "ml_backend": {
                "url": self.backend_url,
                "username": self.backend_auth.username,
                "workers": self.backend_workers,
                "threads": self.backend_threads,
            },
            "paths": {"data_dir": str(self.data_dir)},
        }
        sections = _merge(sections, self.settings)
        if self.sam_checkpoint is not None:
            sections = _merge(sections, {"sam": {"checkpoint": str(self.sam_checkpoint)}})
        else:
            sections = _merge(sections, {"sam": {"precompute": 0}})
        classes = "".join(
            f'[[classes]]\nid = {i}\nname = "{name}"\ncolor = "{color}"\n\n'
            for i, (name, color) in enumerate(CLASSES, start=1)
        )
        partial = self.config_path.with_suffix(".partial")
        partial.write_text(classes + "".join(_toml_section(k, v) for k, v in sections.items()))
        partial.replace(self.config_path)  # a process reading it never sees half a file

    # processes -------------------------------------------------------------------------------

    def log_paths(self) -> dict[str, Path]:
        """Every log the topology's processes wrote, by name (grep them for secrets)."""
        return {p.stem: p for p in sorted(self.log_dir.glob("*.log"))}

    def secrets(self) -> tuple[str, ...]:
        """The admin password, the API token and the backend's password (none may appear in a log)."""
        found = [self.backend_auth.password]
        if self.credentials is not None:
            found += [self.credentials.password, self.credentials.token]
        return tuple(found)

    def _alive(self) -> dict[str, subprocess.Popen[bytes]]:
        return {name: p for name, p in self._processes.items() if p.poll() is None}

    def pids(self) -> dict[str, int]:
        """The main process id of every running service (gunicorn: the master)."""
        return {name: p.pid for name, p in self._alive().items()}

    def processes(self) -> dict[str, list[psutil.Process]]:
        """Every running service's processes: its main process first, then its children (workers)."""
        found: dict[str, list[psutil.Process]] = {}
        for name, pid in self.pids().items():
            try:
                main = psutil.Process(pid)
                found[name] = [main, *main.children(recursive=True)]
            except psutil.NoSuchProcess:
                continue
        return found

    def rss(self) -> dict[str, int]:
        """Resident memory per service in bytes, its workers included."""
        total: dict[str, int] = {}
        for name, procs in self.processes().items():
            total[name] = sum(_rss(p) for p in procs)
        return total

    def backend_worker_pids(self) -> list[int]:
        """Process ids of the backend's gunicorn workers."""
        return sorted(p.pid for p in self.processes().get(ML_BACKEND, [])[1:])

    def label_studio_worker_pids(self) -> list[int]:
        """Process ids of Label Studio's gunicorn workers (its app processes)."""
        return sorted(p.pid for p in self.processes().get(LABEL_STUDIO, [])[1:])

    def kill(self, name: str, sig: signal.Signals = signal.SIGKILL) -> None:
        """Send ``sig`` to a service's whole process group (a crash, for the fault tests).

        Raises:
            StackError: if that service does not run.
        """
        process = self._alive().get(name)
        if process is None:
            raise StackError(f"{name} does not run")
        os.killpg(process.pid, sig)
        if sig == signal.SIGKILL:
            process.wait()

    def _spawn(self, name: str, command: list[str], env: dict[str, str], nice: int = 0) -> None:
        if name in self._alive():
            raise StackError(f"{name} already runs (pid {self._processes[name].pid})")
        log = self.log_dir / f"{name}.log"
        self._processes[name] = spawn(command, env, log, nice=nice, umask=PRIVATE_UMASK)

    def _stop(self, name: str) -> None:
        process = self._processes.pop(name, None)
        if process is None:
            return
        terminate(process)
        # workers of a master killed earlier may outlive it for a moment: the group goes too
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)

    def _wait(self, name: str, ready: object, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        process = self._processes[name]
        while time.monotonic() < deadline:
            if process.poll() is not None:
                raise StackError(
                    f"{name} exited with code {process.returncode} while starting; last lines of its log "
                    f"{self.log_dir / (name + '.log')}:\n{self._tail(name)}"
                )
            if callable(ready) and ready():
                return
            time.sleep(0.5)
        raise StackError(
            f"{name} did not answer within {timeout:.0f} s; see {self.log_dir / (name + '.log')}"
        )

    def _run_once(self, name: str, command: list[str], env: dict[str, str], timeout: float = 600.0) -> None:
        log = self.log_dir / f"{name}.log"
        process = spawn(command, env, log, umask=PRIVATE_UMASK)
        try:
            code = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            terminate(process)
            raise StackError(f"{name} did not finish within {timeout:.0f} s; see {log}") from None
        if code != 0:
            raise StackError(f"{name} exited with code {code}; last lines of {log}:\n{self._tail(name)}")

    def _tail(self, name: str) -> str:
        return tail(self.log_dir / f"{name}.log", 20, self.secrets())


def _label_studio_dir() -> Path:
    spec = importlib.util.find_spec("label_studio")
    if spec is None or spec.origin is None:
        raise StackError("Label Studio is not installed in this environment (pip install label-studio)")
    return Path(spec.origin).parent


def _rss(process: psutil.Process) -> int:
    try:
        return int(process.memory_info().rss)
    except psutil.NoSuchProcess:
        return 0


def _merge(
    base: Mapping[str, Mapping[str, object]], over: Mapping[str, Mapping[str, object]]
) -> dict[str, dict[str, object]]:
    merged = {k: dict(v) for k, v in base.items()}
    for section, values in over.items():
        merged.setdefault(section, {}).update(values)
    return merged


def _toml_section(name: str, values: Mapping[str, object]) -> str:
    lines = [f"[{name}]"]
    for key, value in values.items():
        lines.append(f"{key} = {_toml_value(value)}")
    return "\n".join(lines) + "\n\n"


def _toml_value(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)  # a JSON string is a TOML basic string
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    raise TypeError(f"no TOML form for {value!r}")
