"""Open and check a source raster before anything is written."""

from __future__ import annotations

import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import rasterio
from affine import Affine
from rasterio.enums import ColorInterp
from rasterio.errors import NotGeoreferencedWarning

from georef.grid import Grid
from importers.errors import (
    NotARasterError,
    NotGeoreferencedError,
    RasterNotFoundError,
    UnsupportedRasterError,
)

SUPPORTED_DTYPES = frozenset({"uint8", "int8", "uint16", "int16", "uint32", "int32", "float32", "float64"})


@dataclass(frozen=True)
class RasterInfo:
    """What the importer needs to know about a source raster."""

    path: Path
    grid: Grid
    band_count: int
    dtype: str
    nodata: float | None
    colorinterp: tuple[str, ...]

    @property
    def alpha_band(self) -> int | None:
        """1-based index of the alpha band, if the raster has one."""
        for index, name in enumerate(self.colorinterp, start=1):
            if name == ColorInterp.alpha.name:
                return index
        return None


def inspect_raster(path: str | Path) -> RasterInfo:
    """Open ``path`` and check it is a georeferenced raster geolabel can tile.

    Rotated and sheared geotransforms are supported: tiles are cut in pixel
    space and every tile keeps the exact affine transform of its pixels.

    Raises:
        RasterNotFoundError: the path does not exist.
        NotARasterError: GDAL cannot read it.
        NotGeoreferencedError: no CRS, no geotransform, or only GCPs/RPCs.
        UnsupportedRasterError: complex or other non-displayable data types.
    """
    file = Path(path).expanduser().resolve()
    if file.is_dir():
        raise RasterNotFoundError(f"{path}: is a folder; give the raster files inside it (e.g. {path}/*.tif)")
    if not file.is_file():
        raise RasterNotFoundError(f"{path}: no such file")
    if not os.access(file, os.R_OK):
        raise NotARasterError(f"{path}: permission denied; geolabel cannot read it")
    try:
        with warnings.catch_warnings():  # geolabel says itself, clearly, what is missing
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(file) as src:
                return _info(file, src)
    except rasterio.errors.RasterioIOError as exc:
        raise NotARasterError(f"{path}: not a raster GDAL can read ({exc})") from exc


def _info(file: Path, src: rasterio.DatasetReader) -> RasterInfo:
    _check_georeferenced(file, src)
    dtype = str(src.dtypes[0])
    if dtype not in SUPPORTED_DTYPES:
        raise UnsupportedRasterError(
            f"{file}: data type {dtype} cannot be displayed; convert it first "
            "(for example gdal_translate -ot Float32)"
        )
    if len(set(src.dtypes)) != 1:
        raise UnsupportedRasterError(f"{file}: bands have different data types {src.dtypes}")
    return RasterInfo(
        path=file,
        grid=Grid(src.width, src.height, src.transform, src.crs),
        band_count=src.count,
        dtype=dtype,
        nodata=None if src.nodata is None else float(src.nodata),
        colorinterp=tuple(ci.name for ci in src.colorinterp),
    )


def _check_georeferenced(file: Path, src: rasterio.DatasetReader) -> None:
    gcps, _ = src.gcps
    if src.crs is None or src.transform == Affine.identity():
        if gcps:
            raise NotGeoreferencedError(
                f"{file}: georeferenced only by {len(gcps)} ground control points; geolabel needs a "
                "geotransform. Warp it first: gdalwarp -r bilinear in.tif out.tif"
            )
        if src.rpcs:
            raise NotGeoreferencedError(
                f"{file}: georeferenced only by RPCs; orthorectify it first: gdalwarp -rpc in.tif out.tif"
            )
    if src.crs is None:
        raise NotGeoreferencedError(
            f"{file}: has no coordinate reference system. Assign the right one, for example: "
            "gdal_edit.py -a_srs EPSG:2154 file.tif"
        )
    if src.transform == Affine.identity():
        raise NotGeoreferencedError(
            f"{file}: has no geotransform (pixel coordinates only). Set one, for example: "
            "gdal_edit.py -a_ullr ULX ULY LRX LRY file.tif"
        )
    if src.transform.is_degenerate:
        raise NotGeoreferencedError(f"{file}: its geotransform is singular (zero pixel size)")


def content_hash(path: str | Path, chunk_size: int = 4 << 20) -> str:
    """SHA-256 of the file's bytes, read in chunks (memory stays bounded)."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(chunk_size):
            digest.update(chunk)
    return digest.hexdigest()
