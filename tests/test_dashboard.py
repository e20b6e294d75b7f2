"""The coordinators' dashboard: rasters in two CRSs in one project, imagery tiles, task links, the page."""

from __future__ import annotations

import html
import io
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import morecantile
import numpy as np
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from flask.testing import FlaskClient
from PIL import Image
from pydantic import SecretStr
from pyproj import Transformer
from werkzeug.serving import make_server

from geolabel.cli import cli
from geolabel.config import Config
from geolabel.lsmodels import LabelledTask
from georef.registry import RasterRecord, TileRecord, TileRegistry
from importers.maptiles import MapSource, render_map_tile
from importers.pipeline import ImportOptions, import_raster
from ml_backend.app import create_app
from tests.conftest import CLASSES, LabelStudioServer, chromium_path, config_toml, free_port, import_scene
from trainer.dashboard import collect, map_json, throughput_table
from trainer.dashboard_throughput import AnnotatorDay, ThroughputTally, load_throughput, save_throughput
from trainer.rounds import RoundStatus, RoundStore

PASSWORD = "map-test-password"
UTM31_20CM = Affine(0.2, 0.0, 452400.0, 0.0, -0.2, 5411900.0)  # near Paris, like the Lambert-93 default
WEB_MERCATOR = morecantile.tms.get("WebMercatorQuad")


def blocks(seed: int, height: int = 384, width: int = 512) -> np.ndarray:
    """RGB imagery of 8 x 8 pixel blocks of random colours: every block is recognisable on the map."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, (3, height // 8, width // 8), dtype=np.uint8)
    return np.repeat(np.repeat(small, 8, axis=1), 8, axis=2)


@dataclass(frozen=True)
class TwoCrsProject:
    config: Config
    project_id: int
    rasters: list[RasterRecord]  # Lambert-93 first, UTM 31N second
    tiles: list[TileRecord]
    images: dict[int, np.ndarray]  # raster id -> its pixels (bands, rows, cols)


@pytest.fixture(scope="module")
def two_crs(label_studio: LabelStudioServer, tmp_path_factory: pytest.TempPathFactory) -> TwoCrsProject:
    """A Lambert-93 scene and a UTM 31N scene imported into one project."""
    folder = tmp_path_factory.mktemp("dashboard")
    lambert = blocks(1)
    imported = import_scene(label_studio, folder / "lambert93.tif", lambert, "dashboard two crs", overlap=0)
    utm = blocks(2)
    utm_path = folder / "utm31.tif"
    with rasterio.open(utm_path, "w", driver="GTiff", width=512, height=384, count=3, dtype="uint8",
                       crs="EPSG:32631", transform=UTM31_20CM) as dst:  # fmt: skip
        dst.write(utm)
    config = imported.config
    options = ImportOptions(config.project.name, CLASSES, config.data_dir, label_studio.document_root,
                            tile_size=256, overlap=0, workers=1)  # fmt: skip
    with TileRegistry(config.registry_path) as registry:
        import_raster(utm_path, options, registry, label_studio.client())
        rasters = sorted(registry.rasters(), key=lambda r: r.id)
        tiles = registry.tiles()
    assert [r.grid.crs.to_epsg() for r in rasters] == [2154, 32631]
    images = {rasters[0].id: lambert, rasters[1].id: utm}
    return TwoCrsProject(config, imported.report.project_id, rasters, tiles, images)


def with_password(config: Config) -> Config:
    section = config.ml_backend.model_copy(update={"password": SecretStr(PASSWORD)})
    return config.model_copy(update={"ml_backend": section})


@pytest.fixture(scope="module")
def app_client(two_crs: TwoCrsProject) -> tuple[FlaskClient, str]:
    config = with_password(two_crs.config)
    return create_app(config).test_client(), config.ml_backend_auth().username


def test_the_map_data_holds_both_crs_reprojected_exactly(two_crs: TwoCrsProject) -> None:
    data = map_json(collect(two_crs.config))
    assert [r["crs"] for r in data["rasters"]] == ["EPSG:2154", "EPSG:32631"]
    assert all(r["problem"] is None and r["imagery"] is not None for r in data["rasters"])
    by_id = {t["id"]: t for t in data["tiles"]}
    assert set(by_id) == {t.id for t in two_crs.tiles}
    assert {t["raster"] for t in data["tiles"]} == {r.id for r in two_crs.rasters}  # both CRSs on one map
    for tile in two_crs.tiles:
        to_lonlat = Transformer.from_crs(tile.crs_text, "EPSG:4326", always_xy=True)
        corners = tile.grid.corners_world()
        expected = np.column_stack(to_lonlat.transform(corners[:, 0], corners[:, 1]))
        np.testing.assert_allclose(by_id[tile.id]["footprint"], expected, rtol=0, atol=1e-12)
    for raster, entry in zip(two_crs.rasters, data["rasters"], strict=True):
        to_lonlat = Transformer.from_crs(raster.grid.crs.to_string(), "EPSG:4326", always_xy=True)
        x, y = raster.grid.transform @ (0, 0)
        assert entry["footprint"][0] == pytest.approx(to_lonlat.transform(x, y), abs=1e-12)


def test_each_tile_links_to_its_label_studio_task(
    two_crs: TwoCrsProject, label_studio: LabelStudioServer
) -> None:
    data = map_json(collect(two_crs.config))
    url = two_crs.config.label_studio.url
    by_id = {t["id"]: t for t in data["tiles"]}
    for tile in two_crs.tiles:
        assert tile.task_id is not None
        assert by_id[tile.id]["task"] == tile.task_id
        assert by_id[tile.id]["task_url"] == f"{url}/projects/{two_crs.project_id}/data?task={tile.task_id}"
        task = httpx.get(
            f"{url}/api/tasks/{tile.task_id}", headers={"Authorization": f"Token {label_studio.token}"}
        )
        assert task.json()["project"] == two_crs.project_id  # the linked task is this project's...
        assert tile.image_path is not None
        assert task.json()["data"]["image"].endswith(Path(tile.image_path).name)  # ... and shows this tile


def source_pixel(raster: RasterRecord, lon: float, lat: float) -> tuple[int, int] | None:
    """``(row, col)`` of the raster pixel under a longitude/latitude (rasterio's rowcol), if inside."""
    to_crs = Transformer.from_crs("EPSG:4326", raster.grid.crs.to_string(), always_xy=True)
    x, y = to_crs.transform(lon, lat)
    with rasterio.open(raster.path) as src:
        row, col = src.index(x, y, op=float)
        inside = 0 <= row < src.height and 0 <= col < src.width
    return (int(row), int(col)) if inside else None


@pytest.mark.parametrize("which", [0, 1], ids=["lambert93", "utm31n"])
def test_a_map_tile_shows_the_raster_pixels_at_their_place(
    two_crs: TwoCrsProject, app_client: tuple[FlaskClient, str], which: int
) -> None:
    client, user = app_client
    raster = two_crs.rasters[which]
    with rasterio.open(raster.path) as src:
        source = src.read()
    np.testing.assert_array_equal(source, two_crs.images[raster.id])
    zoom = 20  # 0.15 m map pixels over 0.2 m raster pixels: every 8 x 8 block spans several map pixels
    centre = Transformer.from_crs(raster.grid.crs.to_string(), "EPSG:4326", always_xy=True).transform(
        *(raster.grid.transform @ (200.5, 150.5))
    )
    tile = WEB_MERCATOR.tile(*centre, zoom)
    response = client.get(f"/dashboard/tiles/{raster.id}/{zoom}/{tile.x}/{tile.y}.png", auth=(user, PASSWORD))
    assert response.status_code == 200
    assert response.mimetype == "image/png"
    image = np.asarray(Image.open(io.BytesIO(response.data)).convert("RGBA"))
    assert image.shape == (256, 256, 4)
    bounds = WEB_MERCATOR.bounds(tile)
    compared = 0
    for row in range(4, 256, 12):
        for col in range(4, 256, 12):
            lon = bounds.left + (col + 0.5) / 256 * (bounds.right - bounds.left)
            lat = _lat(bounds, row)
            where = source_pixel(raster, lon, lat)
            if where is None or _near_block_edge(raster, lon, lat):
                continue
            assert image[row, col, 3] == 255
            assert tuple(image[row, col, :3]) == tuple(source[:, where[0], where[1]]), (row, col, where)
            compared += 1
    assert compared > 100


def _lat(bounds: morecantile.models.BoundingBox, row: int) -> float:
    """Latitude of a map pixel's centre (web-mercator rows are linear in y, not in latitude)."""
    to_merc = Transformer.from_crs("EPSG:4326", "EPSG:3857", always_xy=True)
    _, top = to_merc.transform(bounds.left, bounds.top)
    _, bottom = to_merc.transform(bounds.left, bounds.bottom)
    y = top - (row + 0.5) / 256 * (top - bottom)
    return float(Transformer.from_crs("EPSG:3857", "EPSG:4326", always_xy=True).transform(0, y)[1])


def _near_block_edge(raster: RasterRecord, lon: float, lat: float) -> bool:
    x, y = Transformer.from_crs("EPSG:4326", raster.grid.crs.to_string(), always_xy=True).transform(lon, lat)
    col, row = ~raster.grid.transform @ (x, y)
    return min(col % 8, 8 - col % 8, row % 8, 8 - row % 8) < 0.5


def test_map_tiles_outside_a_raster_are_transparent_and_bad_requests_are_refused(
    two_crs: TwoCrsProject, app_client: tuple[FlaskClient, str]
) -> None:
    client, user = app_client
    raster = two_crs.rasters[0]
    far = client.get(f"/dashboard/tiles/{raster.id}/18/0/0.png", auth=(user, PASSWORD))
    assert far.status_code == 200
    assert (np.asarray(Image.open(io.BytesIO(far.data)).convert("RGBA"))[..., 3] == 0).all()
    unknown = client.get("/dashboard/tiles/999/18/0/0.png", auth=(user, PASSWORD))
    assert unknown.status_code == 404
    assert "no raster 999" in unknown.get_json()["error"]
    beyond = client.get(f"/dashboard/tiles/{raster.id}/3/8/0.png", auth=(user, PASSWORD))
    assert beyond.status_code == 404
    assert "not a web-mercator tile" in beyond.get_json()["error"]


def test_every_dashboard_route_needs_the_backend_login(
    two_crs: TwoCrsProject, app_client: tuple[FlaskClient, str]
) -> None:
    client, user = app_client
    raster = two_crs.rasters[0]
    routes = [
        "/dashboard",
        "/dashboard/data.json",
        "/dashboard/learning-curve.png",
        f"/dashboard/tiles/{raster.id}/18/0/0.png",
        "/dashboard/static/dashboard.js",
        "/dashboard/static/dashboard.css",
        "/dashboard/static/leaflet/leaflet.js",
        "/dashboard/static/leaflet/leaflet.css",
    ]
    for route in routes:
        assert client.get(route).status_code == 401, route
        assert client.get(route, auth=(user, "wrong")).status_code == 401, route
        assert client.get(route, auth=(user, PASSWORD)).status_code == 200, route


def test_the_page_names_no_other_host(two_crs: TwoCrsProject, app_client: tuple[FlaskClient, str]) -> None:
    client, user = app_client
    page = client.get("/dashboard", auth=(user, PASSWORD)).get_data(as_text=True)
    script = client.get("/dashboard/static/dashboard.js", auth=(user, PASSWORD)).get_data(as_text=True)
    assert not re.findall(r"https?://", page + script)
    assert re.findall(r'(?:src|href)="([^"]+)"', page) == [
        "data:,",  # no favicon request
        "dashboard/static/leaflet/leaflet.css",
        "dashboard/static/dashboard.css",
        "dashboard/learning-curve.png",
        "dashboard/class-metrics.png",
        "dashboard/annotators.png",
        "dashboard/static/leaflet/leaflet.js",
        "dashboard/static/dashboard.js",
    ]


@pytest.fixture(scope="module")
def dashboard_server(two_crs: TwoCrsProject) -> Iterator[tuple[str, str]]:
    config = with_password(two_crs.config)
    port = free_port()
    server = make_server("127.0.0.1", port, create_app(config), threaded=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{port}", config.ml_backend_auth().username
    finally:
        server.shutdown()


def test_the_map_page_renders_in_headless_chromium_from_the_app_alone(
    two_crs: TwoCrsProject, dashboard_server: tuple[str, str], tmp_path: Path
) -> None:
    from playwright import sync_api as playwright_api

    url, user = dashboard_server
    requested: list[str] = []
    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox", "--disable-gpu"])
        try:
            context = browser.new_context(
                http_credentials={"username": user, "password": PASSWORD},
                viewport={"width": 1400, "height": 1000},
            )
            page = context.new_page()
            page.on("request", lambda request: requested.append(request.url))
            errors: list[str] = []
            page.on("pageerror", lambda error: errors.append(str(error)))
            response = page.goto(f"{url}/dashboard")
            assert response is not None
            assert response.status == 200
            page.wait_for_function("window.geolabelDashboard && window.geolabelDashboard.refreshes >= 1")
            page.wait_for_load_state("networkidle")
            assert page.evaluate("window.geolabelDashboard.tiles.size") == len(two_crs.tiles)
            assert page.evaluate("window.geolabelDashboard.rasters.size") == 2
            visible = page.locator("path.leaflet-interactive").evaluate_all(
                "paths => paths.filter(p => p.getBoundingClientRect().width > 3).length"
            )
            assert visible == len(two_crs.tiles)  # the first view shows every tile of both CRSs
            assert page.locator("#raster-list tbody tr.shown").count() == 2
            page.screenshot(path=str(tmp_path / "dashboard-page.png"), full_page=True)
            for raster in two_crs.rasters:  # a click on a raster's row zooms to it: its imagery shows
                page.locator(f'#raster-list tr[data-raster="{raster.id}"]').click()
                page.wait_for_selector(
                    f'img.leaflet-tile-loaded[src^="dashboard/tiles/{raster.id}/"]', state="attached"
                )
                page.wait_for_load_state("networkidle")
                page.locator("#map").screenshot(path=str(tmp_path / f"dashboard-map-{raster.id}.png"))

            tile = two_crs.tiles[0]
            page.evaluate(
                "id => window.geolabelDashboard.tiles.get(id).openPopup()", tile.id
            )  # what a click on the tile does
            link = page.locator(".leaflet-popup-content a.task-link")
            expected = (
                f"{two_crs.config.label_studio.url}/projects/{two_crs.project_id}/data?task={tile.task_id}"
            )
            assert link.get_attribute("href") == expected
            page.screenshot(path=str(tmp_path / "dashboard-popup.png"))

            page.evaluate(
                "window.geolabelDashboard.map.closePopup(); window.geolabelDashboard.map.setZoom(21)"
            )
            view = page.evaluate(
                "[window.geolabelDashboard.map.getZoom(), window.geolabelDashboard.map.getCenter()]"
            )
            page.evaluate("window.geolabelDashboard.refresh()")
            page.wait_for_function("window.geolabelDashboard.refreshes >= 2")
            after = page.evaluate(
                "[window.geolabelDashboard.map.getZoom(), window.geolabelDashboard.map.getCenter()]"
            )
            assert after == view  # refreshing keeps the pan and zoom
            assert "updated" in page.locator("#updated").inner_text()
            assert not errors
        finally:
            browser.close()
    origins = {"/".join(r.split("/")[:3]) for r in requested if not r.startswith("data:")}
    assert origins == {url}  # every asset, script and map tile came from the app itself
    for raster in two_crs.rasters:  # the imagery is on the screenshots: thousands of colours, not a blank map
        shot = np.asarray(Image.open(tmp_path / f"dashboard-map-{raster.id}.png").convert("RGB"))
        assert len(np.unique(shot.reshape(-1, 3), axis=0)) > 1000


LONG_ERROR = (
    "[Errno 28] No space left on device while writing the checkpoint of version v-20261130-0102 into "
    "/data/projects/dashboard-two-crs/models/.staging-12345/model.pt; free some space on that disk "
    "(about 120 MB per version) or move paths.data_dir, then run geolabel train --now again. " * 2
).strip()


def test_errors_and_times_are_never_cut_in_the_page_nor_in_geolabel_status(
    two_crs: TwoCrsProject, app_client: tuple[FlaskClient, str], tmp_path: Path
) -> None:
    with RoundStore(two_crs.config.registry_path) as store:
        round_id = store.start(two_crs.project_id, "test")
        store.finish(round_id, RoundStatus.FAILED, error=LONG_ERROR)
        record = store.get(round_id)
    assert record.ended is not None
    client, user = app_client
    page = html.unescape(client.get("/dashboard", auth=(user, PASSWORD)).get_data(as_text=True))
    for text in (LONG_ERROR, record.started, record.ended):
        assert text in page
    data = client.get("/dashboard/data.json", auth=(user, PASSWORD)).get_json()
    assert LONG_ERROR in html.unescape(data["sections"]["rounds"])
    path = config_toml(two_crs.config, tmp_path)
    result = CliRunner().invoke(cli, ["--config", str(path), "status"], env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    assert " ".join(LONG_ERROR.split()) in " ".join(result.output.split())  # in full, words intact
    assert record.started in result.output
    assert record.ended in result.output


def test_the_rounds_table_says_what_a_round_started_from_and_which_model_won(
    two_crs: TwoCrsProject, app_client: tuple[FlaskClient, str]
) -> None:
    origin = "from project 'coast' (version v20261101-000000); classes kept building; new water"
    with RoundStore(two_crs.config.registry_path) as store:
        round_id = store.start(two_crs.project_id, "test")
        store.update(round_id, origin=origin, metrics={"miou": 0.5}, winner="sam_head",
                     contenders={"sam_head": {"miou": 0.625, "detail": "12 tiles"}})  # fmt: skip
        store.finish(round_id, RoundStatus.KEPT)
    client, user = app_client
    data = client.get("/dashboard/data.json", auth=(user, PASSWORD)).get_json()
    rounds = html.unescape(data["sections"]["rounds"])
    assert origin in rounds
    assert "sam_head (sam_head 0.625, unet 0.500)" in rounds


def annotated_task(task_id: int, *annotations: tuple[str, str, bool]) -> LabelledTask:
    """A labelled task whose annotations are ``(annotator e-mail, created_at, was_cancelled)``."""
    return LabelledTask.model_validate(
        {
            "id": task_id,
            "annotations": [
                {
                    "id": task_id * 10 + i,
                    "completed_by": {"id": i, "email": who},
                    "created_at": when,
                    "was_cancelled": cancelled,
                    "result": [],
                }
                for i, (who, when, cancelled) in enumerate(annotations)
            ],
        }
    )


def test_throughput_counts_distinct_tiles_per_annotator_and_utc_day(tmp_path: Path) -> None:
    tasks = [
        annotated_task(
            1, ("ann@x.org", "2026-11-29T10:00:00.5Z", False), ("bob@x.org", "2026-11-29T11:00:00Z", False)
        ),
        annotated_task(
            2, ("ann@x.org", "2026-11-29T12:00:00Z", False), ("ann@x.org", "2026-11-29T13:00:00Z", False)
        ),
        annotated_task(3, ("ann@x.org", "2026-11-29T23:30:00-02:00", False)),  # 2026-11-30 in UTC
        annotated_task(4, ("bob@x.org", "2026-11-30T09:00:00Z", True)),  # a skip labels nothing
        annotated_task(99, ("bob@x.org", "2026-11-30T09:00:00Z", False)),  # not a tile of this project
    ]
    tally = ThroughputTally({1, 2, 3, 4})
    assert [t.id for t in tally.watch(tasks)] == [1, 2, 3, 4, 99]  # the harvest sees every task
    expected = [
        AnnotatorDay("ann@x.org", "2026-11-29", 2),  # task 2 annotated twice that day: one tile
        AnnotatorDay("ann@x.org", "2026-11-30", 1),
        AnnotatorDay("bob@x.org", "2026-11-29", 1),
    ]
    assert tally.counts() == expected
    registry = tmp_path / "registry.sqlite"
    save_throughput(registry, 7, expected)
    save_throughput(registry, 8, [AnnotatorDay("eve@x.org", "2026-11-30", 5)])
    assert load_throughput(registry, 7) == expected  # each project sees its own counts only
    save_throughput(registry, 7, expected[:1])  # the next harvest replaces them
    assert load_throughput(registry, 7) == expected[:1]
    table = throughput_table(expected)
    assert table.count("<tr>") == 3  # header + two annotators
    assert "<td>ann@x.org</td><td>1</td><td>2</td><td>3</td>" in table  # newest day first, then all days


@pytest.mark.parametrize("degrees", [30, 90])
def test_map_tiles_of_rotated_rasters_put_each_pixel_in_its_place(degrees: float, tmp_path: Path) -> None:
    transform = Affine(0.2, 0.0, 650000.0, 0.0, -0.2, 6860000.0) @ Affine.rotation(degrees)
    image = blocks(3, 200, 296)
    path = tmp_path / f"rotated{degrees}.tif"
    with rasterio.open(path, "w", driver="GTiff", width=296, height=200, count=3, dtype="uint8",
                       crs="EPSG:2154", transform=transform) as dst:  # fmt: skip
        dst.write(image)
    to_lonlat = Transformer.from_crs("EPSG:2154", "EPSG:4326", always_xy=True)
    to_source = Transformer.from_crs("EPSG:4326", "EPSG:2154", always_xy=True)
    source = MapSource(str(path), (1, 2, 3), ((0.0, 255.0),) * 3)
    compared = 0
    for corner in [(4.5, 4.5), (291.5, 4.5), (291.5, 195.5), (4.5, 195.5)]:  # tiles at all four corners
        tile = WEB_MERCATOR.tile(*to_lonlat.transform(*(transform @ corner)), 20)
        png = render_map_tile(source, tile.x, tile.y, 20)
        assert png is not None
        shown = np.asarray(Image.open(io.BytesIO(png)).convert("RGBA"))
        bounds = WEB_MERCATOR.bounds(tile)
        for row in range(2, 256, 9):
            for col in range(2, 256, 9):
                lon = bounds.left + (col + 0.5) / 256 * (bounds.right - bounds.left)
                x, y = to_source.transform(lon, _lat(bounds, row))
                pixel_col, pixel_row = ~transform @ (x, y)
                inside = 0 <= pixel_col < 296 and 0 <= pixel_row < 200
                if not inside:
                    continue
                if min(pixel_col % 8, 8 - pixel_col % 8, pixel_row % 8, 8 - pixel_row % 8) < 0.5:
                    continue  # a block edge: GDAL's approximate transformer may land on either side
                assert shown[row, col, 3] == 255
                assert tuple(shown[row, col, :3]) == tuple(image[:, int(pixel_row), int(pixel_col)])
                compared += 1
    assert compared > 200


def test_the_dashboard_shows_only_the_backends_project(
    two_crs: TwoCrsProject,
    app_client: tuple[FlaskClient, str],
    label_studio: LabelStudioServer,
    tmp_path: Path,
) -> None:
    other_path = tmp_path / "other.tif"
    with rasterio.open(other_path, "w", driver="GTiff", width=256, height=256, count=3, dtype="uint8",
                       crs="EPSG:32631", transform=UTM31_20CM) as dst:  # fmt: skip
        dst.write(blocks(4, 256, 256))
    config = two_crs.config
    options = ImportOptions("dashboard another project", CLASSES, config.data_dir, label_studio.document_root,
                            tile_size=256, overlap=0, workers=1)  # fmt: skip
    with TileRegistry(config.registry_path) as registry:
        import_raster(other_path, options, registry, label_studio.client())
        other = next(r for r in registry.rasters() if r.path == str(other_path.resolve()))
    assert other.project_id != two_crs.project_id  # same data folder, another project
    data = map_json(collect(config))
    assert {r["id"] for r in data["rasters"]} == {r.id for r in two_crs.rasters}
    assert {t["raster"] for t in data["tiles"]} == {r.id for r in two_crs.rasters}
    client, user = app_client
    tile = WEB_MERCATOR.tile(*Transformer.from_crs("EPSG:32631", "EPSG:4326", always_xy=True).transform(
        *(UTM31_20CM @ (128, 128))), 19)  # fmt: skip
    refused = client.get(f"/dashboard/tiles/{other.id}/19/{tile.x}/{tile.y}.png", auth=(user, PASSWORD))
    assert refused.status_code == 404
    assert "no raster" in refused.get_json()["error"]


def test_task_links_follow_the_public_url() -> None:
    """Behind one proxy the dashboard links to tasks on its own origin; else to the public or API URL."""
    from geolabel.config import parse_config
    from geolabel.errors import ConfigError
    from trainer.dashboard_map import TileLinks

    base = {"classes": [{"id": 1, "name": "building", "color": "#ff0000"}]}
    section = {"url": "http://label-studio:8000"}
    for public, expected in (
        ("/", "/projects/3/data?task=7"),
        ("https://labels.example.org", "https://labels.example.org/projects/3/data?task=7"),
        ("", "http://label-studio:8000/projects/3/data?task=7"),
    ):
        config = parse_config({**base, "label_studio": {**section, "public_url": public}}, Path("."))
        assert TileLinks(config.label_studio.browser_url, 3).task_url(7) == expected
    with pytest.raises(ConfigError, match="public_url"):
        parse_config({**base, "label_studio": {"public_url": "labels.example.org"}}, Path("."))
