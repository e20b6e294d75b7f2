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
from georef.inputs import ProjectInput
from georef.registry import RasterSpec, RasterStatus, TileRegistry, TileStatus, raster_uid, tile_id_for
from georef.tiling import TilingPlan, plan_tiles

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
    tile = registry.tiles(record.id)[4]  # row 1, col 1: window (448, 448), cut short at the bottom edge
    assert (tile.window.col_off, tile.window.row_off) == (448, 448)
    assert (tile.window.width, tile.window.height) == (512, GRID.height - 448)
    np.testing.assert_allclose(
        tile.grid.pixel_to_world([(0, 0)]), [[650000 + 448 * 0.2, 6860000 - 448 * 0.2]]
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


def test_project_input_and_raster_band_mapping_round_trip(registry: TileRegistry) -> None:
    assert registry.project_input("orthos") is None
    first = ProjectInput("orthos", (1, 2, 3), "first import: ortho.tif", (0.2, 0.2))
    assert registry.record_project_input(first) == first
    later = ProjectInput("orthos", (4,), "another import", None)
    assert registry.record_project_input(later) == first  # fixed once: the first wins
    spec = dataclasses.replace(new_raster(), input_bands=(3, 2, 1))
    record = registry.add_raster(spec, plan_tiles(GRID.width, GRID.height, 512, 64))
    assert record.input_bands == (3, 2, 1)
    assert record.tiling is TilingPlan.EXACT
    registry.set_input_bands(record.id, (1, 2, 3))
    assert registry.raster(record.id).input_bands == (1, 2, 3)


def test_a_registry_from_before_inputs_and_plans_opens_and_reads_the_shifted_plan(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite"
    with TileRegistry(path) as registry:
        registry.record_project(7, "orthos")
        registry.add_raster(new_raster(), plan_tiles(GRID.width, GRID.height, 512, 64, TilingPlan.SHIFTED))
    with sqlite3.connect(path) as conn:  # the registry as geolabel wrote it before this change
        conn.execute("DROP TABLE project_inputs")
        conn.execute("ALTER TABLE rasters DROP COLUMN input_bands")
        conn.execute("ALTER TABLE rasters DROP COLUMN tiling")
    with TileRegistry(path) as registry:
        (record,) = registry.rasters()
        assert record.input_bands is None
        assert record.tiling is TilingPlan.SHIFTED
        assert registry.project_input("orthos") is None
        assert [t.window.col_off for t in registry.tiles(record.id)][:3] == [0, 448, 488]


def test_forget_raster_deletes_its_rows_only(registry: TileRegistry) -> None:
    kept = registry.add_raster(new_raster("/data/a.tif"), plan_tiles(GRID.width, GRID.height, 512, 64))
    gone = registry.add_raster(new_raster("/data/b.tif"), plan_tiles(GRID.width, GRID.height, 512, 64))
    ids = list(registry.iter_tile_ids(gone.id))
    registry.mark_rendered([(i, f"tiles/{i}.png") for i in ids])
    registry.set_task_ids({ids[0]: 5})
    assert registry.forget_raster(gone.id) == len(ids)
    assert [r.id for r in registry.rasters()] == [kept.id]
    assert {t.raster_id for t in registry.tiles()} == {kept.id}


def test_rasters_and_tiles_of_one_project_only(registry: TileRegistry) -> None:
    registry.record_project(8, "other")
    plans = plan_tiles(GRID.width, GRID.height, 512, 64)
    mine = registry.add_raster(new_raster(), plans)
    other = dataclasses.replace(new_raster("/data/b.tif", "cd" * 32), project_id=8)
    theirs = registry.add_raster(other, plans)
    assert [r.id for r in registry.rasters(7)] == [mine.id]
    assert [r.id for r in registry.rasters(8)] == [theirs.id]
    assert {t.raster_id for t in registry.tiles(project_id=8)} == {theirs.id}
    assert len(registry.tiles(project_id=7)) == len(plans)
    assert registry.tiles(project_id=9) == []
    assert len(registry.tiles()) == 2 * len(plans)
