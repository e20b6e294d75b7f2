"""Agreement between annotators: per-class IoU against hand counts, the tile map, dashboard, status, review.

The masks are 8 x 8 so every intersection and union below is counted by hand in the comments.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from pathlib import Path

import httpx
import numpy as np
import numpy.typing as npt
import pyogrio
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from rasterio.crs import CRS

from exporters import gpkg, tilemap
from exporters.project import ExportOptions, export_project
from exporters.tilemap import RoundView
from geolabel.classes import UNSURE_LABEL
from geolabel.cli import cli
from geolabel.lsclient import REVIEW_VIEW_TITLE, LabelStudioClient
from geolabel.lsmodels import LabelledTask
from geolabel.status import rounds_table
from georef.grid import Grid
from georef.labelstudio import brush_result
from georef.registry import RasterRecord, RasterSpec, TileRecord, TileRegistry
from georef.tiling import plan_tiles
from tests.conftest import CLASSES, ImportedScene, LabelStudioServer, config_toml, import_scene, synthetic
from tests.test_queue_serving import sign_up
from trainer.agreement import (
    AgreementError,
    ProjectAgreement,
    RasterValidity,
    ReviewSent,
    StoredAgreement,
    class_ious,
    iou_fields,
    load_agreement,
    lowest_tiles,
    measure,
    review,
    review_rows,
    save_agreement,
    send_to_review,
    summarise,
    tile_agreement,
    write_review_csv,
)
from trainer.dashboard import collect, page_html, page_sections

SIDE = 8


def mask(rows: slice, cols: slice) -> npt.NDArray[np.bool_]:
    """An 8 x 8 mask, True on ``rows`` x ``cols``."""
    out = np.zeros((SIDE, SIDE), dtype=bool)
    out[rows, cols] = True
    return out


# A: building rows 0-3 x cols 0-3 (16 px), water rows 6-7 x every col (16 px), background 32 px.
A = [brush_result(mask(slice(0, 4), slice(0, 4)), "building", "label_brush", "image"),
     brush_result(mask(slice(6, 8), slice(0, 8)), "water", "label_brush", "image")]  # fmt: skip
# B: building rows 2-5 x cols 2-5 (16 px), no water, background 48 px.
B = [brush_result(mask(slice(2, 6), slice(2, 6)), "building", "label_brush", "image")]


def task(task_id: int, *results: list[dict[str, object]]) -> LabelledTask:
    """A task with one submitted annotation per ``results``, by annotators ann0@, ann1@, ..."""
    annotations = [
        {
            "id": 100 * task_id + n,
            "completed_by": {"id": n + 1, "email": f"ann{n}@geolabel.test"},
            "result": r,
        }
        for n, r in enumerate(results)
    ]
    return LabelledTask.model_validate({"id": task_id, "annotations": annotations})


def one_tile(tmp_path: Path, nodata_cols: slice | None = None) -> tuple[RasterRecord, TileRecord]:
    """A registry holding one 8 x 8 tile of a real GeoTIFF (nodata 0 on ``nodata_cols``)."""
    path = tmp_path / "scene.tif"
    grid = Grid(SIDE, SIDE, Affine(0.2, 0, 650000, 0, -0.2, 6860000), CRS.from_epsg(2154))
    image = np.full((3, SIDE, SIDE), 120, dtype=np.uint8)
    if nodata_cols is not None:
        image[:, :, nodata_cols] = 0
    with rasterio.open(path, "w", driver="GTiff", width=SIDE, height=SIDE, count=3, dtype="uint8", nodata=0,
                       crs=grid.crs, transform=grid.transform) as dst:  # fmt: skip
        dst.write(image)
    with TileRegistry(tmp_path / "registry.sqlite") as registry:
        registry.record_project(1, "agreement")
        spec = RasterSpec(path=str(path), name=path.name, content_hash="cd" * 32, grid=grid, band_count=3,
                          dtype="uint8", nodata=0, display_bands=(1, 2, 3), stretch=(), tile_size=SIDE,
                          overlap=0, project_id=1)  # fmt: skip
        record = registry.add_raster(spec, plan_tiles(SIDE, SIDE, SIDE, 0))
        (tile,) = registry.tiles(record.id)
    return record, tile


@pytest.fixture
def tile(tmp_path: Path) -> TileRecord:
    return one_tile(tmp_path)[1]


def test_two_annotators_against_a_hand_count(tile: TileRecord) -> None:
    result, problems = tile_agreement(task(1, A, B), tile, CLASSES)
    assert problems == []
    # building: A ∩ B = rows 2-3 x cols 2-3 = 4 px; A ∪ B = 16 + 16 - 4 = 28 px
    # water: only A drew it: 0 / 16
    # background: A's 32 px (rows 4-5 all cols, rows 0-3 cols 4-7) and B's 48 px share rows 4-5 x cols
    #   0-1 and 6-7 (8 px) and rows 0-3 x cols 4-7 less rows 2-3 x cols 4-5 (12 px): 20 / (32 + 48 - 20)
    assert result.class_iou == {"background": 20 / 60, "building": 4 / 28, "water": 0 / 16}
    assert result.agreement == pytest.approx((4 / 28 + 0) / 2)  # classes only, background left out
    assert result.annotators == ("ann0@geolabel.test", "ann1@geolabel.test")
    assert (result.authors, result.pixels, result.compared) == (2, 64, True)


def test_unsure_pixels_are_left_out_of_the_comparison(tile: TileRecord) -> None:
    unsure = brush_result(mask(slice(0, 2), slice(0, 8)), UNSURE_LABEL, "label_brush", "image")
    result, _ = tile_agreement(task(1, [*A, unsure], B), tile, CLASSES)  # drawn last: it wins rows 0-1
    # rows 0-1 (16 px) left out: A's building is rows 2-3 x cols 0-3 (8 px), B's 16 px, ∩ 4: 4 / 20
    assert result.class_iou["building"] == 4 / 20
    assert result.class_iou["water"] == 0 / 16
    assert result.pixels == 64 - 16


def test_nodata_pixels_are_left_out_of_the_comparison(tmp_path: Path) -> None:
    raster, tile = one_tile(tmp_path, nodata_cols=slice(6, 8))
    validity = RasterValidity({raster.id: raster})
    valid = validity(tile)
    assert valid is not None
    assert int(valid.sum()) == 48
    found = measure([task(1, A, B)], {1: tile}, CLASSES, valid_of=validity)
    (result,) = found.tiles
    # cols 6-7 hold no data: water A rows 6-7 x cols 0-5 = 12 px, B none: 0 / 12; buildings untouched.
    # background: A 20 px (rows 4-5 x cols 0-5, rows 0-3 x cols 4-5), B 48 - 16 = 32 px; ∩ = rows 4-5 x
    #   cols 0-1 (4) + rows 0-1 x cols 4-5 (4) = 8; ∪ = 20 + 32 - 8 = 44
    assert result.class_iou == {"background": 8 / 44, "building": 4 / 28, "water": 0 / 12}
    assert result.pixels == 48
    assert found.problems == []
    assert validity.problems == []


def test_three_annotators_mean_over_pairs(tile: TileRecord) -> None:
    result, _ = tile_agreement(task(1, A, B, A), tile, CLASSES)  # the third draws exactly as the first
    # pairs (A, B), (A, A'), (B, A'): building 1/7, 1, 1/7; water 0, 1, 0; background 1/3, 1, 1/3
    assert result.class_iou["building"] == pytest.approx((1 / 7 + 1 + 1 / 7) / 3)
    assert result.class_iou["water"] == pytest.approx(1 / 3)
    assert result.class_iou["background"] == pytest.approx(5 / 9)
    assert result.agreement == pytest.approx((3 / 7 + 1 / 3) / 2)
    assert (len(result.annotators), result.authors, result.pixels) == (3, 3, 3 * 64)


def test_a_class_nobody_drew_is_undefined_not_one_nor_zero(tile: TileRecord) -> None:
    only_building = [brush_result(mask(slice(0, 2), slice(0, 2)), "building", "label_brush", "image")]
    result, _ = tile_agreement(task(1, only_building, [], []), tile, CLASSES)
    # building: pairs with the drawer 0 / 4 each, the pair of empty annotations undefined (left out)
    assert result.class_iou["building"] == 0.0
    assert math.isnan(result.class_iou["water"])  # nobody drew water
    assert result.agreement == 0.0
    empty, _ = tile_agreement(task(2, [], []), tile, CLASSES)  # both say "nothing here" (exhaustive)
    assert math.isnan(empty.class_iou["building"])
    assert math.isnan(empty.class_iou["water"])
    assert empty.class_iou["background"] == 1.0
    assert empty.agreement == 1.0


def test_one_annotator_has_no_agreement(tile: TileRecord) -> None:
    found = measure([task(1, A), task(2, A, B)], {1: tile, 2: tile}, CLASSES)
    assert [t.task_id for t in found.tiles] == [2]  # one author: nothing to compare, not listed
    alone, _ = tile_agreement(task(1, A), tile, CLASSES)
    assert math.isnan(alone.agreement)
    assert not alone.compared
    assert alone.annotators == ("ann0@geolabel.test",)
    # sparse labelling: an empty annotation labels nothing, so one usable annotator is left of two
    sparse, problems = tile_agreement(task(3, A, []), tile, CLASSES, "sparse")
    assert not sparse.compared
    assert sparse.authors == 2
    assert len(problems) == 1
    assert math.isnan(summarise([sparse]).mean_agreement)


def test_class_ious_refuses_what_cannot_be_compared() -> None:
    with pytest.raises(ValueError, match="two class maps or more"):
        class_ious([np.zeros((2, 2), dtype=np.uint8)], 3)
    with pytest.raises(ValueError, match="cannot be compared"):
        class_ious([np.zeros((2, 2), dtype=np.uint8), np.zeros((2, 3), dtype=np.uint8)], 3)


def test_summary_lowest_and_review_rows(tile: TileRecord, tmp_path: Path) -> None:
    tiles = [tile_agreement(task(i, *r), tile, CLASSES)[0] for i, r in ((1, (A, B)), (2, (A, A)), (3, (A,)))]
    summary = summarise(tiles)
    assert summary.compared == 2
    assert summary.mean_agreement == pytest.approx((1 / 14 + 1.0) / 2)
    assert summary.class_iou["building"] == pytest.approx((1 / 7 + 1) / 2)
    assert [t.task_id for t in summary.lowest] == [1, 2]
    assert [t.task_id for t in lowest_tiles(tiles, count=1)] == [1]
    assert [t.task_id for t in lowest_tiles(tiles, below=0.5)] == [1]
    assert [t.task_id for t in lowest_tiles(tiles, count=5, below=1.01)] == [1, 2]
    with pytest.raises(AgreementError, match="number of tiles"):
        lowest_tiles(tiles)
    names = ["background", "building", "water"]
    (row,) = review_rows(lowest_tiles(tiles, count=1), {}, names)
    assert row == {"task_id": 1, "tile_id": tile.id, "raster": "", "agreement": "0.0714",
                   "iou_background": "0.3333", "iou_building": "0.1429", "iou_water": "0.0000",
                   "annotators": "ann0@geolabel.test;ann1@geolabel.test"}  # fmt: skip
    path = tmp_path / "review.csv"
    write_review_csv(path, [row], names)
    lines = path.read_text(encoding="utf-8").splitlines()
    assert lines[0] == "task_id,tile_id,raster,agreement,iou_background,iou_building,iou_water,annotators"
    assert lines[1].startswith(f"1,{tile.id},,0.0714,0.3333,0.1429,0.0000,ann0@")


def test_stored_agreement_round_trips(tile: TileRecord, tmp_path: Path) -> None:
    tiles = [tile_agreement(task(1, A, B), tile, CLASSES)[0], tile_agreement(task(2, A), tile, CLASSES)[0]]
    path = tmp_path / "registry.sqlite"
    assert load_agreement(path, 1) == StoredAgreement("", [])  # no file yet: nothing stored
    save_agreement(path, 1, tiles, "2026-01-02T03:04:05+00:00")
    save_agreement(path, 2, tiles[:1], "2026-01-02T03:04:06+00:00")  # another project: kept apart
    stored = load_agreement(path, 1)
    assert stored.measured_at == "2026-01-02T03:04:05+00:00"
    assert [t.task_id for t in stored.tiles] == [1, 2]
    assert stored.tiles[0] == tiles[0]
    assert math.isnan(stored.tiles[1].agreement)
    assert math.isnan(stored.tiles[1].class_iou["building"])
    save_agreement(path, 1, [], "2026-01-03T00:00:00+00:00")  # replaced, not added to
    assert load_agreement(path, 1).tiles == []
    assert len(load_agreement(path, 2).tiles) == 1


def test_iou_fields_are_valid_and_distinct() -> None:
    fields = iou_fields(["background", "Red roof", "red-roof", "été", "x"])
    assert fields == {"background": "iou_background", "Red roof": "iou_red_roof",
                      "red-roof": "iou_red_roof_2", "été": "iou_ete", "x": "iou_x"}  # fmt: skip


# --- with the real Label Studio: measure a project, tiles.gpkg, dashboard, status, review ----------------

TILE = 256


def square(top: int, left: int, side: int = 128) -> npt.NDArray[np.bool_]:
    """A 256 x 256 mask, True on a ``side`` x ``side`` square from ``(top, left)``."""
    out = np.zeros((TILE, TILE), dtype=bool)
    out[top : top + side, left : left + side] = True
    return out


def drawn(square_mask: npt.NDArray[np.bool_], label: str = "building") -> list[dict[str, object]]:
    return [brush_result(square_mask, label, "label_brush", "image")]


@dataclass(frozen=True)
class Reviewed:
    """A project of 4 tiles: 3 labelled by two people (agreeing fully, partly, not at all), 1 unlabelled."""

    scene: ImportedScene
    client: LabelStudioClient
    tasks: list[int]  # by tile column: agreement 1, 1/7, 0, unlabelled
    measured: ProjectAgreement
    sent: ReviewSent
    second: str  # the second annotator's token
    rows: list[dict[str, object]]  # the review list


@pytest.fixture(scope="module")
def reviewed(label_studio: LabelStudioServer, tmp_path_factory: pytest.TempPathFactory) -> Reviewed:
    folder = tmp_path_factory.mktemp("agreement")
    image = synthetic(3, TILE, 4 * TILE, "uint8", seed=7)
    scene = import_scene(label_studio, folder / "scene.tif", image, "agreement review", overlap=0)
    tasks = [int(t.task_id or 0) for t in sorted(scene.tiles, key=lambda t: t.window.col_off)]
    admin = label_studio.client()
    _, token = sign_up(label_studio)
    second = LabelStudioClient(label_studio.url, token)
    for task_id, theirs in ((tasks[0], drawn(square(0, 0))), (tasks[1], drawn(square(64, 64))),
                            (tasks[2], drawn(square(0, 0), "water"))):  # fmt: skip
        admin.create_annotation(task_id, drawn(square(0, 0)))
        second.create_annotation(task_id, theirs)
    report = review(scene.config, admin, count=2)  # what `geolabel review --lowest 2` runs
    assert report.sent is not None
    return Reviewed(scene, admin, tasks, report.measured, report.sent, token, report.rows)


def test_a_project_is_measured_from_label_studio_and_stored(reviewed: Reviewed) -> None:
    first, partly, apart, _ = reviewed.tasks
    scores = {t.task_id: t.agreement for t in reviewed.measured.measured.tiles}
    # 128 x 128 squares shifted by 64 px: 64² / (2 x 128² - 64²) = 1/7; building against water: 0 and 0
    assert scores == {first: 1.0, partly: pytest.approx(1 / 7), apart: 0.0}
    assert reviewed.measured.measured.problems == []
    stored = load_agreement(reviewed.scene.config.registry_path, reviewed.measured.project_id)
    assert {t.task_id: t.agreement for t in stored.tiles} == scores
    assert [t.task_id for t in reviewed.sent.tiles] == [apart, partly]  # lowest first
    assert [(r["task_id"], r["agreement"], r["iou_building"], r["iou_water"]) for r in reviewed.rows] == [
        (apart, "0.0000", "0.0000", "0.0000"), (partly, "0.1429", "0.1429", "")]  # fmt: skip
    paths = {r.path for r in reviewed.measured.rasters.values()}
    assert len(paths) == 1
    assert all(r["raster"] in paths and str(r["raster"]).endswith("scene.tif") for r in reviewed.rows)
    dry = review(reviewed.scene.config, reviewed.client, below=0.5, send=False)  # Label Studio unchanged
    assert dry.sent is None
    assert [t.task_id for t in dry.chosen] == [apart, partly]


def test_tiles_gpkg_columns_through_the_tile_map(reviewed: Reviewed, tmp_path: Path) -> None:
    names = reviewed.measured.class_names
    by_task = {t.task_id: t for t in reviewed.measured.measured.tiles}
    tiles = sorted(reviewed.scene.tiles, key=lambda t: t.window.col_off)
    view = RoundView({}, "", {})
    rows = [tilemap.tile_row(t, "scene.tif", None, view, by_task.get(t.task_id or -1), names) for t in tiles]
    schema = tilemap.tiles_schema(names)
    crs = reviewed.measured.rasters[tiles[0].raster_id].grid.crs
    path = tmp_path / "tiles.gpkg"
    gpkg.write_layer(path, "tiles", gpkg.frame(rows, [tilemap.footprint(t) for t in tiles], schema, crs),
                     "Polygon", append=False)  # fmt: skip
    frame = pyogrio.read_dataframe(path, layer="tiles")
    assert [c for c in frame.columns if c != "geometry"] == list(schema)
    assert list(schema)[-4:] == ["agreement", "iou_background", "iou_building", "iou_water"]
    assert frame["agreement"].iloc[:3].tolist() == pytest.approx([1.0, 1 / 7, 0.0])
    assert frame["iou_building"].iloc[:3].tolist() == pytest.approx([1.0, 1 / 7, 0.0])
    assert math.isnan(frame["iou_water"].iloc[0])  # nobody drew water on the first tile
    assert frame["iou_water"].iloc[2] == 0.0
    assert frame[["agreement", "iou_building"]].iloc[3].isna().all()  # unlabelled: no agreement


def test_the_dashboard_and_status_show_the_agreement(reviewed: Reviewed) -> None:
    first, partly, apart, _ = reviewed.tasks
    data = collect(reviewed.scene.config)
    section = page_sections(data)["agreement"]
    assert "3 tiles labelled by two annotators or more; mean agreement 0.381" in section
    lowest = section.split('id="agreement-lowest"')[1]
    link = f"/projects/{reviewed.measured.project_id}/data?task={apart}"
    assert (
        lowest.index(f'{link}">{apart}</a>')
        < lowest.index(f'task={partly}">')
        < lowest.index(f'task={first}">')
    )  # lowest first, each linked to its task
    assert 'id="agreement"' in page_html(data)
    _, lines = rounds_table(reviewed.scene.config)
    (line,) = [x for x in lines if x.startswith("Agreement between annotators")]
    assert line.startswith(f"Agreement between annotators: 3 tiles compared, mean 0.381, lowest 0.000 "
                           f"(task {apart}, tile ")  # fmt: skip


def test_geolabel_review_and_the_export_carry_the_agreement(
    reviewed: Reviewed, label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    first, partly, apart, _ = reviewed.tasks
    config = config_toml(reviewed.scene.config, tmp_path)
    env = {"GEOLABEL_LABEL_STUDIO_TOKEN": label_studio.token}
    args = [
        "--config",
        str(config),
        "review",
        "--below",
        "0.5",
        "--dry-run",
        "--csv",
        str(tmp_path / "r.csv"),
    ]
    result = CliRunner().invoke(cli, args, env=env)
    assert result.exit_code == 0, result.output
    assert "3 tiles labelled by two annotators or more; mean agreement 0.381" in result.output
    assert result.output.index(f"task {apart} ") < result.output.index(f"task {partly} ")
    assert "dry run: Label Studio left unchanged" in result.output
    rows = list(csv.DictReader((tmp_path / "r.csv").open()))
    assert [int(r["task_id"]) for r in rows] == [apart, partly]
    result = CliRunner().invoke(cli, ["--config", str(config), "review", "--below", "2"], env=env)
    assert result.exit_code == 2  # a value outside 0..1 is refused before anything is read
    export_project(reviewed.scene.config, reviewed.client, ExportOptions(tmp_path / "out", what=("tiles",)))
    tiles = pyogrio.read_dataframe(tmp_path / "out" / "tiles.gpkg", layer="tiles")
    by_task = dict(zip(tiles["task_id"], tiles["agreement"], strict=True))
    assert [by_task[first], by_task[partly], by_task[apart]] == pytest.approx([1.0, 1 / 7, 0.0])
    assert "iou_water" in tiles.columns


def test_the_lowest_tiles_are_served_again_and_listed_in_the_tab(
    reviewed: Reviewed, label_studio: LabelStudioServer
) -> None:
    first, partly, apart, unlabelled = reviewed.tasks
    url, project = label_studio.url, reviewed.measured.project_id
    headers = {"Authorization": f"Token {label_studio.token}"}
    listed = httpx.get(f"{url}/api/tasks/", params={"project": project, "view": reviewed.sent.view_id},
                       headers=headers, timeout=60).json()["tasks"]  # fmt: skip
    assert [t["id"] for t in listed] == sorted([partly, apart])  # exactly the tiles sent to review
    views = httpx.get(f"{url}/api/dm/views/", params={"project": project}, headers=headers, timeout=60).json()
    assert [v["id"] for v in views if v["data"]["title"] == REVIEW_VIEW_TITLE] == [reviewed.sent.view_id]
    _, third = sign_up(label_studio)
    served = []
    for _ in range(3):  # a third annotator gets both review tiles before the unlabelled one
        task_id = served_next(url, third, project)
        assert task_id is not None
        served.append(task_id)
        LabelStudioClient(url, third).create_annotation(task_id, drawn(square(0, 0)))
    assert sorted(served[:2]) == sorted([partly, apart])
    assert served[2] == unlabelled
    assert served_next(url, reviewed.second, project) is None  # nothing left that they have not labelled
    counts = {t.task_id: t.annotations for t in reviewed.client.tasks(project)}
    assert (counts[first], counts[partly], counts[apart]) == (2, 3, 3)
    again = send_to_review(reviewed.client, project, [])  # an empty review empties the tab, keeps it
    assert again.view_id == reviewed.sent.view_id
    assert httpx.get(f"{url}/api/tasks/", params={"project": project, "view": again.view_id},
                     headers=headers, timeout=60).json()["tasks"] == []  # fmt: skip


def served_next(url: str, token: str, project_id: int) -> int | None:
    """The task Label Studio's next-task API serves this user (None: nothing left for them)."""
    answer = httpx.get(f"{url}/api/projects/{project_id}/next", headers={"Authorization": f"Token {token}"},
                       timeout=60)  # fmt: skip
    if answer.status_code == 404:
        return None
    answer.raise_for_status()
    return int(answer.json()["id"])
