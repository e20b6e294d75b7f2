"""``geolabel serve`` and ``geolabel demo``: the local stack (Label Studio + ML backend) in the foreground."""

from __future__ import annotations

import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
from rich.console import Console

from geolabel.config import Config
from geolabel.credentials import Credentials, load_or_create_credentials
from geolabel.errors import StackError
from geolabel.lsclient import LabelStudioClient
from geolabel.paths import private_dir
from geolabel.stack import LocalLabelStudio, LocalMLBackend, exit_reason, is_up, tail
from georef.registry import TileRegistry
from importers.errors import ImportFailedError
from importers.labelconfig import apply_labelling, project_labelling

SAMPLE_RASTER = Path(__file__).parent / "samples" / "orthophoto_cogeo.tif"
WATCH_INTERVAL_S = 1.0  # how often `serve` checks that its servers still run


def local_stack(config: Config) -> LocalLabelStudio:
    """The local Label Studio described by the config (credentials created on first use)."""
    private_dir(config.data_dir)  # Label Studio's database and the credentials live in it
    state = private_dir(config.data_dir / "label-studio")
    creds = load_or_create_credentials(state, config.label_studio.username)
    return LocalLabelStudio(config.label_studio.url, state, config.document_root, creds)


@contextmanager
def stop_on_signals() -> Iterator[None]:
    """Treat SIGTERM and SIGHUP like Ctrl-C, so the servers started here are always stopped."""

    def interrupt(signum: int, _frame: object) -> None:
        raise KeyboardInterrupt(signal.Signals(signum).name)

    previous = {sig: signal.signal(sig, interrupt) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def local_backend(config: Config, config_path: Path) -> LocalMLBackend:
    """The local ML backend (gunicorn) and its helper jobs (embedding, round scheduler) per the config."""
    auth = config.ml_backend_auth()
    return LocalMLBackend(
        config.ml_backend.url,
        config_path,
        config.data_dir / "ml-backend",
        workers=config.ml_backend.workers,
        threads=config.ml_backend.threads,
        precompute=config.sam.precompute > 0 and config.sam_checkpoint is not None,
        schedule=config.trainer.schedule,
        secrets_to_mask=(auth.password, config.token()),
    )


def serve_forever(config: Config, config_path: Path, console: Console) -> None:
    """Start the local Label Studio and the ML backend, connect them, run until Ctrl-C (or SIGTERM).

    Raises:
        StackError: if Label Studio or the ML backend stops by itself (the other is stopped with it,
            and the message names the log and how to restart).
    """
    stack = local_stack(config)
    if _already_serving(stack, console):
        return
    console.print(f"starting Label Studio at {stack.url} (the first start migrates its database: ~1 min)")
    with stop_on_signals(), stack, start_backend(config, config_path, console) as backend:
        connect_backend(config, LabelStudioClient(stack.url, stack.credentials.token), backend, console)
        print_access(stack.url, stack.credentials, console)
        _wait(stack, console, backend)


def run_demo(config: Config, config_path: Path, rasters: list[Path], console: Console) -> None:
    """Start Label Studio and the ML backend, import ``rasters`` (default: the sample), wait for Ctrl-C."""
    stack = local_stack(config)
    reuse = is_up(stack.url) and _token_works(stack)
    with stop_on_signals():
        try:
            if not reuse:
                console.print(
                    f"starting Label Studio at {stack.url} (the first start migrates its database: ~1 min)"
                )
                stack.start()
            _import_and_wait(stack, reuse, config, config_path, rasters, console)
        finally:
            stack.stop()  # only stops a server this call started


@contextmanager
def start_backend(config: Config, config_path: Path, console: Console) -> Iterator[LocalMLBackend | None]:
    """Start the local ML backend unless one already answers at ``ml_backend.url`` (then it is reused)."""
    backend = local_backend(config, config_path)
    if ml_backend_health(config.ml_backend.url) is not None:
        console.print(f"an ML backend already answers at {backend.url}; using it")
        yield None
        return
    console.print(f"starting the ML backend at {backend.url} (loading SAM if configured)")
    with backend:
        yield backend


def ml_backend_health(url: str) -> dict[str, Any] | None:
    """The backend's ``/health`` answer, or None if nothing answers."""
    try:
        response = httpx.get(f"{url.rstrip('/')}/health", timeout=5.0)
        data = response.json() if response.status_code == 200 else None
    except (httpx.HTTPError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def connect_backend(
    config: Config, client: LabelStudioClient, backend: LocalMLBackend | None, console: Console
) -> None:
    """Connect the ML backend to the project and say what it serves (SAM, model version)."""
    with TileRegistry(config.registry_path) as registry:
        project_id = registry.project_id(config.project.name)
    if project_id is None:
        console.print("ML backend: no project yet; import a raster, then restart to connect it")
        return
    auth = config.ml_backend_auth()
    ref = client.connect_ml_backend(
        project_id, config.ml_backend.url, "geolabel", auth.username, auth.password
    )
    health = ml_backend_health(config.ml_backend.url) or {}
    sam = health.get("sam") or {}
    sync_sam_tools(config, client, project_id, bool(sam.get("enabled")), console)
    model = health.get("model") or {}
    sam_text = (
        f"SAM {sam.get('model_type')} on {sam.get('device')}"
        if sam.get("enabled")
        else f"SAM off ({sam.get('reason')})"
    )
    model_text = model.get("active_version") or "no trained model yet"
    console.print(
        f"ML backend {config.ml_backend.url} connected to project {project_id} (id {ref.id}): "
        f"{sam_text}; model: {model_text}"
    )
    if backend is not None and backend.precompute:
        console.print(
            f"  embeddings of the next {config.sam.precompute} tiles are computed in the background "
            f"({backend.embed_log_path})"
        )
    if backend is not None and backend.schedule:
        console.print(
            f"  round scheduler: a training round at {config.trainer.threshold} annotation changes, "
            f"checked every {config.trainer.check_interval:.0f} s ({backend.trainer_log_path})"
        )


def sync_sam_tools(
    config: Config, client: LabelStudioClient, project_id: int, sam: bool, console: Console
) -> bool:
    """Show SAM's tools on the project's labelling page exactly when the backend has SAM loaded.

    The labelling config and instructions follow the classes, SAM on or off and the labelling mode; when
    Label Studio refuses the change (existing annotations use a dropped tool), the old config is kept and
    a warning says so.

    Returns:
        Whether the project now shows what ``sam`` asks for.
    """
    wanted = project_labelling(config.classes, sam, sparse=config.trainer.labelling == "sparse")
    warning = apply_labelling(client, project_id, wanted)
    if warning is not None:
        console.print(f"[bold yellow]warning:[/] {warning}", highlight=False)
        return False
    tools = "with the SAM click and box tools" if sam else "without SAM tools (SAM is off)"
    console.print(f"labelling page of project {project_id}: {tools}")
    return True


def _import_and_wait(
    stack: LocalLabelStudio,
    reuse: bool,
    config: Config,
    config_path: Path,
    rasters: list[Path],
    console: Console,
) -> None:
    from geolabel.cli import import_options, print_report
    from geolabel.clikit import progress_bar
    from importers.pipeline import import_raster

    client = LabelStudioClient(stack.url, stack.credentials.token)
    options = import_options(config, None, None)
    with TileRegistry(config.registry_path) as registry:
        for raster in rasters or [SAMPLE_RASTER]:
            try:
                with progress_bar() as bar:
                    print_report(import_raster(raster, options, registry, client, bar))
            except ImportFailedError as exc:
                console.print(f"[bold red]error:[/] {exc}", highlight=False)
    with start_backend(config, config_path, console) as backend:
        connect_backend(config, client, backend, console)
        print_access(stack.url, stack.credentials, console)
        if reuse:
            console.print("Label Studio was already running; it keeps running (the ML backend stops now).")
            return
        _wait(stack, console)


def print_access(url: str, creds: Credentials, console: Console) -> None:
    """Tell the user where Label Studio is and how to log in (this is the one place the token is shown)."""
    console.print(f"\nLabel Studio: [bold]{url}[/]")
    console.print(f"  login:     {creds.username}")
    console.print(f"  password:  {creds.password}")
    console.print(f"  API token: {creds.token}")
    console.print("Press Ctrl-C to stop.\n")


def _wait(stack: LocalLabelStudio, console: Console, backend: LocalMLBackend | None = None) -> None:
    """Watch the servers until Ctrl-C.

    A server that stops by itself is not restarted: what killed it (memory, disk, a broken database)
    would kill it again, and a supervisor (systemd, Docker's restart policy) restarts ``geolabel serve``
    on its non-zero exit.

    Raises:
        StackError: if Label Studio or the ML backend stopped; the caller stops the other one.
    """
    try:
        while True:
            _check_alive(stack, backend)
            time.sleep(WATCH_INTERVAL_S)
    except KeyboardInterrupt:
        console.print("stopping Label Studio...")


def _check_alive(stack: LocalLabelStudio, backend: LocalMLBackend | None) -> None:
    code = stack.exit_code()
    if code is not None:
        other = "; the ML backend is stopped with it" if backend is not None else ""
        raise StackError(
            f"Label Studio {exit_reason(code)}{other}. Last lines of its log {stack.log_path}:\n"
            f"{stack.log_tail()}\nFix what the log shows (memory, disk space), then run `geolabel serve` "
            f"again: projects and annotations are kept in {stack.state_dir}."
        )
    code = backend.exit_code() if backend is not None else None
    if backend is not None and code is not None:
        raise StackError(
            f"the ML backend {exit_reason(code)}; Label Studio is stopped with it. Last lines of its log "
            f"{backend.log_path}:\n{tail(backend.log_path, 15, backend.secrets_to_mask)}\n"
            "Fix what the log shows, then run `geolabel serve` again."
        )


def _already_serving(stack: LocalLabelStudio, console: Console) -> bool:
    if is_up(stack.url) and _token_works(stack):
        console.print(f"Label Studio already runs at {stack.url} with this project's credentials.")
        print_access(stack.url, stack.credentials, console)
        return True
    return False


def _token_works(stack: LocalLabelStudio) -> bool:
    try:
        LabelStudioClient(stack.url, stack.credentials.token).check()
    except Exception:  # any failure means: not our server
        return False
    return True
