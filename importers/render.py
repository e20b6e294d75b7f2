"""Render display tiles in parallel: read window, stretch, encode PNG, write file.

Work is split into chunks of consecutive tiles (row-major, so strip-organised
files are decompressed once per chunk) and spread over worker threads; each
chunk opens its own dataset handle (GDAL handles are not shared across threads).
GDAL releases the GIL while it reads and decompresses, which is most of the
work, so threads use both cores without the memory of extra processes (each
would load rasterio, numpy and GDAL again). Memory stays bounded by a few tiles
per worker and GDAL's block cache, which is capped. ``render_chunk`` is a plain
function over a list of tiles, so a process pool or Dask can fan it out instead.
"""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path

import rasterio
from rasterio.errors import RasterioIOError

from georef.grid import PixelWindow
from importers.display import Stretch, encode_png, read_display
from importers.errors import RasterReadError, TileWriteError

GDAL_CACHE_MB = 64
CHUNK_TILES = 16


@dataclass(frozen=True)
class RenderJob:
    """What every worker needs to render tiles of one raster (picklable)."""

    raster_path: str
    bands: tuple[int, ...]
    stretch: Stretch
    output_root: str


@dataclass(frozen=True)
class TileTask:
    """One tile to render: its id, its window in the raster and its image path under the root."""

    tile_id: str
    window: PixelWindow
    relative_path: str


RenderResult = tuple[str, str | None]  # (tile_id, relative image path or None if all nodata)


def render_chunk(job: RenderJob, tasks: Sequence[TileTask]) -> list[RenderResult]:
    """Render ``tasks`` in this process; an entirely nodata tile gives ``(tile_id, None)``."""
    results: list[RenderResult] = []
    root = Path(job.output_root)
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(job.raster_path) as src:
        for task in tasks:
            try:
                image, valid = read_display(src, task.window.to_rasterio(), job.bands, job.stretch)
            except RasterioIOError as exc:
                raise RasterReadError(
                    f"{job.raster_path}: cannot read the pixels of tile {task.tile_id} ({exc}); "
                    "the file is probably damaged or truncated: check it with gdalinfo -checksum"
                ) from None
            if not valid.any():
                results.append((task.tile_id, None))
                continue
            _write_atomic(root / task.relative_path, encode_png(image, valid))
            results.append((task.tile_id, task.relative_path))
    return results


def render_tiles(job: RenderJob, tasks: Sequence[TileTask], workers: int) -> Iterator[list[RenderResult]]:
    """Render every task on ``workers`` threads, yielding results chunk by chunk as they complete.

    At most ``2 * workers`` chunks are in flight, so memory does not grow with the raster.
    """
    chunks = [tasks[i : i + CHUNK_TILES] for i in range(0, len(tasks), CHUNK_TILES)]
    if workers <= 1 or len(chunks) <= 1:
        for chunk in chunks:
            yield render_chunk(job, chunk)
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="geolabel-render") as pool:
        pending: set[Future[list[RenderResult]]] = set()
        queue = iter(chunks)
        for chunk in queue:
            pending.add(pool.submit(render_chunk, job, chunk))
            if len(pending) >= workers * 2:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                next_chunk = next(queue, None)
                if next_chunk is not None:
                    pending.add(pool.submit(render_chunk, job, next_chunk))
                yield future.result()


def _write_atomic(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp.write_bytes(data)
        os.replace(tmp, path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise TileWriteError(f"cannot write display tile {path}: {exc.strerror or exc}") from None
