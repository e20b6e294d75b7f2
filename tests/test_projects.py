"""Projects of one data folder are isolated; failed rounds change nothing; rotated rasters; seeded rounds."""

from __future__ import annotations

import json
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import rasterio
import torch
from affine import Affine
from click.testing import CliRunner
from pydantic import SecretStr

from exporters.tilemap import round_view
from geolabel.cli import cli
from geolabel.config import TOKEN_ENV, Config, parse_config, project_slug
from geolabel.errors import ConfigError, LabelStudioUnreachableError
from geolabel.lsclient import LabelStudioClient
from georef.labelstudio import brush_result
from georef.registry import TileRecord, TileRegistry
from importers.pipeline import ImportOptions, import_raster
from ml_backend.app import create_app
from tests.conftest import CLASSES, LAMBERT93_20CM, LabelStudioServer, config_toml, import_scene
from trainer.dashboard import collect
from trainer.errors import TrainerError
from trainer.legacy import adopt_legacy_stores
from trainer.loop import Retry, _footprint, run_round
from trainer.predictions import PredictionStore
from trainer.rounds import SCHEMA, RoundStatus, RoundStore
from trainer.versions import ModelStore

pytestmark = pytest.mark.labelstudio

TRAINER = {"epochs": 2, "batch_size": 4, "validation_share": 0.25, "block_tiles": 1, "batch": 2, "crop": 128}


def scene(bands: int = 3, height: int = 512, width: int = 512) -> tuple[np.ndarray, np.ndarray]:
    """Bright roofs (building) on dark noisy ground, ``bands`` bands."""
    rng = np.random.default_rng(7)
    image = rng.normal(60, 8, (bands, height, width))
    truth = np.zeros((height, width), dtype=np.uint8)
    for row in range(20, height - 24, 64):
        for col in range(20, width - 30, 72):
            truth[row : row + 24, col : col + 30] = 1
    image[:, truth == 1] += 150
    return np.clip(image, 0, 255).astype(np.uint8), truth


def label(client: LabelStudioClient, tiles: list[TileRecord], truth: np.ndarray) -> None:
    """Submit the truth of each tile as a building brush."""
    for tile in tiles:
        w = tile.window
        answer = truth[w.row_off : w.row_off + w.height, w.col_off : w.col_off + w.width]
        region = brush_result(answer == 1, "building", "label_brush", "image")
        client.create_annotation(int(tile.task_id or 0), [region])


def write_raster(path: Path, image: np.ndarray, transform: Affine = LAMBERT93_20CM) -> Path:
    count, height, width = image.shape
    with rasterio.open(path, "w", driver="GTiff", width=width, height=height, count=count, dtype="uint8",
                       crs="EPSG:2154", transform=transform) as dst:  # fmt: skip
        dst.write(image)
    return path


def project_config(label_studio: LabelStudioServer, data_dir: Path, name: str) -> Config:
    return parse_config(
        {
            "project": {"name": name},
            "classes": [{"id": c.id, "name": c.name, "color": c.color} for c in CLASSES],
            "label_studio": {"url": label_studio.url},
            "paths": {"data_dir": str(data_dir)},
            "trainer": TRAINER,
        },
        base_dir=data_dir,
    )


def health_version(config: Config) -> str | None:
    app = create_app(config.model_copy(update={"ml_backend": config.ml_backend.model_copy(
        update={"password": SecretStr("health-test")})}))  # fmt: skip
    body = app.test_client().get("/health").get_json()
    return body["model"]["active_version"]  # type: ignore[no-any-return]


# the config -------------------------------------------------------------------------------------


def test_every_store_of_a_project_lives_in_its_own_folder(tmp_path: Path) -> None:
    config = parse_config({"classes": [{"id": 1, "name": "building", "color": "#ff0000"}]}, tmp_path)
    other = config.for_project("Other Project")
    assert other.project.name == "Other Project"
    assert other.data_dir == config.data_dir
    assert other.registry_path == config.registry_path
    assert config.models_dir.parent == config.project_dir != other.project_dir == other.models_dir.parent
    assert other.predictions_dir.parent == other.trainer_dir.parent == other.project_dir
    assert project_slug("geolabel") == "geolabel"
    assert project_slug("Other Project") != project_slug("other-project") != project_slug("other project")
    assert config.for_project(None) is config
    with pytest.raises(ConfigError, match="--project 'x'"):
        config.for_project("x")


# two projects in one data folder ----------------------------------------------------------------


@dataclass
class TwoProjects:
    data_dir: Path
    a: Config
    b: Config
    a_tiles: list[TileRecord]
    b_tiles: list[TileRecord]
    a_truth: np.ndarray
    b_truth: np.ndarray


@pytest.fixture(scope="module")
def two(label_studio: LabelStudioServer, tmp_path_factory: pytest.TempPathFactory) -> TwoProjects:
    """One data folder: project A (a 3-band raster, 4 of its 6 tiles labelled) and B (a 1-band raster)."""
    folder = tmp_path_factory.mktemp("two-projects")
    data_dir = label_studio.document_root / "projects" / "two_projects"
    a_image, a_truth = scene(3, 512, 768)
    b_image, b_truth = scene(1, 256, 512)
    b_transform = Affine(0.5, 0.0, 700000.0, 0.0, -0.5, 6600000.0)
    tiles = {}
    with TileRegistry(data_dir / "registry.sqlite") as registry:
        for title, image, transform in (
            ("project A", a_image, LAMBERT93_20CM),
            ("project B", b_image, b_transform),
        ):
            raster = write_raster(folder / f"{title[-1]}.tif", image, transform)
            options = ImportOptions(title, CLASSES, data_dir, label_studio.document_root, tile_size=256,
                                    overlap=0, workers=1)  # fmt: skip
            report = import_raster(raster, options, registry, label_studio.client())
            tiles[title] = sorted(
                (t for t in registry.tiles() if registry.raster(t.raster_id).project_id == report.project_id),
                key=lambda t: t.task_id or 0,
            )
    a, b = (project_config(label_studio, data_dir, name) for name in ("project A", "project B"))
    label(label_studio.client(), tiles["project A"][:4], a_truth)
    return TwoProjects(data_dir, a, b, tiles["project A"], tiles["project B"], a_truth, b_truth)


def cli_run(label_studio: LabelStudioServer, path: Path, *args: str) -> str:
    result = CliRunner().invoke(cli, ["--config", str(path), *args], env={TOKEN_ENV: label_studio.token,
                                                                         "COLUMNS": "200"})  # fmt: skip
    assert result.exit_code == 0, result.output
    return result.output


def test_a_round_of_one_project_never_reads_or_scores_another_projects_tiles(
    two: TwoProjects, label_studio: LabelStudioServer
) -> None:
    client = label_studio.client()
    record = run_round(two.a, client, retry=Retry(1, 0.01))  # B's 1-band raster made this fail before
    assert record.status == RoundStatus.PROMOTED, record.error
    assert record.number == 1
    version = str(record.model_version)
    stored = {p.stem for p in PredictionStore(two.a.predictions_dir, version).folder.glob("*.npz")}
    assert stored == {t.id for t in two.a_tiles[4:]}  # A's unlabelled tiles, none of B's
    for tile in two.b_tiles:
        assert client.predictions(int(tile.task_id or 0)) == []
    with RoundStore(two.a.registry_path) as rounds:
        assert set(rounds.tile_states(record.id)) == {t.id for t in two.a_tiles}
    assert ModelStore(two.a.models_dir).active_name() == version
    assert not two.b.models_dir.exists()
    assert not (two.data_dir / "models").exists()
    assert not (two.data_dir / "predictions").exists()


def promoted_version_of_a(two: TwoProjects, label_studio: LabelStudioServer) -> str | None:
    """Project A's active version, after a round if it has none yet (tests may run alone)."""
    if ModelStore(two.a.models_dir).active_name() is None:
        run_round(two.a, label_studio.client(), retry=Retry(1, 0.01))
    return ModelStore(two.a.models_dir).active_name()


def test_a_project_without_a_round_reports_serves_and_exports_no_model(
    two: TwoProjects, label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    active_a = promoted_version_of_a(two, label_studio)
    path = config_toml(
        two.a, tmp_path, "[trainer]\nepochs = 2\nbatch_size = 4\nblock_tiles = 1\ncrop = 128\n\n"
    )
    status_b = cli_run(label_studio, path, "status", "--project", "project B")
    assert "active-learning rounds of project B" in status_b
    assert "Active model version: none yet" in status_b
    assert str(active_a) not in status_b
    assert f"Active model version: {active_a}" in cli_run(label_studio, path, "status")  # default: project A
    assert health_version(two.b) is None
    assert health_version(two.a) == active_a
    assert collect(two.b).active is None
    assert collect(two.b).rounds == []
    assert {t.tile_id for t in collect(two.b).tiles} == {t.id for t in two.b_tiles}
    out = tmp_path / "export-b"
    printed = cli_run(label_studio, path, "export", "--project", "project B", "--out", str(out))
    assert "no model version yet" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["project"] == "project B"
    assert manifest["model_version"] is None
    assert not list(out.glob("predictions*"))
    assert manifest["counts"]["tiles"] == len(two.b_tiles)


def test_round_numbers_start_at_one_in_every_project(
    two: TwoProjects, label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    active_a = promoted_version_of_a(two, label_studio)
    label(label_studio.client(), two.b_tiles[:1], two.b_truth)
    path = config_toml(
        two.a, tmp_path, "[trainer]\nepochs = 2\nbatch_size = 4\nblock_tiles = 1\ncrop = 128\n\n"
    )
    printed = cli_run(label_studio, path, "train", "--now", "--project", "project B")
    assert "project B: round 1:" in printed
    with TileRegistry(two.a.registry_path) as registry, RoundStore(two.a.registry_path) as rounds:
        b_rounds = rounds.rounds(int(registry.project_id("project B") or 0))
    assert [r.number for r in b_rounds] == [1]
    assert ModelStore(two.b.models_dir).active_name() == b_rounds[0].model_version
    assert ModelStore(two.a.models_dir).active_name() == active_a  # A's model untouched
    assert ModelStore(two.b.models_dir).manifest(str(b_rounds[0].model_version)).input.bands == [1]


# legacy stores and rounds -----------------------------------------------------------------------


def test_old_rounds_are_kept_and_numbered_per_project(tmp_path: Path) -> None:
    path = tmp_path / "registry.sqlite"
    conn = sqlite3.connect(path)
    conn.executescript(SCHEMA.replace(",\n    number INTEGER\n", "\n"))  # the table before round numbers
    for project in (5, 7, 5):
        conn.execute(
            "INSERT INTO rounds (project_id, status, trigger, started) VALUES (?, 'kept', 'manual', 'x')",
            (project,),
        )
    conn.commit()
    conn.close()
    with RoundStore(path) as rounds:
        assert [(r.id, r.number) for r in rounds.rounds(5)] == [(1, 1), (3, 2)]
        assert [(r.id, r.number) for r in rounds.rounds(7)] == [(2, 1)]
        assert rounds.get(rounds.start(7, "manual")).number == 2
        assert rounds.get(rounds.start(9, "manual")).number == 1


def test_legacy_stores_go_to_the_only_project_and_stay_put_with_several(
    label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    image, _ = scene(3, 256, 256)
    found = import_scene(label_studio, tmp_path / "one.tif", image, "legacy one", overlap=0)
    config = found.config
    (config.data_dir / "models" / "v1").mkdir(parents=True)
    (config.data_dir / "models" / "ACTIVE").write_text("v1\n")
    (config.data_dir / "predictions" / "v1").mkdir(parents=True)
    notes = adopt_legacy_stores(config)
    assert len(notes) == 2
    assert all("moved" in n for n in notes)
    assert (config.models_dir / "ACTIVE").read_text() == "v1\n"
    assert (config.predictions_dir / "v1").is_dir()
    assert not (config.data_dir / "models").exists()
    assert adopt_legacy_stores(config) == []
    (config.data_dir / "models").mkdir()
    second = ImportOptions("legacy two", CLASSES, config.data_dir, label_studio.document_root, tile_size=256,
                           overlap=0, workers=1)  # fmt: skip
    with TileRegistry(config.registry_path) as registry:
        import_raster(write_raster(tmp_path / "two.tif", image), second, registry, label_studio.client())
    (note,) = adopt_legacy_stores(config.for_project("legacy two"))
    assert "2 projects, so they are left alone" in note
    assert (config.data_dir / "models").is_dir()


# a round failing after training -----------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(label_studio: LabelStudioServer, tmp_path_factory: pytest.TempPathFactory) -> Config:
    """A project with 4 of 6 tiles labelled and one promoted round."""
    image, truth = scene(3, 512, 768)
    found = import_scene(label_studio, tmp_path_factory.mktemp("atomic") / "a.tif", image, "atomic rounds",
                         overlap=0, trainer=TRAINER)  # fmt: skip
    label(label_studio.client(), found.tiles[:4], truth)
    record = run_round(found.config, label_studio.client(), retry=Retry(1, 0.01))
    assert record.status == RoundStatus.PROMOTED, record.error
    return found.config


def push_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    def down(*args: object, **kwargs: object) -> None:
        raise LabelStudioUnreachableError("Label Studio is unreachable (connection refused)")

    monkeypatch.setattr(LabelStudioClient, "import_predictions", down)


def record_fails(monkeypatch: pytest.MonkeyPatch) -> None:
    """The round record cannot be written after Label Studio's model version was set."""

    def locked(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("database is locked")

    monkeypatch.setattr(RoundStore, "set_tile_states", locked)


@pytest.mark.parametrize("failure", [push_fails, record_fails], ids=["push", "record"])
def test_a_round_failing_after_training_changes_nothing_anywhere(
    trained: Config, label_studio: LabelStudioServer, monkeypatch: pytest.MonkeyPatch, failure: object
) -> None:
    client = label_studio.client()
    with TileRegistry(trained.registry_path) as registry:
        project_id = int(registry.project_id(trained.project.name) or 0)
    store = ModelStore(trained.models_dir)
    before = store.active_name()
    assert before is not None
    assert health_version(trained) == before
    assert collect(trained).active is not None
    assert collect(trained).active.version == before
    assert client.project(project_id)["model_version"] == before
    with RoundStore(trained.registry_path) as rounds:
        tile_map = round_view(rounds, project_id)  # what tiles.gpkg says of scores and selections
    monkeypatch.setattr("trainer.loop._not_worse", lambda new, old: True)  # promote: reach every step
    versions_before = store.versions()
    failure(monkeypatch)  # type: ignore[operator]
    with pytest.raises(TrainerError):
        run_round(trained, client, retry=Retry(1, 0.01))
    monkeypatch.undo()
    assert store.active_name() == before
    assert store.versions() == versions_before  # the failed round saved its version, then removed it
    assert health_version(trained) == before
    assert collect(trained).active.version == before  # type: ignore[union-attr]
    assert client.project(project_id)["model_version"] == before
    with RoundStore(trained.registry_path) as rounds:
        last = rounds.rounds(project_id)[-1]
    assert last.status == RoundStatus.FAILED
    with RoundStore(trained.registry_path) as rounds:
        assert round_view(rounds, project_id) == tile_map
    assert collect(trained).last_scored is not None
    assert collect(trained).last_scored.id != last.id


# rotated rasters and the spatial split ----------------------------------------------------------


def rotated(degrees: float) -> Affine:
    return Affine.translation(650000.0, 6860000.0) * Affine.rotation(degrees) * Affine.scale(0.2, -0.2)


@pytest.mark.parametrize("degrees", [30.0, 90.0])
def test_a_tiles_footprint_comes_from_its_corners(degrees: float) -> None:
    from georef.grid import Grid, PixelWindow
    from georef.registry import TileStatus

    transform = rotated(degrees) * Affine.translation(256, 512)
    grid = Grid(256, 256, transform, rasterio.crs.CRS.from_epsg(2154))
    tile = TileRecord("t", 1, 0, 0, PixelWindow(256, 512, 256, 256), grid, None, 1, TileStatus.IMPORTED,
                      "EPSG:2154")  # fmt: skip
    footprint = _footprint(tile)
    corners = [rasterio.transform.xy(transform, r, c, offset="ul") for r, c in ((0, 0), (0, 256), (256, 0))]
    (x0, y0), (x1, y1), (x2, y2) = corners
    assert footprint.side == pytest.approx(256 * 0.2, rel=1e-12)
    judged = max(np.hypot(x1 - x0, y1 - y0), np.hypot(x2 - x0, y2 - y0))  # loses digits to 6.86e6
    assert footprint.side == pytest.approx(judged, abs=1e-8)
    centre = rasterio.transform.xy(transform, 128, 128, offset="ul")
    assert (footprint.x, footprint.y) == pytest.approx(centre, rel=1e-12)


@pytest.mark.parametrize("degrees", [90.0, 30.0])
def test_a_rotated_raster_goes_through_a_round_and_an_export(
    degrees: float, label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    from exporters.project import ExportOptions, export_project

    image, truth = scene(3, 512, 768)
    found = import_scene(label_studio, tmp_path / "rotated.tif", image, f"rotated {degrees:.0f}", overlap=0,
                         transform=rotated(degrees), trainer=TRAINER)  # fmt: skip
    label(label_studio.client(), found.tiles[:4], truth)
    record = run_round(found.config, label_studio.client(), retry=Retry(1, 0.01))
    assert record.status == RoundStatus.PROMOTED, record.error
    assert record.validation_tiles >= 1  # the spatial split made a validation set
    out = tmp_path / "export"
    report = export_project(found.config, label_studio.client(), ExportOptions(out, workers=1))
    assert report.model_version == record.model_version
    with rasterio.open(out / "predictions_argmax.tif") as exported:
        assert exported.transform.almost_equals(rotated(degrees), precision=1e-9)
        assert (exported.width, exported.height) == (768, 512)
    assert report.counts["tiles"] == len(found.tiles)


# seeded rounds ----------------------------------------------------------------------------------


def test_the_same_labels_and_seed_give_the_same_weights(
    label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    image, truth = scene(3, 512, 512)
    weights = []
    for name, elsewhere in (("seeded one", 1), ("seeded two", 2)):
        torch.manual_seed(elsewhere)  # whatever torch drew before, the round seeds its own weights
        found = import_scene(
            label_studio, tmp_path / f"{name[-3:]}.tif", image, name, overlap=0, trainer=TRAINER
        )
        label(label_studio.client(), found.tiles[:3], truth)
        record = run_round(found.config, label_studio.client(), retry=Retry(1, 0.01))
        assert record.status == RoundStatus.PROMOTED, record.error
        weights.append(ModelStore(found.config.models_dir).weights(str(record.model_version)))
    first, second = weights
    assert first.keys() == second.keys()
    assert all(torch.equal(first[k], second[k]) for k in first)
