"""Where tile-parallel work runs: in this process, or fanned out on Dask (``dask.distributed``).

Round scoring, ``geolabel predict`` and the export's mosaic are maps of a pure function over a list of
values (chunks of tile records, mosaic blocks). :func:`open_engine` picks where they run from the
``[compute]`` section:

- ``scheduler = "none"``, or a job smaller than ``in_process_below`` tiles: in this process;
- ``scheduler = "local"``: a Dask ``LocalCluster`` on this machine (worker processes, started for the
  job and stopped after it; its dashboard link is announced);
- ``scheduler = "tcp://host:8786"`` (or ``tls://``): an existing Dask cluster. Its workers must run
  the same geolabel and see the data folder and the rasters at the same paths: they receive values
  (tile and raster records, grids, folders) and read shared storage, never the registry.

Every engine yields results in the order of the items, with a bounded number in flight, so the caller
can write them as they come (memory stays a few results, whatever the job's size). On Dask each task
is retried when its worker dies (:data:`RETRIES`), and the scheduler reassigns the work of a lost
worker, so a killed worker does not change the result.
"""

from __future__ import annotations

import logging
import os
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from geolabel.config import ComputeSection
from geolabel.errors import GeolabelError

if TYPE_CHECKING:
    from distributed import Client

logger = logging.getLogger(__name__)
T = TypeVar("T")
R = TypeVar("R")
#: Times a Dask task is run again after its worker died or it failed (Dask's own retries).
RETRIES = 2
#: Seconds to wait for an existing cluster's scheduler before saying it cannot be reached.
CONNECT_TIMEOUT = 30


class ComputeError(GeolabelError, ConnectionError):
    """The Dask cluster cannot be started or reached."""


class Engine(Protocol):
    """Runs a function over items and yields the results in order."""

    #: Where the work runs, in words (printed before long jobs).
    description: str
    #: How many items can run at once.
    slots: int

    def map_ordered(self, function: Callable[[T], R], items: Sequence[T], ahead: int = 0) -> Iterator[R]:
        """``function(item)`` for each item, in order; at most ``ahead`` (default 2 x slots) in flight."""
        ...


class InProcess:
    """This process: one item after another, or ``threads`` at a time (numpy and GDAL release the GIL)."""

    def __init__(self, threads: int = 1) -> None:
        self.slots = max(1, threads)
        self.description = "in this process" + (f" ({self.slots} threads)" if self.slots > 1 else "")

    def map_ordered(self, function: Callable[[T], R], items: Sequence[T], ahead: int = 0) -> Iterator[R]:
        """See :class:`Engine`."""
        if self.slots == 1:
            for item in items:
                yield function(item)
            return
        with ThreadPoolExecutor(self.slots) as pool:
            pending: deque[Future[R]] = deque()
            for item in items:
                pending.append(pool.submit(function, item))
                if len(pending) > (ahead or 2 * self.slots):
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()


class DaskEngine:
    """A ``distributed.Client``: each item is one Dask task, retried when its worker dies."""

    def __init__(self, client: Client, description: str) -> None:
        self.client = client
        self.description = description
        self.slots = max(1, sum(client.nthreads().values()))

    def map_ordered(self, function: Callable[[T], R], items: Sequence[T], ahead: int = 0) -> Iterator[R]:
        """See :class:`Engine`. Tasks still pending are cancelled if the caller stops early or fails."""
        limit = ahead or 2 * self.slots
        pending: deque[Any] = deque()
        try:
            for item in items:
                pending.append(self.client.submit(function, item, pure=False, retries=RETRIES))
                if len(pending) > limit:
                    yield pending.popleft().result()
            while pending:
                yield pending.popleft().result()
        finally:
            if pending:
                self.client.cancel(list(pending))


def uses_cluster(section: ComputeSection, items: int) -> bool:
    """True when a job of ``items`` tiles runs on Dask rather than in this process."""
    return section.scheduler != "none" and items >= section.in_process_below


@contextmanager
def open_engine(
    section: ComputeSection,
    items: int,
    threads: int = 1,
    announce: Callable[[str], None] | None = None,
) -> Iterator[Engine]:
    """The engine for a job of ``items`` tiles, open for the ``with`` block.

    Args:
        section: the ``[compute]`` settings.
        items: the job's size in tiles (small jobs stay in this process: a cluster takes seconds to start).
        threads: threads of the in-process engine (1 for model work: torch uses the cores itself).
        announce: told where the work runs and the Dask dashboard's link (default: logged).

    Raises:
        ComputeError: if the cluster cannot be started or its scheduler cannot be reached.
    """
    say = announce or logger.info
    if not uses_cluster(section, items):
        yield InProcess(threads)
        return
    with _client(section) as (client, where):
        local_without = section.scheduler == "local" and not section.dashboard_address
        link = "none" if local_without or not _has_dashboard(client) else client.dashboard_link
        say(f"{where}; Dask dashboard: {link}")
        yield DaskEngine(client, where)


@contextmanager
def _client(section: ComputeSection) -> Iterator[tuple[Client, str]]:
    """A client of a LocalCluster started for the job, or of the configured scheduler."""
    from distributed import Client, LocalCluster

    if section.scheduler != "local":
        try:
            client = Client(section.scheduler, timeout=CONNECT_TIMEOUT)
        except (OSError, TimeoutError) as exc:
            raise ComputeError(
                f"cannot reach the Dask scheduler at {section.scheduler} ({exc}); start it "
                '(`dask scheduler`) and its workers, or set [compute] scheduler = "local" or pass '
                "--scheduler local"
            ) from None
        with client:
            workers = len(client.scheduler_info().get("workers", {}))
            yield client, f"Dask cluster at {section.scheduler} ({workers} workers)"
        return
    workers = section.workers or os.cpu_count() or 1
    try:
        cluster = LocalCluster(
            n_workers=workers,
            threads_per_worker=section.threads_per_worker,
            processes=True,
            memory_limit=section.memory_limit,
            # without a dashboard the scheduler still serves its health routes: on a free loopback port
            dashboard_address=section.dashboard_address or "127.0.0.1:0",
            scheduler_kwargs={"dashboard": bool(section.dashboard_address)},
            silence_logs=logging.ERROR,
        )
    except (OSError, RuntimeError, ValueError) as exc:
        raise ComputeError(f"cannot start a Dask LocalCluster of {workers} workers: {exc}") from None
    with cluster, Client(cluster) as client:
        yield client, f"Dask LocalCluster ({workers} workers x {section.threads_per_worker} threads)"


def _has_dashboard(client: Client) -> bool:
    services = client.scheduler_info().get("services", {})
    return "dashboard" in services
