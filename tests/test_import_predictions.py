"""``geolabel import-predictions`` (trainer.external): a probability raster in another CRS orders the queue.

One project of 2 x 4 tiles in Lambert-93 (20 cm) on the test run's Label Studio. Two probability rasters
are built for it from the tiles' own grids:

- a uint8 COG in EPSG:3857 (about 33 cm on the ground) with an alpha band, one known building
  probability per tile (so each tile's confidence is known), an IGN-like extra class and no band for
  water; its alpha hides the last tile column: those tiles have no coverage;
- a float32 COG in EPSG:4326 with a random texture per source pixel and a nodata hole: the stored
  probabilities are compared with bilinear interpolation computed here, pixel by pixel (a one-pixel
  shift, a swapped axis or a wrong CRS would not match).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from rasterio.enums import ColorInterp
from rasterio.transform import from_origin
from rasterio.warp import transform, transform_bounds

from geolabel.cli import cli
from geolabel.lsclient import LabelStudioClient
from georef.registry import TileRecord
from tests.conftest import LAMBERT93_20CM, ImportedScene, LabelStudioServer, config_toml, import_scene
from trainer.errors import ProbabilityImportError
from trainer.external import (
    ProbabilityImport,
    ProbabilityImportReport,
    default_version,
    import_probabilities,
    resample_probabilities,
    split_class_names,
)
from trainer.predictions import PredictionStore
from trainer.versions import InputSpec, ModelManifest, ModelStore

pytestmark = pytest.mark.labelstudio
Array = npt.NDArray[Any]

TILE_M = 256 * 0.2  # a tile's side on the ground (Lambert-93 metres)
#: The building probability of each tile (row, col); the last column is hidden by the alpha band.
BUILDING = np.array([[0.5, 0.9, 1.0, 0.3], [0.97, 0.7, 0.8, 0.3]])
#: The alpha band hides everything east of this Lambert-93 x (2 m before the last tile column).
HIDDEN_EAST_OF = LAMBERT93_20CM.c + 3 * TILE_M - 2.0


def confidence(place: tuple[int, int]) -> float:
    """The expected score of a tile: 1 - entropy of (background, building, water = 0) / log(3)."""
    building = float(BUILDING[place])
    entropy = -sum(p * math.log(p) for p in (building, 1 - building) if p > 0)
    return 1 - entropy / math.log(3)


@pytest.fixture(scope="module")
def scene(label_studio: LabelStudioServer, tmp_path_factory: pytest.TempPathFactory) -> ImportedScene:
    """8 tiles (2 rows x 4 columns of 256 px, no overlap) of a Lambert-93 raster, imported as a project."""
    image = np.random.default_rng(3).integers(1, 255, (3, 512, 1024), dtype=np.uint8)
    raster = tmp_path_factory.mktemp("import_predictions") / "scene.tif"
    return import_scene(label_studio, raster, image, "import predictions project", overlap=0)


def by_place(scene: ImportedScene) -> dict[tuple[int, int], TileRecord]:
    return {(t.tile_row, t.tile_col): t for t in scene.tiles}


def source_grid(crs: str, resolution: tuple[float, float], margin: float) -> tuple[Affine, int, int]:
    """A north-up grid in ``crs`` covering the project (plus ``margin`` Lambert-93 metres around)."""
    left, top = LAMBERT93_20CM.c - margin, LAMBERT93_20CM.f + margin
    right, bottom = LAMBERT93_20CM.c + 4 * TILE_M + margin, LAMBERT93_20CM.f - 2 * TILE_M - margin
    x0, y0, x1, y1 = transform_bounds("EPSG:2154", crs, left, bottom, right, top, densify_pts=21)
    width, height = math.ceil((x1 - x0) / resolution[0]), math.ceil((y1 - y0) / resolution[1])
    return from_origin(x0, y1, *resolution), width, height


def pixel_centres_in(crs: str, grid: Affine, width: int, height: int) -> tuple[Array, Array]:
    """Lambert-93 ``(x, y)`` of every pixel centre of a grid in ``crs``, as (height, width) arrays."""
    rows, cols = np.mgrid[0:height, 0:width] + 0.5
    xs, ys = grid @ (cols.ravel(), rows.ravel())
    lx, ly = transform(crs, "EPSG:2154", np.asarray(xs).tolist(), np.asarray(ys).tolist())
    return np.reshape(lx, (height, width)), np.reshape(ly, (height, width))


def write_cog(
    path: Path,
    data: Array,
    crs: str | None,
    grid: Affine,
    alpha: bool = False,
    names: tuple[str, ...] = (),
    **profile: object,
) -> Path:
    """A COG of ``data``; ``alpha``: its last band is an alpha band; ``names``: band descriptions."""
    count, height, width = data.shape
    meta = {"driver": "COG", "width": width, "height": height, "count": count, "dtype": data.dtype.name}
    with rasterio.open(path, "w", **meta, crs=crs, transform=grid, BLOCKSIZE=256, **profile) as dst:
        dst.write(data)
        if names:
            dst.descriptions = names
        if alpha:
            dst.colorinterp = [ColorInterp.gray] + [ColorInterp.undefined] * (count - 2) + [ColorInterp.alpha]
    return path


@pytest.fixture(scope="module")
def tile_probabilities(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """uint8 COG in EPSG:3857, bands background/2, zone_industrielle/2, building (of BUILDING), alpha."""
    grid, width, height = source_grid("EPSG:3857", (0.5, 0.5), margin=10.0)
    lx, ly = pixel_centres_in("EPSG:3857", grid, width, height)
    col = np.clip(((lx - LAMBERT93_20CM.c) // TILE_M).astype(int), 0, 3)
    row = np.clip(((LAMBERT93_20CM.f - ly) // TILE_M).astype(int), 0, 1)
    building = BUILDING[row, col]
    half_rest = np.rint((1 - building) / 2 * 255)
    alpha = np.where(lx < HIDDEN_EAST_OF, 255, 0)
    data = np.stack([half_rest, half_rest, np.rint(building * 255), alpha]).astype(np.uint8)
    path = tmp_path_factory.mktemp("proba") / "cosia_like.tif"
    write_cog(path, data, "EPSG:3857", grid, alpha=True)
    with rasterio.open(path) as src:
        assert src.colorinterp[-1] == ColorInterp.alpha
    return path


TEXTURE_RES = (0.000007, 0.0000045)  # degrees: about 0.5 m on the ground at this latitude


@pytest.fixture(scope="module")
def texture(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Array, Affine]:
    """float32 COG in EPSG:4326: band 1 building (random per pixel), band 2 background; a NaN hole.

    The bands are named in the file (descriptions), so the import needs no class names.
    """
    grid, width, height = source_grid("EPSG:4326", TEXTURE_RES, margin=5.0)
    building = np.random.default_rng(11).uniform(0.1, 0.9, (height, width)).astype(np.float32)
    building[height // 3 : height // 3 + 12, width // 5 : width // 5 + 30] = np.nan  # nodata in tile (0, 0)
    data = np.stack([building, 1 - building])
    path = tmp_path_factory.mktemp("proba") / "texture.tif"
    write_cog(path, data, "EPSG:4326", grid, names=("building", "background"), nodata=float("nan"))
    return path, building, grid


def bilinear(values: Array, cols: Array, rows: Array) -> Array:
    """Bilinear interpolation of ``values`` at continuous pixel coordinates (pixel centres at +0.5)."""
    u, v = cols - 0.5, rows - 0.5
    c0, r0 = np.floor(u).astype(int), np.floor(v).astype(int)
    fu, fv = u - c0, v - r0
    top = values[r0, c0] * (1 - fu) + values[r0, c0 + 1] * fu
    bottom = values[r0 + 1, c0] * (1 - fu) + values[r0 + 1, c0 + 1] * fu
    result: Array = top * (1 - fv) + bottom * fv
    return result


def expected_building(tile: TileRecord, values: Array, grid: Affine, shift: int = 0) -> Array:
    """The building probability of each tile pixel, interpolated here from the source (NaN: no data)."""
    rows, cols = np.mgrid[0 : tile.grid.height, 0 : tile.grid.width] + 0.5
    world = tile.grid.pixel_to_world(np.column_stack([cols.ravel() + shift, rows.ravel()]))
    lon, lat = transform("EPSG:2154", "EPSG:4326", world[:, 0].tolist(), world[:, 1].tolist())
    src_cols, src_rows = ~grid @ (np.asarray(lon), np.asarray(lat))
    return bilinear(values, src_cols, src_rows).reshape(tile.grid.height, tile.grid.width)


# the queue ---------------------------------------------------------------------------------------


def expected_queue(scene: ImportedScene) -> list[int]:
    """Task ids: the covered tiles, least confident first, then the hidden ones (no prediction) by id."""
    tiles = by_place(scene)
    covered = sorted(((r, c) for r in range(2) for c in range(3)), key=lambda p: confidence(p))
    hidden = sorted(int(tiles[(r, 3)].task_id or 0) for r in range(2))
    return [int(tiles[p].task_id or 0) for p in covered] + hidden


@pytest.fixture(scope="module")
def imported(
    scene: ImportedScene, tile_probabilities: Path, label_studio: LabelStudioServer
) -> ProbabilityImportReport:
    options = ProbabilityImport(tile_probabilities, ("background", "zone_industrielle", "building"))
    return import_probabilities(scene.config, label_studio.client(), options)


def test_the_import_orders_the_queue_least_confident_tile_first(
    scene: ImportedScene, imported: ProbabilityImportReport, client: LabelStudioClient
) -> None:
    covered = sorted(((r, c) for r in range(2) for c in range(3)), key=lambda p: confidence(p))
    project_id = scene.report.project_id
    queue = client.queue(project_id)
    assert [q.task_id for q in queue] == expected_queue(scene)
    assert [q.score for q in queue[:6]] == pytest.approx([confidence(p) for p in covered], abs=0.03)
    assert [q.score for q in queue[6:]] == [None, None]  # no coverage: no prediction, served last
    assert client.project(project_id)["model_version"] == imported.version == "import-cosia_like"
    assert imported.queue_taken
    assert [q.task_id for q in imported.queue_head] == [q.task_id for q in queue[:5]]
    assert (imported.tiles, imported.resampled, imported.uncovered, imported.pushed) == (8, 6, 2, 6)
    assert imported.notes == [
        "not classes of the project, summed into background: zone_industrielle",
        "no band for water: probability 0 everywhere",
    ]


def test_the_pre_annotations_draw_the_likely_buildings(
    scene: ImportedScene, imported: ProbabilityImportReport, client: LabelStudioClient
) -> None:
    tiles = by_place(scene)
    for place in [(0, 1), (0, 2)]:  # building more likely than background: drawn
        (pushed,) = client.predictions(int(tiles[place].task_id or 0))
        assert pushed["model_version"] == imported.version
        assert {label for r in pushed["result"] for label in r["value"].get("brushlabels", [])
                + r["value"].get("polygonlabels", [])} == {"building"}  # fmt: skip
    (unsure,) = client.predictions(int(tiles[(1, 1)].task_id or 0))  # 0.7 building: drawn too
    assert unsure["result"]


def test_stored_probabilities_follow_the_tiles_and_the_alpha_band(
    scene: ImportedScene, imported: ProbabilityImportReport
) -> None:
    tiles = by_place(scene)
    store = PredictionStore(scene.config.predictions_dir, imported.version)
    inner = (slice(8, -8), slice(8, -8))  # away from the neighbours' bilinear blend
    for row, col in [(0, 0), (0, 1), (1, 0), (1, 1)]:
        stored = store.load(tiles[(row, col)].id)
        assert stored.valid.all()
        assert np.abs(stored.proba[1][inner] / 255 - BUILDING[row, col]).max() <= 1.5 / 255
        assert np.abs(stored.proba[0][inner] / 255 - (1 - BUILDING[row, col])).max() <= 1.5 / 255
        assert not stored.proba[2].any()  # water: no band
        assert np.abs(stored.proba.astype(int).sum(axis=0) - 255).max() <= 2  # renormalised
    for row in range(2):
        assert not store.has(tiles[(row, 3)].id)
        edge = store.load(tiles[(row, 2)].id).valid  # hidden east of HIDDEN_EAST_OF: 10 px before its end
        assert edge[:, :240].all()
        assert not edge[:, 248:].any()
        ends = edge.sum(axis=1)
        assert (edge == (np.arange(256) < ends[:, None])).all()  # each row: valid up to the cut, then not


def test_a_rerun_replaces_the_predictions_and_resumes_the_tiles(
    scene: ImportedScene,
    imported: ProbabilityImportReport,
    tile_probabilities: Path,
    client: LabelStudioClient,
    label_studio: LabelStudioServer,
    tmp_path: Path,
) -> None:
    tiles = by_place(scene)
    store = PredictionStore(scene.config.predictions_dir, imported.version)
    store.path(tiles[(1, 1)].id).unlink()  # as if the first run had been stopped before this tile
    config = config_toml(scene.config, tmp_path)
    args = ["--config", str(config), "import-predictions", str(tile_probabilities), "--classes",
            "background, zone_industrielle, building"]  # fmt: skip
    result = CliRunner().invoke(cli, args, env={"GEOLABEL_LABEL_STUDIO_TOKEN": label_studio.token})
    assert result.exit_code == 0, result.output
    # uncovered tiles are tried again
    assert "import-cosia_like: 1 tiles resampled, 5 already stored, 2 not covered, of 8" in result.output
    assert "6 predictions pushed (6 replaced)" in result.output
    for place in [(r, c) for r in range(2) for c in range(3)]:
        versions = [p["model_version"] for p in client.predictions(int(tiles[place].task_id or 0))]
        assert versions == [imported.version]
    assert [q.task_id for q in client.queue(scene.report.project_id)] == expected_queue(scene)


# geometry ----------------------------------------------------------------------------------------


def test_stored_probabilities_equal_bilinear_interpolation_of_another_crs(
    scene: ImportedScene, texture: tuple[Path, Array, Affine]
) -> None:
    path, building, grid = texture
    report = resample_probabilities(scene.config, ProbabilityImport(path, version="texture"))
    assert (report.resampled, report.uncovered, report.notes) == (8, 0, ["no band for water: probability 0 "
                                                                          "everywhere"])  # fmt: skip
    store = PredictionStore(scene.config.predictions_dir, "texture")
    for place in [(0, 0), (1, 2), (0, 3)]:
        tile = by_place(scene)[place]
        stored = store.load(tile.id)
        expected = expected_building(tile, building, grid)
        known = np.isfinite(expected)
        assert (~known).any() == (place == (0, 0))  # the hole lies in tile (0, 0)
        assert stored.valid[known].all()
        error = np.abs(stored.proba[1][known] / 255 - expected[known])
        assert error.max() <= 0.6 / 255
        assert np.abs(stored.proba[0][known] / 255 - (1 - expected[known])).max() <= 0.6 / 255
        shifted = expected_building(tile, building, grid, shift=1)  # one tile pixel east: must not match
        both = known & np.isfinite(shifted)
        assert np.abs(stored.proba[1][both] / 255 - shifted[both]).mean() > 10 / 255  # far above 0.6 / 255
    hole = store.load(by_place(scene)[(0, 0)].id).valid
    assert 0 < (~hole).sum() < 0.05 * hole.size  # the NaN hole is not valid, the rest is


# checks ------------------------------------------------------------------------------------------


def small(path: Path, data: Array, crs: str | None = "EPSG:2154") -> Path:
    """A raster over the project's first tile, in Lambert-93 at 1 m."""
    return write_cog(path, data, crs, Affine(1.0, 0.0, LAMBERT93_20CM.c, 0.0, -1.0, LAMBERT93_20CM.f))


@pytest.mark.parametrize(
    ("data", "classes", "crs", "message"),
    [
        (np.zeros((2, 60, 60), np.uint8), ("background", "building", "water"), "EPSG:2154",
         r"has 2 probability bands but 3 class names were given"),
        (np.zeros((2, 60, 60), np.uint8), ("forest", "road"), "EPSG:2154",
         r"no band of .* is a class of the project \(building, water\)"),
        (np.zeros((2, 60, 60), np.uint8), ("building", "building"), "EPSG:2154", r"given twice: building"),
        (np.zeros((2, 60, 60), np.uint16), ("background", "building"), "EPSG:2154",
         r"holds uint16 bands; probabilities are read from uint8 \(0-255\) or float"),
        (np.zeros((2, 60, 60), np.uint8), ("background", "building"), None, r"has no CRS"),
        (np.zeros((2, 60, 60), np.uint8), (), "EPSG:2154", r"does not name its bands .* give --classes"),
        (np.full((2, 60, 60), 7.0, np.float32), ("background", "building"), "EPSG:2154",
         r"holds values from 7 to 7; float probabilities must lie in 0..1"),
    ],
)  # fmt: skip
def test_a_raster_that_does_not_fit_is_refused_with_what_to_do(
    scene: ImportedScene,
    tmp_path: Path,
    data: Array,
    classes: tuple[str, ...],
    crs: str | None,
    message: str,
) -> None:
    path = small(tmp_path / "proba.tif", data, crs)
    with pytest.raises(ProbabilityImportError, match=message):
        resample_probabilities(scene.config, ProbabilityImport(path, classes, version="refused"))


def test_a_raster_elsewhere_is_refused(scene: ImportedScene, tmp_path: Path) -> None:
    far = write_cog(tmp_path / "far.tif", np.zeros((2, 60, 60), np.uint8), "EPSG:2154",
                    from_origin(LAMBERT93_20CM.c + 100_000, LAMBERT93_20CM.f, 1.0, 1.0))  # fmt: skip
    with pytest.raises(ProbabilityImportError, match=r"does not overlap any raster of project"):
        resample_probabilities(scene.config, ProbabilityImport(far, ("background", "building")))


def test_a_changed_raster_is_resampled_again(scene: ImportedScene, tmp_path: Path) -> None:
    data = np.stack([np.full((40, 40), 200, np.uint8), np.full((40, 40), 55, np.uint8)])
    path = small(tmp_path / "changing.tif", data)
    options = ProbabilityImport(path, ("background", "building"), version="changing")
    first = resample_probabilities(scene.config, options)
    assert (first.resampled, first.uncovered) == (1, 7)  # 40 m from the corner: the first tile only
    store = PredictionStore(scene.config.predictions_dir, "changing")
    tile = by_place(scene)[(0, 0)]
    assert int(store.load(tile.id).proba[1][10, 10]) == 55
    small(path, data[::-1].copy())  # rewritten: background and building swapped
    second = resample_probabilities(scene.config, options)
    assert second.resampled == 1
    assert second.notes[-1].endswith("every tile is resampled again")
    assert int(store.load(tile.id).proba[1][10, 10]) == 200
    third = resample_probabilities(scene.config, ProbabilityImport(path, ("building", "background"),
                                                                   version="changing"))  # fmt: skip
    assert third.resampled == 1
    assert int(store.load(tile.id).proba[1][10, 10]) == 55


def test_names_and_versions(scene: ImportedScene, tmp_path: Path) -> None:
    assert split_class_names(" background, building ,water") == ("background", "building", "water")
    with pytest.raises(ProbabilityImportError, match="empty name"):
        split_class_names("background,,building")
    assert default_version(Path("/data/CoSIA 2023 (D075).tif")) == "import-CoSIA-2023-D075"
    path = small(tmp_path / "p.tif", np.zeros((2, 60, 60), np.uint8))
    with pytest.raises(ProbabilityImportError, match="is not a valid name"):
        resample_probabilities(scene.config, ProbabilityImport(path, ("background", "building"), "a/b"))
    with pytest.raises(ProbabilityImportError, match="could be, the name of a model version"):
        resample_probabilities(
            scene.config, ProbabilityImport(path, ("background", "building"), "v20260101-120000")
        )


def test_after_a_promoted_model_the_import_keeps_out_of_the_queue(
    scene: ImportedScene,
    imported: ProbabilityImportReport,
    texture: tuple[Path, Array, Affine],
    client: LabelStudioClient,
) -> None:
    """A model version promoted (a real version folder and ``ACTIVE``): pre-annotations only."""
    config = scene.config
    models = ModelStore(config.models_dir)
    spec = InputSpec(bands=[1], mean=[0.0], std=[1.0])
    manifest = ModelManifest(
        version="v20260101-120000", created="2026-01-01T12:00:00+00:00", classes=config.classes, input=spec
    )
    models.save(manifest, {})
    models.activate(manifest.version)
    try:
        report = import_probabilities(config, client, ProbabilityImport(texture[0], version="texture-late"))
    finally:
        shutil.rmtree(config.models_dir)
    assert (report.pushed, report.queue_taken) == (8, False)
    assert client.project(scene.report.project_id)["model_version"] == imported.version  # unchanged
    assert "v20260101-120000 was promoted already" in report.notes[-1]
    assert [q.task_id for q in client.queue(scene.report.project_id)] == expected_queue(scene)
    tile = by_place(scene)[(0, 3)]  # not covered by the first import, covered by this one
    assert [p["model_version"] for p in client.predictions(int(tile.task_id or 0))] == ["texture-late"]


def test_pixels_without_image_get_no_imported_prediction(
    label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    image = np.random.default_rng(4).integers(1, 255, (3, 256, 256), dtype=np.uint8)
    image[:, :, 150:] = 0  # no image right of column 150 (nodata 0)
    edge = import_scene(label_studio, tmp_path / "edge.tif", image, "import predictions edge", overlap=0,
                        nodata=0)  # fmt: skip
    data = np.stack([np.full((60, 60), 64), np.full((60, 60), 191)]).astype(np.uint8)  # covers the tile
    path = small(tmp_path / "proba.tif", data)
    report = resample_probabilities(edge.config, ProbabilityImport(path, ("background", "building")))
    assert report.resampled == 1
    (tile,) = edge.tiles
    stored = PredictionStore(edge.config.predictions_dir, report.version).load(tile.id)
    expected = np.zeros((256, 256), bool)
    expected[:, :150] = True
    assert (stored.valid == expected).all()  # the probability raster covers it all; the image does not
    assert (stored.proba[1][expected] == 191).all()
