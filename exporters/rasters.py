"""The prediction rasters: a streamed mosaic written block by block, then copied to Cloud-Optimized GeoTIFF.

``predictions_proba.tif`` holds one uint8 band per class (background first),
0-255 probability, and a per-dataset mask (0 where there is no image: every
byte value is a probability, so no nodata value is free). ``predictions_argmax.tif``
holds the class ids with a colour table and nodata 255. Both are first written
as tiled GeoTIFFs in the work folder, one block at a time, then copied by GDAL's
COG driver (internal 512-px tiles, DEFLATE, overviews: average for probabilities,
nearest for class ids), which streams too.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil

from exporters.mosaic import ARGMAX_NODATA, Block, BlockResult, Loader, mosaic_block
from georef.grid import Grid

#: GDAL's block cache while writing, in MB (its default, 5 % of RAM, dominates the peak memory).
GDAL_CACHE_MB = 256
#: Creation options of the final COGs (the benchmark gives gdal_translate the same ones).
COG_OPTIONS = {"COMPRESS": "DEFLATE", "PREDICTOR": "2", "BLOCKSIZE": "512", "BIGTIFF": "IF_SAFER"}
_WORK_OPTIONS = {"tiled": True, "blockxsize": 512, "blockysize": 512, "compress": "ZSTD", "zstd_level": 1,
                 "bigtiff": "IF_SAFER"}  # fmt: skip


@dataclass(frozen=True)
class Band:
    """A probability band: the class id it stands for, its name and colour (``#rrggbb``)."""

    class_id: int
    name: str
    color: str


@dataclass(frozen=True)
class MosaicFiles:
    """The two work GeoTIFFs of a mosaic, and how many output pixels have data."""

    proba: Path
    argmax: Path
    valid_pixels: int


def write_mosaic(
    out: Grid,
    blocks: Sequence[Block],
    load: Loader,
    bands: Sequence[Band],
    work: Path,
    workers: int = 2,
    advance: Callable[[int], None] | None = None,
) -> MosaicFiles:
    """Compute every block (``workers`` threads) and write the probability and class-id work GeoTIFFs."""
    profile = {"driver": "GTiff", "width": out.width, "height": out.height, "crs": out.crs,
               "transform": out.transform, "dtype": "uint8", **_WORK_OPTIONS}  # fmt: skip
    proba_path, argmax_path = work / "proba.tif", work / "argmax.tif"
    class_ids = [band.class_id for band in bands]
    valid_pixels = 0
    with (
        rasterio.Env(GDAL_TIFF_INTERNAL_MASK=True, GDAL_CACHEMAX=GDAL_CACHE_MB),
        rasterio.open(proba_path, "w", count=len(bands), **profile) as proba,
        rasterio.open(argmax_path, "w", count=1, nodata=ARGMAX_NODATA, **profile) as argmax,
    ):
        _describe(proba, argmax, bands)
        proba.write_mask(False)  # pixels no block covers have no data
        for result in _computed(out, blocks, load, len(bands), workers):
            window = result.window.to_rasterio()
            proba.write(result.proba, window=window)
            proba.write_mask(result.valid.astype(np.uint8) * 255, window=window)
            argmax.write(result.argmax(class_ids), 1, window=window)
            valid_pixels += int(result.valid.sum())
            if advance is not None:
                advance(1)
    return MosaicFiles(proba_path, argmax_path, valid_pixels)


def to_cog(source: Path, target: Path, resampling: str, threads: int = 2) -> None:
    """Copy a GeoTIFF to a Cloud-Optimized GeoTIFF with overviews (GDAL's COG driver, streamed)."""
    with rasterio.Env(GDAL_NUM_THREADS=str(threads), GDAL_CACHEMAX=GDAL_CACHE_MB):
        rasterio.shutil.copy(
            source, target, driver="COG", OVERVIEW_RESAMPLING=resampling, NUM_THREADS=str(threads),
            **COG_OPTIONS,
        )  # fmt: skip


def _describe(
    proba: rasterio.io.DatasetWriter, argmax: rasterio.io.DatasetWriter, bands: Sequence[Band]
) -> None:
    """Band names, class tags and the class-id colour table."""
    for index, band in enumerate(bands, start=1):
        proba.set_band_description(index, band.name)
        proba.update_tags(index, class_id=str(band.class_id), color=band.color)
    argmax.set_band_description(1, "class id")
    argmax.update_tags(1, **{f"class_{b.class_id}": b.name for b in bands})
    colours = {b.class_id: (*_rgb(b.color), 255) for b in bands}
    argmax.write_colormap(1, {**colours, ARGMAX_NODATA: (0, 0, 0, 0)})


def _computed(
    out: Grid, blocks: Sequence[Block], load: Loader, bands: int, workers: int
) -> Iterator[BlockResult]:
    """Blocks computed in order by a small thread pool, at most ``workers + 1`` ahead of the writer."""
    if workers <= 1:
        for block in blocks:
            yield mosaic_block(out, block, load, bands)
        return
    with ThreadPoolExecutor(workers) as pool:
        pending: list[Future[BlockResult]] = []
        for block in blocks:
            pending.append(pool.submit(mosaic_block, out, block, load, bands))
            if len(pending) > workers:
                yield pending.pop(0).result()
        yield from _results(pending)


def _results(futures: Iterable[Future[BlockResult]]) -> Iterator[BlockResult]:
    for future in futures:
        yield future.result()


def _rgb(color: str) -> tuple[int, int, int]:
    value = color.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)
