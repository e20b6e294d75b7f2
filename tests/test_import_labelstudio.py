"""End-to-end imports into a real Label Studio server."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import httpx
import numpy as np
import pytest
import rasterio.transform
from affine import Affine
from PIL import Image

from geolabel.classes import LabelClass
from geolabel.errors import LabelStudioAuthError, LabelStudioUnreachableError
from geolabel.lsclient import LabelStudioClient
from georef.labelstudio import ImageSize, brush_result, parse_result, polygon_result, region_to_world
from georef.registry import TileRegistry, TileStatus
from georef.taskgeo import TileGeo
from importers import pipeline
from importers.errors import (
    AllNodataError,
    ImportFailedError,
    RasterChangedError,
    RasterReadError,
    UnsupportedRasterError,
)
from importers.labelconfig import BRUSH_NAME, IMAGE_NAME, POLYGON_NAME
from importers.pipeline import ImportOptions, import_raster
from tests.conftest import CLASSES, GeoTiffFactory, LabelStudioServer, free_port, synthetic

pytestmark = pytest.mark.labelstudio


def project_tasks(client: LabelStudioClient, project_id: int) -> list[dict]:
    return [client.task(s.task_id) for s in client.tasks(project_id)]


def test_each_tile_becomes_one_task_that_knows_where_it_is(
    make_geotiff: GeoTiffFactory,
    options: ImportOptions,
    registry: TileRegistry,
    client: LabelStudioClient,
    label_studio: LabelStudioServer,
) -> None:
    raster = make_geotiff(width=600, height=500)
    report = import_raster(raster, options, registry, client)
    tiles = registry.tiles()
    assert report.tiles == len(tiles) == 9
    assert report.tasks_created == 9
    assert all(t.status is TileStatus.IMPORTED for t in tiles)
    tasks = {t["data"]["tile_id"]: t for t in project_tasks(client, report.project_id)}
    assert set(tasks) == {t.id for t in tiles}
    for tile in tiles:
        task = tasks[tile.id]
        assert task["id"] == tile.task_id
        geo = TileGeo.model_validate(task["data"]["geo"])
        assert geo.to_grid() == tile.grid
        assert geo.raster == str(raster.resolve())
    project = client.project(report.project_id)
    assert project["sampling"] == "Uncertainty sampling"
    for tag in ("BrushLabels", "PolygonLabels", '<Label value="unsure"'):
        assert tag in project["label_config"]
    assert "KeyPointLabels" not in project["label_config"]  # SAM tools come when a backend has SAM on
    assert project["show_instruction"] is True
    assert "background" in project["expert_instruction"]


def test_display_tiles_are_served_by_label_studio(
    make_geotiff: GeoTiffFactory,
    options: ImportOptions,
    registry: TileRegistry,
    client: LabelStudioClient,
    label_studio: LabelStudioServer,
) -> None:
    raster = make_geotiff(width=300, height=280)
    report = import_raster(raster, options, registry, client)
    tile = registry.tiles()[-1]
    image_url = client.task(tile.task_id or 0)["data"]["image"]
    response = httpx.get(
        f"{label_studio.url}{image_url}", headers={"Authorization": f"Token {label_studio.token}"}
    )
    assert response.status_code == 200, report
    path = Path(options.data_dir) / (tile.image_path or "")
    assert response.content == path.read_bytes()
    with Image.open(path) as image:
        assert image.size == (tile.window.width, tile.window.height)


def test_reimport_adds_nothing_and_a_second_raster_joins_the_project(
    make_geotiff: GeoTiffFactory, options: ImportOptions, registry: TileRegistry, client: LabelStudioClient
) -> None:
    first = make_geotiff("first.tif", width=400, height=300)
    report = import_raster(first, options, registry, client)
    again = import_raster(first, options, registry, client)
    assert (again.tasks_created, again.rendered_now, again.tasks_adopted) == (0, 0, 0)
    assert again.notes == []
    second = make_geotiff(
        "second.tif", width=300, height=300, crs="EPSG:4326", transform=Affine(1e-6, 0, 2.35, 0, -1e-6, 48.85)
    )
    other = import_raster(second, options, registry, client)
    assert other.project_id == report.project_id
    assert len(client.tasks(report.project_id)) == report.tiles + other.tiles == len(registry.tiles())
    more_classes = dataclasses.replace(
        options, classes=[*CLASSES, LabelClass(id=3, name="road", color="#636363")]
    )
    changed = import_raster(first, more_classes, registry, client)
    assert any("labelling config now shows geolabel.toml's classes" in n for n in changed.notes)
    assert '<Label value="road"' in client.project(report.project_id)["label_config"]
    assert "road" in client.project(report.project_id)["expert_instruction"]
    copy = first.with_name("copy.tif")
    copy.write_bytes(first.read_bytes())
    twin = import_raster(copy, options, registry, client)
    assert twin.tasks_created == 0
    assert "same content" in twin.notes[0]


@pytest.mark.parametrize(
    ("crs", "transform"),
    [
        ("EPSG:2154", Affine(0.2, 0, 650000, 0, -0.2, 6860000)),
        ("EPSG:4326", Affine(1.3e-6, 0, -1.2, 0, -0.9e-6, 47.2)),
        ("EPSG:32631", Affine.translation(500000, 5000000) @ Affine.rotation(15) @ Affine.scale(0.5, -0.5)),
    ],
    ids=["lambert93", "wgs84", "utm-rotated"],
)
def test_annotation_drawn_in_label_studio_reads_back_georeferenced(
    make_geotiff: GeoTiffFactory,
    options: ImportOptions,
    registry: TileRegistry,
    client: LabelStudioClient,
    crs: str,
    transform: Affine,
) -> None:
    raster = make_geotiff(width=500, height=420, crs=crs, transform=transform)
    import_raster(raster, options, registry, client)
    tile = next(t for t in registry.tiles() if t.window.col_off > 0 and t.window.row_off > 0)
    size = ImageSize.of(tile.grid)
    rows, cols = np.array([3, 40, 200, 150]), np.array([7, 230, 100, 12])
    polygon = polygon_result(
        np.column_stack([cols + 0.5, rows + 0.5]), size, "building", POLYGON_NAME, IMAGE_NAME
    )
    mask = np.zeros((size.height, size.width), dtype=bool)
    mask[10:20, 100:140] = True
    brush = brush_result(mask, "water", BRUSH_NAME, IMAGE_NAME)
    client.create_annotation(tile.task_id or 0, [polygon, brush])

    (annotation,) = client.annotations(tile.task_id or 0)
    regions = {r["type"]: r for r in annotation["result"]}
    read_tile = registry.tile_by_task(annotation["task"])
    world = region_to_world(parse_result(regions["polygonlabels"], size), read_tile.grid)
    xs, ys = rasterio.transform.xy(transform, rows + tile.window.row_off, cols + tile.window.col_off)
    np.testing.assert_allclose(world[:, 0], xs, rtol=0, atol=1e-6)
    np.testing.assert_allclose(world[:, 1], ys, rtol=0, atol=1e-6)
    brush_region = parse_result(regions["brushlabels"], size)
    assert brush_region.labels == ("water",)
    assert np.array_equal(brush_region.mask, mask)


def test_changed_raster_at_the_same_path_is_refused(
    make_geotiff: GeoTiffFactory, options: ImportOptions, registry: TileRegistry, client: LabelStudioClient
) -> None:
    raster = make_geotiff("ortho.tif", width=300, height=300)
    report = import_raster(raster, options, registry, client)
    before = registry.tiles()
    make_geotiff("ortho.tif", data=synthetic(3, 300, 300, "uint8", seed=99))
    with pytest.raises(RasterChangedError, match="different content"):
        import_raster(raster, options, registry, client)
    assert registry.tiles() == before
    assert len(client.tasks(report.project_id)) == len(before)


def test_all_nodata_raster_leaves_nothing_behind(
    make_geotiff: GeoTiffFactory, options: ImportOptions, registry: TileRegistry, client: LabelStudioClient
) -> None:
    raster = make_geotiff(data=np.zeros((3, 300, 300), dtype="uint8"), nodata=0)
    with pytest.raises(AllNodataError):
        import_raster(raster, options, registry, client)
    assert registry.rasters() == []
    assert registry.tiles() == []


def test_sparse_raster_keeps_only_tiles_with_data(
    make_geotiff: GeoTiffFactory, options: ImportOptions, registry: TileRegistry, client: LabelStudioClient
) -> None:
    data = synthetic(3, 300, 600, "uint8")
    data[:, :, :300] = 0
    report = import_raster(make_geotiff(data=data, nodata=0), options, registry, client)
    counts = registry.status_counts(registry.rasters()[0].id)
    assert counts[TileStatus.SKIPPED] == report.skipped == 2
    assert len(client.tasks(report.project_id)) == counts[TileStatus.IMPORTED] == report.tiles - 2


def test_unreachable_server_or_wrong_token_changes_nothing(
    make_geotiff: GeoTiffFactory,
    options: ImportOptions,
    registry: TileRegistry,
    label_studio: LabelStudioServer,
) -> None:
    raster = make_geotiff(width=300, height=300)
    down = LabelStudioClient(f"http://127.0.0.1:{free_port()}", "some-token")
    with pytest.raises(LabelStudioUnreachableError, match="cannot reach Label Studio"):
        import_raster(raster, options, registry, down)
    wrong = LabelStudioClient(label_studio.url, "0123456789abcdef0123456789abcdef01234567")
    with pytest.raises(LabelStudioAuthError, match="rejected the API token") as excinfo:
        import_raster(raster, options, registry, wrong)
    assert "0123456789abcdef" not in str(excinfo.value)
    assert registry.rasters() == []
    assert not list(Path(options.data_dir).glob("tiles/*/*.png"))


class CrashAfterImport(LabelStudioClient):
    """A real client that dies right after Label Studio created a batch of tasks."""

    def import_tasks(self, project_id: int, tasks):  # type: ignore[no-untyped-def]
        super().import_tasks(project_id, tasks)
        raise KeyboardInterrupt


class CrashDuringRender:
    def __init__(self) -> None:
        self.calls = 0

    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, units: int) -> None:
        self.calls += 1
        if self.calls == 2:
            raise KeyboardInterrupt


def test_interrupted_imports_resume_without_duplicates(
    make_geotiff: GeoTiffFactory,
    options: ImportOptions,
    registry: TileRegistry,
    label_studio: LabelStudioServer,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(pipeline, "IMPORT_BATCH", 4)
    monkeypatch.setattr("importers.render.CHUNK_TILES", 3)
    raster = make_geotiff(width=800, height=600)  # 4 x 3 = 12 tiles
    client = label_studio.client()
    with pytest.raises(KeyboardInterrupt):
        import_raster(raster, options, registry, client, CrashDuringRender())
    assert registry.status_counts(registry.rasters()[0].id)[TileStatus.PLANNED] > 0

    crashing = CrashAfterImport(label_studio.url, label_studio.token)
    with pytest.raises(KeyboardInterrupt):
        import_raster(raster, options, registry, crashing)
    project_id = registry.rasters()[0].project_id
    assert len(client.tasks(project_id)) == 4  # Label Studio has them, the registry does not
    assert registry.status_counts(registry.rasters()[0].id)[TileStatus.IMPORTED] == 0

    report = import_raster(raster, options, registry, client)
    assert report.tasks_adopted == 4
    assert report.tasks_created == 8
    states = client.tasks(project_id)
    assert len(states) == 12
    assert sorted(s.tile_id for s in states) == sorted(t.id for t in registry.tiles())
    assert {s.task_id for s in states} == {t.task_id for t in registry.tiles()}


def test_tasks_deleted_in_label_studio_are_created_again(
    make_geotiff: GeoTiffFactory,
    options: ImportOptions,
    registry: TileRegistry,
    client: LabelStudioClient,
    label_studio: LabelStudioServer,
) -> None:
    raster = make_geotiff(width=300, height=300)
    report = import_raster(raster, options, registry, client)
    victim = registry.tiles()[0]
    response = httpx.delete(
        f"{label_studio.url}/api/tasks/{victim.task_id}/",
        headers={"Authorization": f"Token {label_studio.token}"},
    )
    assert response.status_code == 204
    again = import_raster(raster, options, registry, client)
    assert (again.tasks_lost, again.tasks_created) == (1, 1)
    assert registry.tile(victim.id).task_id != victim.task_id
    assert len(client.tasks(report.project_id)) == report.tiles


def test_real_rasters_from_shared_data(
    shared_data: Path, options: ImportOptions, registry: TileRegistry, client: LabelStudioClient
) -> None:
    landsat = import_raster(shared_data / "rasterio" / "RGB.byte.tif", options, registry, client)
    pan_project = dataclasses.replace(options, project=f"{options.project} pan")  # 1 band: its own project
    pan = import_raster(shared_data / "solaris" / "sample_geotiff.tif", pan_project, registry, client)
    assert landsat.tasks_created == landsat.tiles - landsat.skipped
    assert pan.tasks_created == pan.tiles
    rasters = {r.name: r for r in registry.rasters()}
    assert rasters["RGB.byte.tif"].grid.crs.to_epsg() == 32618
    assert rasters["sample_geotiff.tif"].display_bands == (1,)
    assert rasters["sample_geotiff.tif"].stretch[0][1] > 255  # 16-bit data is stretched


def test_stale_task_ids_in_the_registry_are_repaired_from_label_studio(
    make_geotiff: GeoTiffFactory, options: ImportOptions, registry: TileRegistry, client: LabelStudioClient
) -> None:
    raster = make_geotiff(width=300, height=300)
    report = import_raster(raster, options, registry, client)
    t0, t1 = registry.tiles()[:2]
    # the registry now claims t1 shows t0's task (as after a Label Studio database reset)
    registry.conn.execute("UPDATE tiles SET task_id = NULL WHERE id = ?", [t0.id])
    registry.conn.execute("UPDATE tiles SET task_id = ? WHERE id = ?", [t0.task_id, t1.id])
    registry.conn.commit()
    again = import_raster(raster, options, registry, client)
    assert (again.tasks_created, again.tasks_lost, again.tasks_adopted) == (0, 1, 2)
    assert registry.tile(t0.id).task_id == t0.task_id
    assert registry.tile(t1.id).task_id == t1.task_id
    assert len(client.tasks(report.project_id)) == report.tiles


def test_a_project_deleted_in_label_studio_is_recreated_every_time(
    make_geotiff: GeoTiffFactory,
    options: ImportOptions,
    registry: TileRegistry,
    client: LabelStudioClient,
    label_studio: LabelStudioServer,
) -> None:
    raster = make_geotiff(width=300, height=300)
    headers = {"Authorization": f"Token {label_studio.token}"}
    project_ids = []
    for _ in range(2):
        report = import_raster(raster, options, registry, client)
        project_ids.append(report.project_id)
        assert len(client.tasks(report.project_id)) == report.tiles
        httpx.delete(
            f"{label_studio.url}/api/projects/{report.project_id}/", headers=headers
        ).raise_for_status()
    final = import_raster(raster, options, registry, client)
    assert len(set([*project_ids, final.project_id])) == 3
    assert registry.project_id(options.project) == final.project_id


def test_copies_are_not_duplicated_within_a_project(
    make_geotiff: GeoTiffFactory, options: ImportOptions, registry: TileRegistry, client: LabelStudioClient
) -> None:
    original = make_geotiff("a.tif", width=300, height=300)
    import_raster(original, options, registry, client)
    other = dataclasses.replace(options, project=options.project + " bis")
    for name, target in (("b.tif", other), ("c.tif", other)):
        copy = original.with_name(name)
        copy.write_bytes(original.read_bytes())
        import_raster(copy, target, registry, client)
    second = registry.project_id(other.project)
    assert second is not None
    assert len(client.tasks(second)) == 4


def test_one_import_at_a_time_per_data_folder(
    make_geotiff: GeoTiffFactory, options: ImportOptions, registry: TileRegistry, client: LabelStudioClient
) -> None:
    with (
        pipeline.import_lock(options.data_dir),
        pytest.raises(ImportFailedError, match="another geolabel import"),
    ):
        import_raster(make_geotiff(width=300, height=300), options, registry, client)


def test_a_damaged_raster_fails_clearly_and_changes_nothing(
    make_geotiff: GeoTiffFactory, options: ImportOptions, registry: TileRegistry, client: LabelStudioClient
) -> None:
    good = make_geotiff("good.tif", width=600, height=600, compress="deflate", tiled=True)
    damaged = good.with_name("ortho.tif")
    content = good.read_bytes()
    damaged.write_bytes(content[: len(content) * 2 // 3])
    with pytest.raises(RasterReadError, match="damaged or truncated"):
        import_raster(damaged, options, registry, client)
    assert registry.rasters() == []
    assert client.find_projects(options.project) == []
    damaged.write_bytes(content)
    report = import_raster(damaged, options, registry, client)
    assert report.tasks_created == report.tiles


def test_an_unfinished_import_is_replaced_when_the_file_changes(
    make_geotiff: GeoTiffFactory,
    options: ImportOptions,
    registry: TileRegistry,
    client: LabelStudioClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr("importers.render.CHUNK_TILES", 3)
    raster = make_geotiff("ortho.tif", width=600, height=600)
    with pytest.raises(KeyboardInterrupt):
        import_raster(raster, options, registry, client, CrashDuringRender())
    old_uid = registry.rasters()[0].uid
    make_geotiff("ortho.tif", data=synthetic(3, 600, 600, "uint8", seed=7))
    report = import_raster(raster, options, registry, client)
    assert "replaced an unfinished earlier import" in report.notes[0]
    assert report.tasks_created == report.tiles
    assert len(registry.rasters()) == 1
    assert registry.rasters()[0].uid != old_uid
    assert not (Path(options.data_dir) / "tiles" / old_uid).exists()


def test_refusals_before_any_write_leave_no_project(
    make_geotiff: GeoTiffFactory, options: ImportOptions, registry: TileRegistry, client: LabelStudioClient
) -> None:
    blank = make_geotiff(data=np.zeros((3, 300, 300), dtype="uint8"), nodata=0)
    with pytest.raises(AllNodataError):
        import_raster(blank, options, registry, client)
    with pytest.raises(UnsupportedRasterError, match="band 9 does not exist"):
        import_raster(make_geotiff(), dataclasses.replace(options, bands=[9, 1, 2]), registry, client)
    assert client.find_projects(options.project) == []
    assert registry.project_id(options.project) is None
