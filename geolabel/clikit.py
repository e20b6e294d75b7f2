"""What every ``geolabel`` command shares.

Consoles, the one map of errors to exit codes, progress bars, the config of ``--project``, the
common options and the Label Studio client.
"""

from __future__ import annotations

import functools
import sqlite3
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from exporters.errors import ExportError
from geolabel.config import Config
from geolabel.errors import ConfigError, GeolabelError, LabelStudioError, StackError
from georef.errors import GeorefError
from importers.errors import ImportFailedError
from trainer.errors import TrainerError

if TYPE_CHECKING:  # label_studio_sdk loads only for commands that talk to Label Studio
    from geolabel.lsclient import LabelStudioClient

F = TypeVar("F", bound=Callable[..., Any])

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

#: Exit codes, one per family of errors.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (ConfigError, 2),
    (ImportFailedError, 3),
    (GeorefError, 3),
    (LabelStudioError, 4),
    (StackError, 5),
    (GeolabelError, 1),
    (TrainerError, 7),
    (ExportError, 8),
    (sqlite3.Error, 6),
    (OSError, 1),
)


def exit_code(error: BaseException) -> int:
    """The exit code of an error, from :data:`EXIT_CODES` (the one map of errors to codes)."""
    return next(code for cls, code in EXIT_CODES if isinstance(error, cls))


def handle_errors(func: F) -> F:
    """Turn geolabel errors into one clear message and an exit code (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except tuple(cls for cls, _ in EXIT_CODES) as exc:
            code = exit_code(exc)
            prefix = "registry error (the tile registry database): " if isinstance(exc, sqlite3.Error) else ""
            err_console.print(f"[bold red]error:[/] {prefix}{exc}", highlight=False, markup=True)
            sys.exit(code)
        except KeyboardInterrupt:
            err_console.print("interrupted; run the same command again to resume")
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


class RichProgress:
    """Adapter from the importers' progress protocol to a rich progress bar."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: Any = None

    def start(self, description: str, total: int) -> None:
        """Begin a new bar."""
        self._task = self._progress.add_task(description, total=total)

    def advance(self, units: int) -> None:
        """Advance the current bar."""
        if self._task is not None:
            self._progress.advance(self._task, units)


@contextmanager
def progress_bar() -> Iterator[RichProgress]:
    """A rich progress bar on stderr, as an importers progress receiver."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as progress:
        yield RichProgress(progress)


def config_of(ctx: click.Context) -> Config:
    """The config file of the command line (``--config``), loaded once."""
    config: Config = ctx.obj["config_loader"]()
    return config


def project_config(ctx: click.Context, project: str | None, scheduler: str | None = None) -> Config:
    """The config of ``--project`` (default: ``project.name`` of the file), with ``--scheduler`` if given."""
    return config_of(ctx).for_project(project).with_scheduler(scheduler)


#: ``--project`` of the commands that act on one project's tiles, models, rounds and predictions.
project_option = click.option(
    "--project", help="Project (Label Studio project title) to act on (default: project.name in the config)."
)

#: ``--scheduler`` of the commands that fan tiles out (round scoring, predict, export).
scheduler_option = click.option(
    "--scheduler",
    help='Where tile work runs: "local" (a Dask LocalCluster), "tcp://host:8786" (an existing Dask '
    'scheduler) or "none" (this process); default: compute.scheduler in the config.',
)


def announce(text: str) -> None:
    """Say where work runs (a Dask dashboard link) on stderr."""
    err_console.print(text, highlight=False, markup=False)


def ls_client(config: Config) -> LabelStudioClient:
    """A Label Studio client for the config (the SDK is imported only by commands that need it)."""
    from geolabel.lsclient import client_for  # label_studio_sdk loads only for commands that talk to it

    return client_for(config)


def has_registry(config: Config) -> bool:
    """True when something was imported; else say what to run."""
    if config.registry_path.is_file():
        return True
    console.print(f"no raster imported yet ({config.registry_path} does not exist); run: geolabel import")
    return False
