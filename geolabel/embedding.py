"""``geolabel embed``: SAM embeddings for the tiles next in the annotation queue."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

from rich.console import Console

from geolabel.config import Config
from geolabel.errors import GeolabelError
from geolabel.lsclient import LabelStudioClient
from ml_backend.app import settings_from_config
from ml_backend.errors import BackendError, PrecomputeBusyError
from ml_backend.precompute import exclusive, follow_queue, next_tiles, precompute
from ml_backend.service import Backend


def embed_queue(
    config: Config,
    client: LabelStudioClient,
    limit: int,
    follow: bool,
    console: Console,
    progress_bar: Callable[[], AbstractContextManager[Any]],
) -> None:
    """Embed the next ``limit`` queued tiles once (with a progress bar), or keep doing it (``follow``).

    Raises:
        GeolabelError: SAM is off, no project was imported, or another process is already embedding.
    """
    backend = Backend(settings_from_config(config))
    if backend.sam is None:
        raise GeolabelError(f"SAM is off: {backend.sam_error}")
    project_id = backend.registry.project_id(config.project.name)
    if project_id is None and follow:  # a deployment starts this job before the first import
        console.print(f"waiting for project {config.project.name!r}: no raster imported yet")
        project_id = wait_for_project(backend, config.project.name, config.sam.precompute_interval)
    if project_id is None:
        raise GeolabelError(f"no project {config.project.name!r} imported yet; run: geolabel import RASTER")
    try:
        if follow:
            console.print(f"keeping the next {limit} tiles of project {project_id} embedded (Ctrl-C stops)")
            follow_queue(
                backend, client, project_id, limit, config.sam.precompute_interval, threading.Event()
            )
            return
        with exclusive(backend):
            tiles = next_tiles(backend, client.queue(project_id), limit)
            with progress_bar() as bar:
                bar.start("embedding tiles", len(tiles))
                report = precompute(backend, tiles, on_tile=lambda _tile: bar.advance(1))
    except (BackendError, PrecomputeBusyError) as exc:
        raise GeolabelError(str(exc)) from None
    console.print(
        f"{len(report.computed)} embeddings computed, {report.cached} already cached, "
        f"{len(report.failed)} failed, in {report.seconds:.0f} s",
        highlight=False,
    )
    for tile_id, reason in report.failed.items():
        console.print(f"  {tile_id}: {reason}", highlight=False)


def wait_for_project(
    backend: Backend, name: str, interval: float, timeout: float | None = None
) -> int | None:
    """Look for project ``name`` in the registry every ``interval`` seconds until it is imported.

    Returns its Label Studio id, or None when ``timeout`` seconds (None: no limit) passed first.
    """
    deadline = None if timeout is None else time.monotonic() + timeout
    while deadline is None or time.monotonic() < deadline:
        time.sleep(interval)
        project_id = backend.registry.project_id(name)
        if project_id is not None:
            return project_id
    return None
