"""Bad rasters are refused with a message that says what is wrong and how to fix it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
from affine import Affine
from rasterio.control import GroundControlPoint

from importers.errors import (
    NotARasterError,
    NotGeoreferencedError,
    RasterNotFoundError,
    UnsupportedRasterError,
)
from importers.raster import content_hash, inspect_raster
from tests.conftest import GeoTiffFactory


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(RasterNotFoundError, match="no such file"):
        inspect_raster(tmp_path / "nope.tif")


def test_text_file_is_not_a_raster(tmp_path: Path) -> None:
    path = tmp_path / "notes.tif"
    path.write_text("this is not a GeoTIFF")
    with pytest.raises(NotARasterError, match="not a raster GDAL can read"):
        inspect_raster(path)


def test_truncated_geotiff_is_refused(make_geotiff: GeoTiffFactory, tmp_path: Path) -> None:
    good = make_geotiff(width=64, height=64)
    broken = tmp_path / "broken.tif"
    broken.write_bytes(good.read_bytes()[:200])
    with pytest.raises(NotARasterError):
        inspect_raster(broken)


def test_raster_without_crs_says_how_to_assign_one(make_geotiff: GeoTiffFactory) -> None:
    with pytest.raises(NotGeoreferencedError, match=r"gdal_edit\.py -a_srs"):
        inspect_raster(make_geotiff(crs=None))


def test_raster_without_transform_is_refused(make_geotiff: GeoTiffFactory) -> None:
    with pytest.raises(NotGeoreferencedError, match="no geotransform"):
        inspect_raster(make_geotiff(transform=None))


def test_gcp_only_raster_says_to_warp_it(tmp_path: Path) -> None:
    path = tmp_path / "gcps.tif"
    gcps = [
        GroundControlPoint(0, 0, 650000, 6860000),
        GroundControlPoint(0, 100, 650020, 6860000),
        GroundControlPoint(100, 0, 650000, 6859980),
    ]
    with rasterio.open(path, "w", driver="GTiff", width=100, height=100, count=1, dtype="uint8") as dst:
        dst.write(np.ones((1, 100, 100), dtype="uint8"))
        dst.gcps = (gcps, rasterio.crs.CRS.from_epsg(2154))
    with pytest.raises(NotGeoreferencedError, match=r"ground control points.*gdalwarp"):
        inspect_raster(path)


def test_complex_data_is_refused(make_geotiff: GeoTiffFactory) -> None:
    data = np.ones((1, 8, 8), dtype="complex64")
    with pytest.raises(UnsupportedRasterError, match="complex64"):
        inspect_raster(make_geotiff(data=data, photometric="MINISBLACK"))


def test_rotated_transform_is_supported_and_kept(make_geotiff: GeoTiffFactory) -> None:
    rotated = Affine.translation(650000, 6860000) @ Affine.rotation(20) @ Affine.scale(0.5, -0.5)
    info = inspect_raster(make_geotiff(transform=rotated))
    assert info.grid.transform.almost_equals(rotated)
    assert not info.grid.is_rectilinear


def test_content_hash_changes_with_content(make_geotiff: GeoTiffFactory) -> None:
    a = make_geotiff("a.tif")
    b = make_geotiff("b.tif")
    assert content_hash(a) == content_hash(a)
    assert content_hash(a) != content_hash(b)
    assert len(content_hash(a)) == 64


def test_a_folder_is_not_a_raster(tmp_path: Path) -> None:
    with pytest.raises(RasterNotFoundError, match="is a folder"):
        inspect_raster(tmp_path)
