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

import functools
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import rasterio
import rasterio.shutil

from exporters.mosaic import ARGMAX_NODATA, Block, Loader, mosaic_block
from geolabel.compute import Engine, InProcess
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
    engine: Engine | None = None,
    advance: Callable[[int], None] | None = None,
) -> MosaicFiles:
    """Compute every block on ``engine`` (default: this process) and write the two work GeoTIFFs in order.

    Blocks are independent (:func:`~exporters.mosaic.mosaic_block` reads only the tiles touching it
    through ``load``, which must be picklable to run on Dask: a
    :class:`~trainer.predictions.PredictionStore`'s ``load``); a few are in flight while this process
    writes them, so memory stays a few blocks whatever the engine.
    """
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
        compute = functools.partial(mosaic_block, out, load=load, bands=len(bands))
        for result in (engine or InProcess()).map_ordered(compute, blocks):
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


def _rgb(color: str) -> tuple[int, int, int]:
    value = color.lstrip("#")
    return int(value[0:2], 16), int(value[2:4], 16), int(value[4:6], 16)
