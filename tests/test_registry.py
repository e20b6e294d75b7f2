"""The tile registry on a real SQLite file."""

from __future__ import annotations

import dataclasses
import math
import sqlite3
from pathlib import Path

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from georef.errors import RegistryError
from georef.grid import Grid
from georef.registry import RasterSpec, RasterStatus, TileRegistry, TileStatus, raster_uid, tile_id_for
from georef.tiling import plan_tiles

GRID = Grid(1000, 700, Affine(0.2, 0, 650000, 0, -0.2, 6860000), CRS.from_epsg(2154))


def new_raster(path: str = "/data/ortho.tif", digest: str = "ab" * 32, grid: Grid = GRID) -> RasterSpec:
    return RasterSpec(
        path=path,
        name=Path(path).name,
        content_hash=digest,
        grid=grid,
        band_count=4,
        dtype="uint16",
        nodata=0.0,
        display_bands=(1, 2, 3),
        stretch=((12.0, 3000.0), (15.0, 2800.0), (9.0, 2500.0)),
        tile_size=512,
        overlap=64,
        project_id=7,
    )


@pytest.fixture
def registry(tmp_path: Path) -> TileRegistry:
    reg = TileRegistry(tmp_path / "registry.sqlite")
    reg.record_project(7, "orthos")
    return reg


def test_raster_and_tiles_survive_reopening(registry: TileRegistry, tmp_path: Path) -> None:
    plans = plan_tiles(GRID.width, GRID.height, 512, 64)
    record = registry.add_raster(new_raster(), plans)
    registry.close()
    with TileRegistry(tmp_path / "registry.sqlite") as reopened:
        raster = reopened.raster(record.id)
        assert raster.grid == GRID
        assert raster.stretch == ((12.0, 3000.0), (15.0, 2800.0), (9.0, 2500.0))
        assert raster.status is RasterStatus.IMPORTING
        tiles = reopened.tiles(record.id)
        assert len(tiles) == len(plans) == 6
        for tile, plan in zip(tiles, plans, strict=True):
            assert tile.window == plan.window
            assert tile.grid == GRID.window_grid(plan.window)
            assert tile.status is TileStatus.PLANNED
            assert reopened.grid(tile.id) == tile.grid
        assert reopened.project_id("orthos") == 7


def test_tile_ids_are_deterministic(registry: TileRegistry) -> None:
    record = registry.add_raster(new_raster(), plan_tiles(GRID.width, GRID.height, 512, 64))
    tile = registry.tiles(record.id)[1]
    assert tile.id == tile_id_for(record.uid, tile.window) == f"{record.uid}_r0_c448"
    assert record.uid == raster_uid("/data/ortho.tif", "ab" * 32)
    assert raster_uid("/data/copy.tif", "ab" * 32) != record.uid


def test_tile_transform_places_its_pixels(registry: TileRegistry) -> None:
    record = registry.add_raster(new_raster(), plan_tiles(GRID.width, GRID.height, 512, 64))
    tile = registry.tiles(record.id)[4]  # row 1, col 1: window (448, 188)
    assert (tile.window.col_off, tile.window.row_off) == (448, 188)
    np.testing.assert_allclose(
        tile.grid.pixel_to_world([(0, 0)]), [[650000 + 448 * 0.2, 6860000 - 188 * 0.2]]
    )


def test_life_cycle_render_import_reset(registry: TileRegistry) -> None:
    record = registry.add_raster(new_raster(), plan_tiles(GRID.width, GRID.height, 512, 64))
    ids = list(registry.iter_tile_ids(record.id))
    registry.mark_rendered([(ids[0], "tiles/a.png"), (ids[1], None)])
    counts = registry.status_counts(record.id)
    assert counts[TileStatus.RENDERED] == 1
    assert counts[TileStatus.SKIPPED] == 1
    registry.set_task_ids({ids[0]: 41})
    assert registry.tile_by_task(41).id == ids[0]
    with pytest.raises(RegistryError, match="no rendered tile"):
        registry.set_task_ids({ids[1]: 42})
    with pytest.raises(RegistryError, match="Label Studio tasks"):
        registry.delete_raster(record.id)
    registry.reset_tasks([ids[0]])
    assert registry.tile(ids[0]).status is TileStatus.RENDERED
    assert registry.tile(ids[0]).task_id is None
    registry.delete_raster(record.id)
    assert registry.rasters() == []


def test_duplicate_path_and_unknown_rows_are_refused(registry: TileRegistry) -> None:
    registry.add_raster(new_raster(), [])
    with pytest.raises(RegistryError, match="already in the registry"):
        registry.add_raster(new_raster(), [])
    with pytest.raises(RegistryError, match="no tile"):
        registry.tile("nope")
    with pytest.raises(RegistryError, match="no raster"):
        registry.raster(999)
    assert registry.raster_by_hash("ab" * 32, 7) is not None
    assert registry.raster_by_path("/elsewhere.tif") is None


def test_a_task_id_moves_to_the_tile_label_studio_says_it_shows(registry: TileRegistry) -> None:
    record = registry.add_raster(new_raster(), plan_tiles(GRID.width, GRID.height, 512, 64))
    ids = list(registry.iter_tile_ids(record.id))
    registry.mark_rendered([(ids[0], "a.png"), (ids[1], "b.png")])
    registry.set_task_ids({ids[0]: 5})
    registry.set_task_ids({ids[1]: 5})  # e.g. Label Studio's database was reset and reused id 5
    assert registry.tile(ids[1]).task_id == 5
    assert registry.tile(ids[0]).task_id is None
    assert registry.tile(ids[0]).status is TileStatus.RENDERED
    with pytest.raises(sqlite3.IntegrityError):  # the schema itself refuses two tiles per task
        registry.conn.execute("UPDATE tiles SET task_id = 5 WHERE id = ?", [ids[0]])


def test_nan_nodata_and_projects_by_title(registry: TileRegistry) -> None:
    spec = dataclasses.replace(new_raster(), nodata=float("nan"))
    record = registry.add_raster(spec, [])
    assert record.nodata is not None
    assert math.isnan(record.nodata)
    registry.record_project(8, "orthos")  # the project was deleted and created again in Label Studio
    assert registry.project_id("orthos") == 8
    assert registry.raster_by_hash("ab" * 32, 7) is not None
    assert registry.raster_by_hash("ab" * 32, 8) is None


def test_wal_mode_and_schema_version(registry: TileRegistry, tmp_path: Path) -> None:
    mode = registry.conn.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    registry.conn.execute("UPDATE meta SET value = '99' WHERE key = 'schema_version'")
    registry.conn.commit()
    registry.close()
    with pytest.raises(RegistryError, match="schema version 99"):
        TileRegistry(tmp_path / "registry.sqlite")
