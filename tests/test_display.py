"""Display tiles from real GeoTIFFs: band choice, per-raster stretch, nodata, masks, lossless PNG."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.enums import ColorInterp
from rasterio.windows import Window

from georef.grid import PixelWindow
from importers.display import _stretch_band, choose_bands, compute_stretch, read_display, to_uint8
from importers.errors import AllNodataError, TileWriteError, UnsupportedRasterError
from importers.raster import inspect_raster
from importers.render import RenderJob, TileTask, render_chunk, render_tiles
from tests.conftest import GeoTiffFactory, synthetic

CI = ColorInterp


def png(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def render_one(raster: Path, window: PixelWindow, out: Path, bands=(1, 2, 3), stretch=None):
    info = inspect_raster(raster)
    with rasterio.open(raster) as src:
        stretch = stretch or compute_stretch(src, info, bands, "auto", (2.0, 98.0))
    job = RenderJob(str(raster), tuple(bands), stretch, str(out))
    return render_chunk(job, [TileTask("t", window, "tile.png")])[0]


@pytest.mark.parametrize(
    ("count", "interp", "expected"),
    [
        (3, [CI.blue, CI.green, CI.red], (3, 2, 1)),
        (5, [CI.gray, CI.undefined, CI.undefined, CI.undefined, CI.undefined], (1, 2, 3)),
        (4, [CI.red, CI.green, CI.blue, CI.alpha], (1, 2, 3)),
        (2, [CI.gray, CI.alpha], (1,)),
        (1, [CI.gray], (1,)),
    ],
)
def test_default_display_bands(make_geotiff: GeoTiffFactory, count, interp, expected) -> None:
    info = inspect_raster(make_geotiff(count=count, colorinterp=interp, photometric="MINISBLACK"))
    assert choose_bands(info, None) == expected


def test_requested_bands_are_checked(make_geotiff: GeoTiffFactory) -> None:
    interp = [CI.red, CI.green, CI.blue, CI.alpha, CI.undefined]
    info = inspect_raster(make_geotiff(count=5, colorinterp=interp, photometric="MINISBLACK"))
    assert choose_bands(info, [5, 1, 2]) == (5, 1, 2)
    with pytest.raises(UnsupportedRasterError, match="band 6 does not exist"):
        choose_bands(info, [6, 1, 2])
    with pytest.raises(UnsupportedRasterError, match="1 \\(grey\\) or 3"):
        choose_bands(info, [1, 2])
    with pytest.raises(UnsupportedRasterError, match="alpha band"):
        choose_bands(info, [4])


def test_uint8_tiles_are_lossless_copies(make_geotiff: GeoTiffFactory, tmp_path: Path) -> None:
    raster = make_geotiff(width=700, height=600, tiled=True, blockxsize=256, blockysize=256)
    window = PixelWindow(188, 88, 512, 512)
    assert render_one(raster, window, tmp_path) == ("t", "tile.png")
    with rasterio.open(raster) as src:
        expected = src.read(window=window.to_rasterio()).transpose(1, 2, 0)
    assert np.array_equal(png(tmp_path / "tile.png"), expected)


def test_one_pixel_shift_would_be_caught(make_geotiff: GeoTiffFactory, tmp_path: Path) -> None:
    raster = make_geotiff(width=300, height=300)
    render_one(raster, PixelWindow(10, 10, 100, 100), tmp_path)
    with rasterio.open(raster) as src:
        shifted = src.read(window=Window(11, 10, 100, 100)).transpose(1, 2, 0)
    assert not np.array_equal(png(tmp_path / "tile.png"), shifted)


def test_nodata_pixels_become_transparent(make_geotiff: GeoTiffFactory, tmp_path: Path) -> None:
    data = synthetic(3, 100, 100, "uint8")
    data[:, :40, :] = 0
    raster = make_geotiff(data=data, nodata=0)
    render_one(raster, PixelWindow(0, 0, 100, 100), tmp_path)
    image = png(tmp_path / "tile.png")
    assert image.shape == (100, 100, 4)
    assert (image[:40, :, 3] == 0).all()
    assert (image[40:, :, 3] == 255).all()
    assert np.array_equal(image[40:, :, :3], data[:, 40:, :].transpose(1, 2, 0))


def test_alpha_band_and_internal_mask_are_honoured(make_geotiff: GeoTiffFactory, tmp_path: Path) -> None:
    data = synthetic(4, 64, 64, "uint8")
    data[3] = 255
    data[3, :, :10] = 0
    raster = make_geotiff(data=data, colorinterp=[CI.red, CI.green, CI.blue, CI.alpha])
    render_one(raster, PixelWindow(0, 0, 64, 64), tmp_path / "alpha")
    assert (png(tmp_path / "alpha" / "tile.png")[:, :10, 3] == 0).all()

    mask = np.ones((64, 64), dtype=bool)
    mask[50:, :] = False
    masked = make_geotiff(data=synthetic(3, 64, 64, "uint8"), mask=mask)
    render_one(masked, PixelWindow(0, 0, 64, 64), tmp_path / "mask")
    alpha = png(tmp_path / "mask" / "tile.png")[:, :, 3]
    assert (alpha[50:] == 0).all()
    assert (alpha[:50] == 255).all()


def test_entirely_nodata_tile_is_skipped(make_geotiff: GeoTiffFactory, tmp_path: Path) -> None:
    data = synthetic(3, 100, 200, "uint8")
    data[:, :, :100] = 0
    raster = make_geotiff(data=data, nodata=0)
    assert render_one(raster, PixelWindow(0, 0, 100, 100), tmp_path) == ("t", None)
    assert not (tmp_path / "tile.png").exists()


def test_all_nodata_raster_is_refused(make_geotiff: GeoTiffFactory) -> None:
    raster = make_geotiff(data=np.zeros((3, 50, 50), dtype="uint16"), nodata=0)
    info = inspect_raster(raster)
    with rasterio.open(raster) as src, pytest.raises(AllNodataError, match="every pixel is nodata"):
        compute_stretch(src, info, (1, 2, 3), "auto", (2.0, 98.0))


def test_one_stretch_per_raster_keeps_neighbouring_tiles_alike(
    make_geotiff: GeoTiffFactory, tmp_path: Path
) -> None:
    ramp = np.tile(np.linspace(0, 1, 200), (100, 1))
    data = np.where(ramp < 0.5, 100 + ramp * 200, 1000 + ramp * 1000).astype("uint16")[None]
    raster = make_geotiff(data=data, photometric="MINISBLACK")
    left = render_one(raster, PixelWindow(0, 0, 100, 100), tmp_path / "l", bands=(1,))
    right = render_one(raster, PixelWindow(100, 0, 100, 100), tmp_path / "r", bands=(1,))
    assert left[1]
    assert right[1]
    dark, bright = png(tmp_path / "l" / "tile.png"), png(tmp_path / "r" / "tile.png")
    # grey displays repeat the band in R, G and B
    assert np.array_equal(dark[..., 0], dark[..., 2])
    assert int(dark[..., 0].max()) < int(bright[..., 0].min())


@pytest.mark.parametrize("dtype", ["uint16", "int16", "float32"])
def test_percentile_stretch_ignores_nodata(make_geotiff: GeoTiffFactory, dtype: str) -> None:
    data = synthetic(3, 300, 300, dtype)
    nodata = -9999 if dtype != "uint16" else 0
    data[:, :150, :] = nodata
    raster = make_geotiff(data=data, nodata=nodata, photometric="MINISBLACK")
    info = inspect_raster(raster)
    with rasterio.open(raster) as src:
        stretch = compute_stretch(src, info, (1, 2, 3), "auto", (2.0, 98.0))
    valid = data[0, 150:, :].astype(float)
    low, high = np.percentile(valid, [2, 98])
    assert stretch[0][0] == pytest.approx(low, rel=0.1)
    assert stretch[0][1] == pytest.approx(high, rel=0.1)


def test_float_nan_pixels_are_transparent(make_geotiff: GeoTiffFactory, tmp_path: Path) -> None:
    data = synthetic(1, 64, 64, "float32")
    data[0, 5:9, 5:9] = np.nan
    raster = make_geotiff(data=data, photometric="MINISBLACK")
    render_one(raster, PixelWindow(0, 0, 64, 64), tmp_path, bands=(1,))
    alpha = png(tmp_path / "tile.png")[:, :, 3]
    assert (alpha[5:9, 5:9] == 0).all()
    assert alpha.sum() == 255 * (64 * 64 - 16)


def test_to_uint8_maps_low_high_to_0_255() -> None:
    pixels = np.array([[[100], [200], [300], [50], [400]]], dtype="uint16")  # (1, 5, 1)
    out = to_uint8(pixels, ((100.0, 300.0),))
    assert out[0, :, 0].tolist() == [0, 128, 255, 0, 255]


def test_stretch_none_refuses_16_bit(make_geotiff: GeoTiffFactory) -> None:
    raster = make_geotiff(dtype="uint16", photometric="MINISBLACK")
    with rasterio.open(raster) as src, pytest.raises(UnsupportedRasterError, match="only suits 8-bit"):
        compute_stretch(src, inspect_raster(raster), (1, 2, 3), "none", (2.0, 98.0))


def test_parallel_rendering_writes_the_same_files(make_geotiff: GeoTiffFactory, tmp_path: Path) -> None:
    raster = make_geotiff(width=900, height=700, dtype="uint16", photometric="MINISBLACK")
    info = inspect_raster(raster)
    with rasterio.open(raster) as src:
        stretch = compute_stretch(src, info, (1, 2, 3), "auto", (2.0, 98.0))
        image, valid = read_display(src, Window(0, 0, 64, 64), (1, 2, 3), stretch)
    assert image.dtype == np.uint8
    assert valid.all()
    windows = [PixelWindow(c, r, 64, 64) for r in range(0, 640, 64) for c in range(0, 832, 64)]
    outputs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        job = RenderJob(str(raster), (1, 2, 3), stretch, str(out))
        tasks = [TileTask(f"t{i}", w, f"t{i}.png") for i, w in enumerate(windows)]
        results = [r for chunk in render_tiles(job, tasks, workers) for r in chunk]
        assert sorted(results) == sorted((t.tile_id, t.relative_path) for t in tasks)
        outputs[workers] = {p.name: p.read_bytes() for p in out.iterdir()}
    assert outputs[1] == outputs[2]
    assert not any(name.endswith(".tmp") for name in outputs[1])


def test_png_bytes_decode_with_pillow(make_geotiff: GeoTiffFactory, tmp_path: Path) -> None:
    raster = make_geotiff(width=64, height=64)
    render_one(raster, PixelWindow(0, 0, 64, 64), tmp_path)
    with Image.open(io.BytesIO((tmp_path / "tile.png").read_bytes())) as image:
        assert image.format == "PNG"
        assert image.size == (64, 64)
        assert image.mode == "RGB"


def test_large_raster_stretch_comes_from_a_bounded_sample(
    make_geotiff: GeoTiffFactory, tmp_path: Path
) -> None:
    data = synthetic(1, 1600, 1600, "uint16")
    raster = make_geotiff(data=data, photometric="MINISBLACK", tiled=True)
    info = inspect_raster(raster)
    with rasterio.open(raster) as src:
        ((low, high),) = compute_stretch(src, info, (1,), "percentile", (2.0, 98.0))
    exact_low, exact_high = np.percentile(data[0], [2, 98])
    spread = exact_high - exact_low
    assert abs(low - exact_low) < 0.05 * spread
    assert abs(high - exact_high) < 0.05 * spread


def test_a_sparse_large_raster_is_not_taken_for_an_empty_one(make_geotiff: GeoTiffFactory) -> None:
    data = np.zeros((1, 4000, 4000), dtype="uint16")
    data[0, 301, 301] = 500  # between the sample windows, and most likely between decimated samples
    data[0, 302, 301] = 501
    raster = make_geotiff(data=data, nodata=0, photometric="MINISBLACK", tiled=True)
    with rasterio.open(raster) as src:
        ((low, high),) = compute_stretch(src, inspect_raster(raster), (1,), "auto", (2.0, 98.0))
    assert low == pytest.approx(500.02)
    assert high == pytest.approx(500.98)


def test_a_tile_that_cannot_be_written_is_a_clear_error(make_geotiff: GeoTiffFactory, tmp_path: Path) -> None:
    raster = make_geotiff(width=64, height=64)
    blocker = tmp_path / "out"
    blocker.write_text("a file where the tiles folder should be")
    job = RenderJob(str(raster), (1, 2, 3), ((0.0, 255.0),) * 3, str(blocker))
    with pytest.raises(TileWriteError, match="cannot write display tile"):
        render_chunk(job, [TileTask("t", PixelWindow(0, 0, 64, 64), "tiles/t.png")])
    assert list(tmp_path.glob("**/*.tmp")) == []


@pytest.mark.parametrize("dtype", ["uint8", "uint16"])
def test_lookup_table_stretch_equals_the_arithmetic_one(dtype: str) -> None:
    rng = np.random.default_rng(3)
    top = 255 if dtype == "uint8" else 65535
    pixels = rng.integers(0, top + 1, size=(40, 30, 3)).astype(dtype)
    stretch = ((10.0, 200.0), (0.0, 255.0), (3.5, 250.25)) if dtype == "uint8" else ((100.0, 40000.0),) * 3
    expected = np.stack([_stretch_band(pixels[..., i], *stretch[i]) for i in range(3)], axis=2)
    assert np.array_equal(to_uint8(pixels, stretch), expected)


def test_a_pixel_is_nodata_only_when_every_display_band_is(
    make_geotiff: GeoTiffFactory, tmp_path: Path
) -> None:
    data = synthetic(3, 32, 32, "uint8")
    data[0, :, :8] = 0  # red is 0 there, green and blue are not: a dark but valid pixel
    data[:, :, 24:] = 0  # every band is 0: nodata
    raster = make_geotiff(data=data, nodata=0)
    render_one(raster, PixelWindow(0, 0, 32, 32), tmp_path)
    alpha = png(tmp_path / "tile.png")[:, :, 3]
    assert (alpha[:, :24] == 255).all()
    assert (alpha[:, 24:] == 0).all()
