"""Background SAM embeddings for the tiles next in the annotation queue.

The image encoder takes seconds per tile on a CPU, so embeddings are computed
before annotators open the tiles: Label Studio serves unlabelled tasks lowest
prediction score first (uncertainty sampling), and this job embeds the first
``limit`` of them into the shared cache. One job runs at a time per cache
folder (a file lock), whatever the number of backend workers; it is meant to
run in its own low-priority process (``geolabel embed --follow``) so clicks
keep the CPU.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from geolabel.errors import LabelStudioError
from geolabel.locks import exclusive_lock
from geolabel.lsclient import LabelStudioClient, QueuedTask
from georef.errors import RegistryError
from georef.registry import TileRecord
from ml_backend.errors import BackendError, PrecomputeBusyError, SamUnavailableError
from ml_backend.service import Backend, load_rgb

log = logging.getLogger("geolabel.precompute")


@dataclass
class PrecomputeReport:
    """What one pass did."""

    computed: list[str] = field(default_factory=list)
    cached: int = 0
    failed: dict[str, str] = field(default_factory=dict)
    seconds: float = 0.0


def next_tiles(backend: Backend, queue: Sequence[QueuedTask], limit: int) -> list[TileRecord]:
    """The tiles of the first ``limit`` queued tasks the registry knows (others are skipped)."""
    tiles: list[TileRecord] = []
    for task in queue:
        if len(tiles) >= limit:
            break
        try:
            tiles.append(backend.registry.tile_by_task(task.task_id))
        except RegistryError:
            log.debug("task %s is not a geolabel tile; skipped", task.task_id)
    return tiles


def precompute(
    backend: Backend, tiles: Sequence[TileRecord], on_tile: Callable[[TileRecord], None] | None = None
) -> PrecomputeReport:
    """Embed ``tiles`` in order, skipping those already cached; a failing tile is reported, not fatal.

    Raises:
        SamUnavailableError: if SAM is off.
    """
    sam, cache = backend.sam, backend.cache
    if sam is None or cache is None:
        raise SamUnavailableError(f"SAM is off: {backend.sam_error}")
    report = PrecomputeReport()
    started = time.perf_counter()
    for tile in tiles:
        try:
            image = backend.image_path(tile)
            key = cache.key(tile.id, image)
            if cache.contains(key):
                report.cached += 1
            else:
                rgb, _ = load_rgb(image)
                cache.get_or_compute(key, lambda rgb=rgb: sam.embed(rgb))  # type: ignore[misc]
                report.computed.append(tile.id)
        except (BackendError, OSError) as exc:
            report.failed[tile.id] = str(exc)
            log.warning("tile %s: %s", tile.id, exc)
        if on_tile is not None:
            on_tile(tile)
    report.seconds = time.perf_counter() - started
    return report


@contextmanager
def exclusive(backend: Backend) -> Iterator[None]:
    """Hold the cache folder's precompute lock.

    Raises:
        PrecomputeBusyError: if another process holds it.
    """
    if backend.cache is None:
        raise SamUnavailableError(f"SAM is off: {backend.sam_error}")
    message = f"another process is already precomputing embeddings into {backend.cache.folder}"
    with exclusive_lock(backend.cache.folder / ".precompute.lock", lambda: PrecomputeBusyError(message)):
        yield


def follow_queue(
    backend: Backend,
    client: LabelStudioClient,
    project_id: int,
    limit: int,
    interval: float,
    stop: threading.Event,
) -> None:
    """Keep the next ``limit`` tiles of the queue embedded until ``stop`` is set.

    Label Studio being down is logged and retried at the next interval.

    Raises:
        PrecomputeBusyError: if another process already follows the queue for this cache.
    """
    with exclusive(backend):
        while not stop.is_set():
            try:
                tiles = next_tiles(backend, client.queue(project_id), limit)
                report = precompute(backend, tiles, on_tile=lambda _tile: _raise_if(stop))
                if report.computed:
                    log.info("embedded %d tiles in %.0f s", len(report.computed), report.seconds)
            except LabelStudioError as exc:
                log.warning("cannot read the annotation queue: %s", exc)
            except _StoppedError:
                return
            stop.wait(interval)


class _StoppedError(Exception):
    pass


def _raise_if(stop: threading.Event) -> None:
    if stop.is_set():
        raise _StoppedError
