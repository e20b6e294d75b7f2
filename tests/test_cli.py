"""The geolabel command line, end to end (with the real Label Studio where it needs one)."""

from __future__ import annotations

import itertools
import stat
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

from geolabel.cli import cli
from geolabel.config import DEFAULT_CONFIG, Config, load_config
from geolabel.errors import ConfigError
from tests.conftest import GeoTiffFactory, LabelStudioServer, free_port

_names = itertools.count()


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli, list(args), env=env, catch_exceptions=False)
    return result.exit_code, result.output


def write_config(folder: Path, url: str, data_dir: Path, **overrides: str) -> Path:
    text = DEFAULT_CONFIG.replace('url = "http://127.0.0.1:8080"', f'url = "{url}"')
    text = text.replace('data_dir = "geolabel-data"', f'data_dir = "{data_dir}"')
    text = text.replace('name = "geolabel"', f'name = "cli project {next(_names)}"', 1)
    text = text.replace("size = 512", "size = 256")
    for old, new in overrides.items():
        text = text.replace(old, new)
    path = folder / "geolabel.toml"
    path.write_text(text)
    return path


def test_init_writes_a_valid_commented_config(tmp_path: Path) -> None:
    path = tmp_path / "geolabel.toml"
    code, output = run("--config", str(path), "init")
    assert code == 0, output
    config = load_config(path)
    assert config.tiling.size == 512
    assert [c.name for c in config.classes][:2] == ["building", "road"]
    assert path.read_text().count("#") > 20
    code, output = run("--config", str(path), "init")
    assert code == 2
    assert "already exists" in output


def test_default_config_equals_the_model_defaults() -> None:
    parsed = Config.model_validate({**tomllib.loads(DEFAULT_CONFIG), "base_dir": Path(".")})
    defaults = Config.model_validate({"classes": tomllib.loads(DEFAULT_CONFIG)["classes"]})
    assert parsed.model_dump(exclude={"base_dir"}) == defaults.model_dump(exclude={"base_dir"})


@pytest.mark.parametrize(
    ("old", "new", "message"),
    [
        ("overlap = 64", "overlap = 600", "tiling: overlap (600) must be smaller than size (512)"),
        ("[tiling]", "[tilling]", "tilling: unknown key"),
        (
            'stretch = "auto"',
            'stretch = "log"',
            "display.stretch: Input should be 'auto', 'none' or 'percentile'",
        ),
        ('color = "#e31a1c"', 'color = "red"', "classes.0.color: String should match pattern"),
        ("id = 2", "id = 1", "classes: Value error, class ids must be unique; repeated: 1"),
        ("bands = []", "bands = [1, 2]", "display.bands: give no band"),
        ("workers = 2", "workers = 0", "import.workers: Input should be greater than or equal to 1"),
    ],
)
def test_invalid_config_names_the_key(tmp_path: Path, old: str, new: str, message: str) -> None:
    path = tmp_path / "geolabel.toml"
    path.write_text(DEFAULT_CONFIG.replace(old, new, 1))
    with pytest.raises(ConfigError) as excinfo:
        load_config(path)
    assert message.replace("Value error, ", "") in str(excinfo.value)
    code, output = run("--config", str(path), "tiles")
    assert code == 2
    assert "Traceback" not in output


def test_missing_or_broken_config_file(tmp_path: Path) -> None:
    code, output = run("--config", str(tmp_path / "none.toml"), "tiles")
    assert code == 2
    assert "geolabel init" in output
    broken = tmp_path / "broken.toml"
    broken.write_text("[tiling\nsize = 3")
    code, output = run("--config", str(broken), "tiles")
    assert code == 2
    assert "not valid TOML" in output


def test_unreachable_label_studio_is_exit_code_4(make_geotiff: GeoTiffFactory, tmp_path: Path) -> None:
    config = write_config(tmp_path, f"http://127.0.0.1:{free_port()}", tmp_path / "data")
    code, output = run(
        "--config", str(config), "import", str(make_geotiff()), env={"GEOLABEL_LABEL_STUDIO_TOKEN": "abc123"}
    )
    assert code == 4
    assert "cannot reach Label Studio" in output
    assert "abc123" not in output


@pytest.mark.labelstudio
def test_import_then_tiles(
    make_geotiff: GeoTiffFactory, tmp_path: Path, label_studio: LabelStudioServer, ls_data_dir: Path
) -> None:
    config = write_config(tmp_path, label_studio.url, ls_data_dir)
    ls_data_dir.chmod(0o755)  # readable by every local user, as older geolabel versions left it
    env = {"GEOLABEL_LABEL_STUDIO_TOKEN": label_studio.token}
    good = make_geotiff("good.tif", width=400, height=300)
    bad = tmp_path / "bad.tif"
    bad.write_text("not a raster")
    code, output = run("--config", str(config), "import", str(good), str(bad), env=env)
    assert code == 3, output
    assert "not a raster GDAL can read" in output
    assert "good.tif: 4 tiles" in output
    assert label_studio.token not in output
    assert stat.S_IMODE(ls_data_dir.stat().st_mode) == 0o700  # the import made the data folder private

    code, output = run("--config", str(config), "import", str(good), "--project", "other name", env=env)
    assert code == 3, output
    assert "already imported into Label Studio project" in output
    copy = good.with_name("good copy.tif")
    copy.write_bytes(good.read_bytes())
    code, output = run("--config", str(config), "import", str(copy), "--project", "other name", env=env)
    assert code == 0, output
    assert "4 tasks created" in output
    code, output = run("--config", str(config), "tiles", env=env)
    assert code == 0, output
    assert "good.tif" in output
    assert "EPSG:2154" in output
    assert "0.2 m" in output


@pytest.mark.labelstudio
def test_demo_imports_the_sample_into_a_running_server(
    label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    """`geolabel demo` against an already running local server (same credentials): imports and returns."""
    config = write_config(tmp_path, label_studio.url, label_studio.document_root)
    code, output = run("--config", str(config), "demo")
    assert code == 0, output
    assert "orthophoto_cogeo.tif: 25 tiles" in output
    assert label_studio.url in output
    code, output = run("--config", str(config), "demo")
    assert code == 0, output
    assert "0 rendered now, 0 tasks created" in output


def test_tiles_without_registry_or_token(tmp_path: Path, make_geotiff: GeoTiffFactory) -> None:
    config = write_config(tmp_path, f"http://127.0.0.1:{free_port()}", tmp_path / "data")
    code, output = run("--config", str(config), "tiles", env={"GEOLABEL_LABEL_STUDIO_TOKEN": ""})
    assert code == 0
    assert "no raster imported yet" in output
    assert not (tmp_path / "data").exists()


def test_unreadable_inputs_are_clear_messages(tmp_path: Path) -> None:
    latin1 = tmp_path / "latin1.toml"
    latin1.write_bytes(DEFAULT_CONFIG.replace("geolabel", "g\xe9olabel").encode("latin-1"))
    code, output = run("--config", str(latin1), "tiles")
    assert code == 2
    assert "not UTF-8" in output
    config = write_config(tmp_path, f"http://127.0.0.1:{free_port()}", tmp_path / "data")
    folder = tmp_path / "rasters"
    folder.mkdir()
    code, output = run(
        "--config", str(config), "import", str(folder), env={"GEOLABEL_LABEL_STUDIO_TOKEN": "t"}
    )
    assert code == 4  # Label Studio is checked first
    broken = tmp_path / "data" / "label-studio"
    broken.mkdir(parents=True)
    (broken / "credentials.json").write_text("{not json")
    code, output = run(
        "--config", str(config), "import", str(folder), env={"GEOLABEL_LABEL_STUDIO_TOKEN": ""}
    )
    assert code == 5
    assert "credentials.json is damaged" in output
    assert "Traceback" not in output
