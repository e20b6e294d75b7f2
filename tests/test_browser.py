"""Label Studio's real labelling page: a polygon drawn with the mouse lands where it should on Earth, and
at 1366x768 every class is beside the image without scrolling, SAM tools only when SAM is on.

Runs headless Debian chromium through Playwright against the test run's Label Studio; skipped with a
reason where chromium or Playwright is missing (``make test`` installs both when it can).
"""

from __future__ import annotations

import dataclasses
import tomllib
from typing import TYPE_CHECKING

import numpy as np
import pytest
import rasterio
import rasterio.transform

from geolabel.classes import UNSURE_LABEL, LabelClass
from geolabel.config import DEFAULT_CONFIG
from geolabel.lsclient import LabelStudioClient
from georef.labelstudio import ImageSize, parse_result, region_to_world
from georef.registry import TileRegistry
from importers.labelconfig import SAM_BOX_HEADER, SAM_POINT_HEADER, apply_labelling, project_labelling
from importers.pipeline import ImportOptions, import_raster
from tests.conftest import GeoTiffFactory, LabelStudioServer, chromium_path

if TYPE_CHECKING:
    from playwright.sync_api import Page

from playwright import sync_api as playwright_api

pytestmark = [pytest.mark.labelstudio]
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
LAPTOP = {"width": 1366, "height": 768}
UI_TIMEOUT_MS = 120_000  # generous: a wait for the page to be ready, never a timed assert
SETTLE_MS = 500  # the layout has settled when nothing moved for this long
CLICK_GAP_MS = 600  # separate clicks, not a double click (Konva's double-click window is 400 ms)


def test_polygon_drawn_with_the_mouse_is_georeferenced(
    make_geotiff: GeoTiffFactory,
    label_studio: LabelStudioServer,
    options: ImportOptions,
    registry: TileRegistry,
    client: LabelStudioClient,
) -> None:
    raster = make_geotiff(width=512, height=256)
    report = import_raster(raster, dataclasses.replace(options, overlap=0), registry, client)
    tile = registry.tiles()[1]  # the right-hand tile: col_off 256
    creds = _credentials(label_studio)
    clicks_pct = [(20.0, 20.0), (70.0, 25.0), (45.0, 80.0)]

    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1800})
        page.set_default_timeout(UI_TIMEOUT_MS)
        _log_in(page, label_studio.url, *creds)
        page.goto(f"{label_studio.url}/projects/{report.project_id}/data?task={tile.task_id}")
        page.get_by_text("Outline (polygon)").wait_for()
        page.get_by_text("water", exact=True).nth(1).click()  # the "water" of the polygon group
        box = _labelling_image_box(page)  # measured after the click: choosing a label may scroll
        points = [
            (box["x"] + x / 100 * box["width"], box["y"] + y / 100 * box["height"]) for x, y in clicks_pct
        ]
        for x, y in [*points, points[0]]:
            page.mouse.click(x, y)
            page.wait_for_timeout(CLICK_GAP_MS)
        page.get_by_role("button", name="Submit").click()
        page.wait_for_function(
            "([url, id]) => fetch(url + '/api/tasks/' + id + '/')"
            ".then(r => r.json()).then(t => t.total_annotations > 0)",
            arg=[label_studio.url, tile.task_id],
        )
        browser.close()

    (annotation,) = client.annotations(tile.task_id or 0)
    results = [r for r in annotation["result"] if r["type"] == "polygonlabels"]
    assert len(results) == 1, annotation["result"]
    result = results[0]
    region = parse_result(result, ImageSize.of(tile.grid))
    assert region.labels == ("water",)
    world = region_to_world(region, registry.grid(tile.id))
    pct = np.array(clicks_pct)
    cols = pct[:, 0] / 100 * tile.window.width + tile.window.col_off  # source-raster pixel positions
    rows = pct[:, 1] / 100 * tile.window.height + tile.window.row_off
    with rasterio.open(raster) as src:
        xs, ys = rasterio.transform.xy(src.transform, rows, cols, offset="ul")
    expected = np.column_stack([xs, ys])
    # a click lands within one screen pixel; the image is displayed at box["width"] pixels for 256
    tolerance = max(tile.grid.resolution) * 256 / box["width"] * 1.5
    np.testing.assert_allclose(world, expected, atol=tolerance)


def _labelling_image_box(page: Page) -> dict[str, float]:
    """Screen box of the image in the labelling area (Label Studio shows it from a blob: URL)."""
    script = (
        "() => [...document.querySelectorAll('img')]"
        ".find(i => i.src.startsWith('blob:') && i.naturalWidth > 0)"
    )
    page.wait_for_function(script)
    handle = page.evaluate_handle(script)
    box: dict[str, float] = handle.as_element().bounding_box()
    return box


def _credentials(label_studio: LabelStudioServer) -> tuple[str, str]:
    from geolabel.credentials import read_credentials

    creds = read_credentials(label_studio.state_dir)
    assert creds is not None
    return creds.username, creds.password


def _log_in(page: Page, url: str, username: str, password: str) -> None:
    page.goto(f"{url}/user/login/")
    page.fill("input[name=email]", username)
    page.fill("input[name=password]", password)
    page.click("button[type=submit], input[type=submit]")
    page.wait_for_url(lambda current: "/user/login" not in current)


def _template_classes() -> list[LabelClass]:
    """The five classes of the ``geolabel init`` template, each with a description."""
    classes = tomllib.loads(DEFAULT_CONFIG)["classes"]
    return [
        LabelClass.model_validate({**c, "description": f"every {c['name']} seen from above"}) for c in classes
    ]


@pytest.mark.parametrize("sam", [False, True], ids=["sam-off", "sam-on"])
def test_at_1366x768_every_class_is_beside_the_image_without_scrolling(
    sam: bool,
    make_geotiff: GeoTiffFactory,
    label_studio: LabelStudioServer,
    options: ImportOptions,
    registry: TileRegistry,
    client: LabelStudioClient,
) -> None:
    classes = _template_classes()
    options = dataclasses.replace(options, classes=classes, tile_size=512, overlap=0)
    report = import_raster(make_geotiff(width=512, height=512), options, registry, client)
    assert apply_labelling(client, report.project_id, project_labelling(classes, sam=sam)) is None
    (tile,) = registry.tiles()

    with playwright_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium_path(), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport=LAPTOP)
        page.set_default_timeout(UI_TIMEOUT_MS)
        _log_in(page, label_studio.url, *_credentials(label_studio))
        page.goto(f"{label_studio.url}/projects/{report.project_id}/data?task={tile.task_id}")
        page.get_by_text("Outline (polygon)").wait_for()
        image = _settled_image_box(page)
        rows = 4 if sam else 2  # brush, polygon (+ SAM points, SAM boxes): unsure only in the first two
        for name in [c.name for c in classes]:
            _assert_beside_and_in_view(page, name, rows, image)
        _assert_beside_and_in_view(page, UNSURE_LABEL, 2, image)
        for heading in (SAM_POINT_HEADER, SAM_BOX_HEADER):
            if sam:
                _assert_beside_and_in_view(page, heading, 1, image)
            else:
                assert page.get_by_text(heading).count() == 0
        assert page.get_by_text("SAM", exact=False).count() == (2 if sam else 0)
        assert page.evaluate("() => window.scrollY") == 0
        page.get_by_role("button", name="Instructions").click()
        for label in classes:
            page.get_by_text(label.description).wait_for()
        browser.close()


def _settled_image_box(page: Page) -> dict[str, float]:
    """The labelling image's screen box once the layout has settled (the same twice, half a second apart)."""
    box = _labelling_image_box(page)
    for _ in range(UI_TIMEOUT_MS // SETTLE_MS):
        page.wait_for_timeout(SETTLE_MS)
        again = _labelling_image_box(page)
        if again == box:
            return box
        box = again
    raise AssertionError(f"the labelling image kept moving: last at {box}")


def _assert_beside_and_in_view(page: Page, text: str, count: int, image: dict[str, float]) -> None:
    """``count`` elements show exactly ``text``, each right of the image, on screen and not covered."""
    found = page.get_by_text(text, exact=True)
    assert found.count() == count, text
    for index in range(count):
        box = found.nth(index).bounding_box()
        assert box is not None, text
        assert box["x"] >= image["x"] + image["width"], (text, box, image)
        assert box["x"] + box["width"] <= LAPTOP["width"], (text, box)
        assert box["y"] >= 0, (text, box)
        assert box["y"] + box["height"] <= LAPTOP["height"], (text, box)
        centre = [box["x"] + box["width"] / 2, box["y"] + box["height"] / 2]
        shown = page.evaluate("([x, y]) => document.elementFromPoint(x, y)?.textContent ?? ''", centre)
        assert shown == text, (text, shown)  # what a user sees there, not clipped or scrolled away
