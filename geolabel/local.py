"""``geolabel serve`` and ``geolabel demo``: the local Label Studio stack in the foreground."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from geolabel.config import Config
from geolabel.lsclient import LabelStudioClient
from geolabel.stack import Credentials, LocalLabelStudio, is_up, load_or_create_credentials
from georef.registry import TileRegistry
from importers.errors import ImportFailedError

SAMPLE_RASTER = Path(__file__).parent / "samples" / "orthophoto_cogeo.tif"


def local_stack(config: Config) -> LocalLabelStudio:
    """The local Label Studio described by the config (credentials created on first use)."""
    state = config.data_dir / "label-studio"
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


def serve_forever(config: Config, console: Console) -> None:
    """Start the local Label Studio and keep it running until Ctrl-C (or SIGTERM)."""
    stack = local_stack(config)
    if _already_serving(stack, console):
        return
    console.print(f"starting Label Studio at {stack.url} (the first start migrates its database: ~1 min)")
    with stop_on_signals(), stack:
        print_access(stack.url, stack.credentials, console)
        _wait(stack, console)


def run_demo(config: Config, rasters: list[Path], console: Console) -> None:
    """Start the local Label Studio, import ``rasters`` (default: the sample orthophoto), wait for Ctrl-C."""
    stack = local_stack(config)
    reuse = is_up(stack.url) and _token_works(stack)
    with stop_on_signals():
        try:
            if not reuse:
                console.print(
                    f"starting Label Studio at {stack.url} (the first start migrates its database: ~1 min)"
                )
                stack.start()
            _import_and_wait(stack, reuse, config, rasters, console)
        finally:
            stack.stop()  # only stops a server this call started


def _import_and_wait(
    stack: LocalLabelStudio, reuse: bool, config: Config, rasters: list[Path], console: Console
) -> None:
    from geolabel.cli import import_options, print_report, progress_bar
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
    print_access(stack.url, stack.credentials, console)
    if reuse:
        console.print("Label Studio was already running; it keeps running.")
        return
    _wait(stack, console)


def print_access(url: str, creds: Credentials, console: Console) -> None:
    """Tell the user where Label Studio is and how to log in (this is the one place the token is shown)."""
    console.print(f"\nLabel Studio: [bold]{url}[/]")
    console.print(f"  login:     {creds.username}")
    console.print(f"  password:  {creds.password}")
    console.print(f"  API token: {creds.token}")
    console.print("Press Ctrl-C to stop.\n")


def _wait(stack: LocalLabelStudio, console: Console) -> None:
    try:
        code = stack.wait()
    except KeyboardInterrupt:
        console.print("stopping Label Studio...")
        return
    console.print(f"Label Studio exited with code {code}; see {stack.log_path}")


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
