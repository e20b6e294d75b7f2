"""A round's candidate pool (trainer.pool): bounded, made of what the docs say, spread over the territory;
and the device and scheduler settings refuse what cannot work."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from geolabel.config import parse_config
from geolabel.errors import ConfigError
from tests.conftest import CLASSES
from trainer.device import autocast, resolve_device
from trainer.errors import TrainerError
from trainer.pool import candidate_pool
from trainer.splits import Footprint

SIDE = 102.4  # a 512-px tile at 20 cm, in metres


def territory(columns: int, rows: int, crs: str = "EPSG:2154", x0: float = 650_000.0) -> list:
    """Tiles on a regular grid, ids ``<crs>/<x0>/<row>/<col>``, row 0 at the north."""
    return [
        (
            f"{crs}/{x0:.0f}/{row}/{col}",
            Footprint(crs, x0 + (col + 0.5) * SIDE, 6_860_000.0 - (row + 0.5) * SIDE, SIDE),
        )
        for row in range(rows)
        for col in range(columns)
    ]


def test_the_pool_is_never_larger_than_asked_and_everything_when_it_fits() -> None:
    tiles = territory(100, 100)
    for size in (1, 7, 64, 2000, 9999):
        pool = candidate_pool(tiles, size, seed=3)
        assert len(pool) == size
        assert len(set(pool)) == size
    every = [tile_id for tile_id, _ in tiles]
    assert candidate_pool(tiles, 0) == every
    assert candidate_pool(tiles, 10_000) == every
    assert candidate_pool(tiles, 20_000) == every


def test_previous_uncertain_tiles_and_new_labels_neighbours_come_first() -> None:
    tiles = territory(50, 50)
    uncertain = [f"EPSG:2154/650000/{r}/{r}" for r in range(40)]  # the diagonal, most uncertain first
    label = Footprint("EPSG:2154", 650_000.0 + 30.5 * SIDE, 6_860_000.0 - 10.5 * SIDE, SIDE)  # tile (10, 30)
    pool = candidate_pool(tiles, 40, uncertain, [label], seed=0)
    assert pool[:10] == uncertain[:10]  # a quarter of the pool
    neighbours = {f"EPSG:2154/650000/{r}/{c}" for r in (9, 10, 11) for c in (29, 30, 31)}
    assert set(pool[10:19]) == neighbours  # the 8 around the label and its own tile (still unlabelled here)
    assert not set(pool[19:]) & (set(uncertain[:10]) | neighbours)
    foreign = Footprint("EPSG:32631", label.x, label.y, SIDE)  # same numbers, another CRS: not a neighbour
    assert not set(candidate_pool(tiles, 40, (), [foreign], seed=0)[:10]) & neighbours


def test_the_sample_covers_the_whole_territory_not_only_where_tiles_are_dense() -> None:
    dense = territory(200, 100)  # 20 000 tiles to the west
    sparse = territory(20, 20, x0=650_000.0 + 300 * SIDE)  # 400 tiles far to the east, 2 % of them
    pool = set(candidate_pool(dense + sparse, 64, seed=1))
    east = {tile_id for tile_id, f in sparse}
    assert 2 <= len(pool & east) <= 8  # its share of the area (about 4 of 50 cells), not of the tiles (2 %)
    footprints = dict(dense)
    quarter = 50 * SIDE
    cells = {
        (int((footprints[t].x - 650_000.0) // quarter), int((6_860_000.0 - footprints[t].y) // quarter))
        for t in pool - east
    }
    assert len(cells) == 8  # every 50 x 50-tile quarter of the dense block's 4 x 2 has tiles


def test_the_same_seed_gives_the_same_pool_and_another_seed_another() -> None:
    tiles = territory(60, 60)
    assert candidate_pool(tiles, 100, seed=5) == candidate_pool(tiles, 100, seed=5)
    assert candidate_pool(tiles, 100, seed=5) != candidate_pool(tiles, 100, seed=6)


def test_a_single_row_of_tiles_and_tiles_in_two_crs_are_sampled() -> None:
    row = territory(500, 1)
    pool = candidate_pool(row, 10, seed=0)
    columns = sorted(int(t.rsplit("/", 1)[1]) for t in pool)
    assert np.diff(columns).min() > 10  # spread along the row
    mixed = territory(30, 30) + territory(30, 30, crs="EPSG:32631")
    crs_of_pool = [t.split("/")[0] for t in candidate_pool(mixed, 100, seed=0)]
    assert 40 <= crs_of_pool.count("EPSG:2154") <= 60  # each its share of the places, about half


def test_devices_that_are_not_there_are_refused_clearly() -> None:
    if torch.cuda.is_available():  # a GPU machine: "auto" takes it, and CUDA runs in mixed precision
        assert resolve_device("auto").type == "cuda"
        with autocast(torch.device("cuda")):
            assert torch.is_autocast_enabled("cuda")
        return
    assert resolve_device("auto") == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(TrainerError, match=r"device = 'cuda:0' but this machine has no usable CUDA GPU"):
        resolve_device("cuda:0")
    with autocast(torch.device("cpu")):
        assert not torch.is_autocast_enabled()  # the CPU stays float32


def test_scheduler_settings_are_checked_with_the_fix() -> None:
    base = {"classes": [{"id": c.id, "name": c.name, "color": c.color} for c in CLASSES]}
    config = parse_config(base, base_dir=Path("."))
    assert config.compute.scheduler == "local"
    assert config.with_scheduler("tcp://10.0.0.5:8786").compute.scheduler == "tcp://10.0.0.5:8786"
    assert config.with_scheduler(None) is config
    with pytest.raises(ConfigError, match="--scheduler 'dask://x'"):
        config.with_scheduler("dask://x")
    with pytest.raises(ConfigError, match=r"compute\.device"):
        parse_config({**base, "compute": {"device": "gpu"}}, base_dir=config.base_dir)
    with pytest.raises(ConfigError, match=r"trainer\.pool"):
        parse_config({**base, "trainer": {"pool": -1}}, base_dir=config.base_dir)
