"""Web-mercator map tiles (XYZ, 256 px) rendered from a source raster, for the coordinators' map.

rio-tiler reprojects the tile's window of the raster (GDAL's warper, nearest
neighbour, so every map pixel is one source pixel); the display bands and the
stretch are the raster's own from the registry, applied by
:func:`importers.display.to_uint8`, so the map shows exactly the colours the
annotators see in Label Studio. Nodata is transparent. Each call opens its own
dataset (GDAL handles are not shared across server threads).
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
from rasterio.errors import RasterioError, RasterioIOError
from rio_tiler.errors import RioTilerError, TileOutsideBounds
from rio_tiler.io import Reader

from importers.display import Stretch, encode_png, to_uint8
from importers.errors import RasterNotFoundError, RasterReadError
from importers.render import GDAL_CACHE_MB

TILE_SIZE = 256
MAX_ZOOM = 24


@dataclass(frozen=True)
class MapSource:
    """A raster as the map shows it: its file, display bands (1 or 3, 1-based) and per-band stretch."""

    path: str
    bands: tuple[int, ...]
    stretch: Stretch


@dataclass(frozen=True)
class ZoomRange:
    """The web-mercator zoom levels at which a raster has its own tiles (coarsest, finest)."""

    minzoom: int
    maxzoom: int


def zoom_range(path: str) -> ZoomRange:
    """The zoom levels between the whole raster in about one tile and its native resolution.

    Cached per file version (path, size, modification time), so a refreshing page does not reopen it.

    Raises:
        RasterNotFoundError: if the file is gone.
        RasterReadError: if GDAL cannot open it.
    """
    stat = _stat(path)
    return _zoom_range(path, stat.st_size, stat.st_mtime_ns)


@functools.lru_cache(maxsize=256)
def _zoom_range(path: str, size: int, mtime_ns: int) -> ZoomRange:
    del size, mtime_ns  # the cache key only
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), Reader(path) as reader:
            return ZoomRange(int(reader.minzoom), int(reader.maxzoom))
    except (RasterioError, RioTilerError) as exc:
        raise RasterReadError(f"{path}: cannot open it for the map ({exc})") from None


def render_map_tile(source: MapSource, x: int, y: int, z: int) -> bytes | None:
    """The PNG of web-mercator tile ``z/x/y`` of ``source`` (RGBA where part of it is nodata).

    Returns:
        The PNG bytes, or None when the tile holds no pixel of the raster.

    Raises:
        ValueError: if ``z/x/y`` is not a web-mercator tile.
        RasterNotFoundError: if the file is gone.
        RasterReadError: if GDAL cannot read its pixels.
    """
    if not (0 <= z <= MAX_ZOOM and 0 <= x < 2**z and 0 <= y < 2**z):
        raise ValueError(f"{z}/{x}/{y} is not a web-mercator tile (zoom 0-{MAX_ZOOM}, x and y below 2**zoom)")
    _stat(source.path)
    try:
        with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), Reader(source.path) as reader:
            image = reader.tile(x, y, z, tilesize=TILE_SIZE, indexes=list(source.bands))
    except TileOutsideBounds:
        return None
    except (RasterioIOError, RasterioError, RioTilerError) as exc:
        raise RasterReadError(
            f"{source.path}: cannot read map tile {z}/{x}/{y} ({exc}); "
            "the file is probably damaged or truncated: check it with gdalinfo -checksum"
        ) from None
    valid = np.asarray(image.mask) > 0
    if not valid.any():
        return None
    pixels = np.ascontiguousarray(np.asarray(image.data).transpose(1, 2, 0))
    rgb = to_uint8(pixels, source.stretch)
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    return encode_png(np.ascontiguousarray(rgb), valid)


def _stat(path: str) -> os.stat_result:
    try:
        return Path(path).stat()
    except OSError:
        raise RasterNotFoundError(
            f"{path} is gone: the map cannot show its imagery; put the file back at this path"
        ) from None


@functools.lru_cache(maxsize=1)
def empty_tile_png() -> bytes:
    """A fully transparent map tile (what the map shows where a raster has no pixel)."""
    blank = np.zeros((TILE_SIZE, TILE_SIZE, 3), dtype=np.uint8)
    return encode_png(blank, np.zeros((TILE_SIZE, TILE_SIZE), dtype=bool))
