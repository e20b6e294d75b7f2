"""Display tiles: band choice, one stretch per raster, 8-bit conversion and PNG encoding.

The stretch is computed once per raster from a bounded sample and stored in the
registry, so neighbouring tiles look the same and a resumed import renders the
remaining tiles exactly like the first ones.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import fpng
import numpy as np
import numpy.typing as npt
import rasterio
from rasterio.enums import ColorInterp, MaskFlags
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from georef.grid import PixelWindow
from georef.tiling import axis_starts
from importers.errors import AllNodataError, RasterReadError, UnsupportedRasterError
from importers.raster import RasterInfo

StretchMethod = Literal["auto", "none", "percentile"]
Stretch = tuple[tuple[float, float], ...]

FULL_READ_PIXELS = 2048 * 1024  # smaller rasters are read whole for their stretch
SAMPLE_WINDOW = 256
MAX_VALUES_PER_READ = 1 << 16
SAMPLE_WINDOWS_PER_AXIS = 8
MAX_DECIMATED_SIDE = 1024


def choose_bands(info: RasterInfo, requested: Sequence[int] | None) -> tuple[int, ...]:
    """Pick the 1 or 3 bands to display (1-based).

    Without a request: the bands whose colour interpretation is red, green and
    blue; else bands 1-3 when there are at least three non-alpha bands; else band 1.

    Raises:
        UnsupportedRasterError: if a requested band does not exist or is the
            alpha band, or if the request is not 1 or 3 bands.
    """
    if requested:
        bands = tuple(int(b) for b in requested)
        if len(bands) not in (1, 3):
            raise UnsupportedRasterError(f"choose 1 (grey) or 3 (RGB) display bands, got {list(bands)}")
        for band in bands:
            if not 1 <= band <= info.band_count:
                raise UnsupportedRasterError(
                    f"{info.path.name} has bands 1-{info.band_count}; display band {band} does not exist"
                )
            if band == info.alpha_band:
                raise UnsupportedRasterError(f"band {band} of {info.path.name} is its alpha band")
        return bands
    names = info.colorinterp
    rgb = [ColorInterp.red.name, ColorInterp.green.name, ColorInterp.blue.name]
    if all(name in names for name in rgb):
        return tuple(names.index(name) + 1 for name in rgb)
    data_bands = [b for b in range(1, info.band_count + 1) if b != info.alpha_band]
    return tuple(data_bands[:3]) if len(data_bands) >= 3 else (data_bands[0],)


def compute_stretch(
    src: rasterio.DatasetReader,
    info: RasterInfo,
    bands: Sequence[int],
    method: StretchMethod,
    percentiles: tuple[float, float],
) -> Stretch:
    """Per-band ``(low, high)`` values mapped to 0 and 255, from a bounded sample of the raster.

    ``auto`` keeps 8-bit data as it is and uses ``percentile`` for other types.
    Either way the sample proves the raster holds at least one valid pixel.

    Raises:
        AllNodataError: if no valid pixel is found anywhere in the raster.
        UnsupportedRasterError: for stretch ``none`` on data that is not 8-bit.
    """
    if method == "auto":
        method = "none" if info.dtype == "uint8" else "percentile"
    if method == "none" and info.dtype != "uint8":
        raise UnsupportedRasterError(
            f"{info.path.name} is {info.dtype}: stretch 'none' only suits 8-bit data; use 'percentile'"
        )
    samples = _sample_valid(src, info, bands)
    if method == "none":
        return tuple((0.0, 255.0) for _ in bands)
    stretch = []
    for values in samples:
        low, high = np.percentile(values, percentiles)
        low, high = float(low), float(high)
        stretch.append((low, high if high > low else low + 1.0))
    return tuple(stretch)


def _sample_valid(
    src: rasterio.DatasetReader, info: RasterInfo, bands: Sequence[int]
) -> list[npt.NDArray[np.float32]]:
    """Valid values per band, each step tried only if the previous found none.

    A small raster is read whole; a large one through a grid of windows, then a
    decimated read, then block by block (so a sparse raster is never taken for
    an empty one). Memory stays bounded: every read keeps at most
    ``MAX_VALUES_PER_READ`` values per band.
    """
    chunks: list[list[npt.NDArray[np.float32]]] = [[] for _ in bands]
    if info.grid.width * info.grid.height <= FULL_READ_PIXELS:
        _collect(src, bands, None, None, chunks)
        return _found(chunks, info)
    for window in _sample_windows(info.grid.width, info.grid.height):
        _collect(src, bands, window, None, chunks)
    if not _count(chunks):
        scale = max(1.0, max(info.grid.width, info.grid.height) / MAX_DECIMATED_SIDE)
        shape = (max(1, round(info.grid.height / scale)), max(1, round(info.grid.width / scale)))
        _collect(src, bands, None, shape, chunks)
    if not _count(chunks):
        for _, window in src.block_windows(bands[0]):
            _collect(src, bands, window, None, chunks)
    return _found(chunks, info)


def _count(chunks: list[list[npt.NDArray[np.float32]]]) -> int:
    return sum(c.size for c in chunks[0])


def _found(chunks: list[list[npt.NDArray[np.float32]]], info: RasterInfo) -> list[npt.NDArray[np.float32]]:
    if not _count(chunks):
        raise AllNodataError(
            f"{info.path}: every pixel is nodata (nodata={info.nodata}); there is nothing to label"
        )
    return [np.concatenate(c) for c in chunks]


def _sample_windows(width: int, height: int) -> list[Window]:
    size = SAMPLE_WINDOW
    cols = _spread(width, size)
    rows = _spread(height, size)
    return [Window(c, r, min(size, width), min(size, height)) for r in rows for c in cols]


def _spread(length: int, size: int) -> list[int]:
    starts = axis_starts(length, size, 0)
    step = max(1, len(starts) // SAMPLE_WINDOWS_PER_AXIS)
    return starts[::step][:SAMPLE_WINDOWS_PER_AXIS]


def _collect(
    src: rasterio.DatasetReader,
    bands: Sequence[int],
    window: Window | None,
    out_shape: tuple[int, int] | None,
    chunks: list[list[npt.NDArray[np.float32]]],
) -> None:
    try:
        shape = None if out_shape is None else (len(bands), *out_shape)
        data = src.read(list(bands), window=window, out_shape=shape)
        valid = valid_mask(src, bands, data, window, out_shape)
    except RasterioIOError as exc:
        raise RasterReadError(
            f"{src.name}: cannot read its pixels ({exc}); the file is probably damaged or truncated: "
            "check it with gdalinfo -checksum"
        ) from None
    for i in range(len(bands)):
        values = data[i][valid].astype(np.float32)
        step = max(1, values.size // MAX_VALUES_PER_READ)  # bounded memory whatever the raster
        chunks[i].append(values[::step])


def valid_mask(
    src: rasterio.DatasetReader,
    bands: Sequence[int],
    data: npt.NDArray[np.generic],
    window: Window | None = None,
    out_shape: tuple[int, int] | None = None,
) -> npt.NDArray[np.bool_]:
    """Which pixels of ``data`` (the ``(bands, h, w)`` values just read) hold data.

    With per-band nodata values (the common case) a pixel is valid when any display
    band differs from its nodata value, tested on the values already read: GDAL's
    dataset mask would decode every band of the window again, which costs more than
    the read itself. Alpha bands and internal masks use GDAL's dataset mask. NaN is
    never valid.
    """
    flags = [src.mask_flag_enums[b - 1] for b in bands]
    if all(f == [MaskFlags.all_valid] for f in flags):
        valid = np.ones(data.shape[1:], dtype=bool)
    elif all(f == [MaskFlags.nodata] for f in flags):
        valid = np.zeros(data.shape[1:], dtype=bool)
        for i, band in enumerate(bands):
            nodata = src.nodatavals[band - 1]
            valid |= ~np.isnan(data[i]) if np.isnan(nodata) else data[i] != nodata
    else:
        kwargs: dict[str, object] = {"window": window}
        if out_shape is not None:
            kwargs["out_shape"] = out_shape
        valid = src.dataset_mask(**kwargs) > 0
    if data.dtype.kind == "f":
        valid &= np.isfinite(data).all(axis=0)
    return valid


def window_valid(path: str, bands: Sequence[int], window: PixelWindow) -> npt.NDArray[np.bool_]:
    """Which pixels of a raster's ``window`` hold an image, read from the raster (:func:`valid_mask`).

    What a tile shows as transparent is what exports, imports and agreement leave out.

    Raises:
        rasterio.errors.RasterioIOError: if the raster cannot be read.
    """
    rio_window = window.to_rasterio()
    with rasterio.open(path) as src:
        return valid_mask(src, bands, src.read(list(bands), window=rio_window), rio_window)


def read_display(
    src: rasterio.DatasetReader, window: Window, bands: Sequence[int], stretch: Stretch
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
    """Read one window as an 8-bit ``(height, width, 3)`` image and its validity mask.

    Pixels are read straight into a pixel-interleaved buffer (no transpose copy).
    """
    height, width = int(window.height), int(window.width)
    pixels = np.empty((height, width, len(bands)), dtype=src.dtypes[0])
    src.read(list(bands), window=window, out=pixels.transpose(2, 0, 1))
    valid = valid_mask(src, bands, pixels.transpose(2, 0, 1), window)
    image = to_uint8(pixels, stretch)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    return image, valid


def to_uint8(pixels: npt.NDArray[np.generic], stretch: Stretch) -> npt.NDArray[np.uint8]:
    """Map ``(height, width, bands)`` values so each band's ``(low, high)`` becomes ``(0, 255)``.

    8- and 16-bit unsigned data go through a lookup table (exactly the same mapping, faster).
    """
    if pixels.dtype == np.uint8 and all(pair == (0.0, 255.0) for pair in stretch):
        return np.ascontiguousarray(pixels, dtype=np.uint8)
    out = np.empty(pixels.shape, dtype=np.uint8)
    for i, (low, high) in enumerate(stretch):
        if pixels.dtype in (np.uint8, np.uint16):
            indices = pixels[..., i].astype(np.intp, copy=False)
            np.take(_lookup_table(pixels.dtype.itemsize, low, high), indices, out=out[..., i])
        else:
            out[..., i] = _stretch_band(pixels[..., i], low, high)
    return out


def _stretch_band(values: npt.NDArray[np.generic], low: float, high: float) -> npt.NDArray[np.uint8]:
    band = (values.astype(np.float32) - np.float32(low)) * np.float32(255.0 / (high - low))
    np.clip(np.nan_to_num(band, nan=0.0), 0, 255, out=band)
    return (band + np.float32(0.5)).astype(np.uint8)


@functools.lru_cache(maxsize=32)
def _lookup_table(itemsize: int, low: float, high: float) -> npt.NDArray[np.uint8]:
    return _stretch_band(np.arange(1 << (8 * itemsize), dtype=np.float32), low, high)


def encode_png(image: npt.NDArray[np.uint8], valid: npt.NDArray[np.bool_]) -> bytes:
    """Encode a display tile as lossless PNG; nodata pixels become transparent (RGBA)."""
    if not valid.all():
        alpha = np.where(valid, 255, 0).astype(np.uint8)
        image = np.ascontiguousarray(np.dstack([image, alpha]))
    encoded: bytes = fpng.from_ndarray(image)
    return encoded
