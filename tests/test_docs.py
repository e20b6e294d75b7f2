"""Docs are part of the product: every command and every config key is in the README."""

from __future__ import annotations

import tomllib
from pathlib import Path

from pydantic import BaseModel

from geolabel.cli import cli
from geolabel.config import DEFAULT_CONFIG, Config

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def config_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, field in model.model_fields.items():
        if field.exclude:
            continue
        key = f"{prefix}{field.alias or name}"
        annotation = field.annotation
        inner = getattr(annotation, "__args__", (annotation,))[0] if key == "classes" else annotation
        if isinstance(inner, type) and issubclass(inner, BaseModel):
            keys.extend(config_keys(inner, f"{key}."))
        else:
            keys.append(key)
    return keys


def test_every_command_is_documented() -> None:
    for name, command in cli.commands.items():
        assert f"`geolabel {name}" in README, f"command {name!r} missing from README"
        for param in command.params:
            for opt in getattr(param, "opts", []):
                if opt.startswith("--") and opt != "--help":
                    assert opt in README, f"option {opt} of {name!r} missing from README"


def test_every_config_key_is_documented() -> None:
    keys = config_keys(Config)
    assert "tiling.overlap" in keys
    assert "classes.color" in keys
    for key in keys:
        assert f"`{key}`" in README, f"config key {key!r} missing from README"


def test_every_config_key_is_in_the_init_template() -> None:
    template = tomllib.loads(DEFAULT_CONFIG)
    for key in config_keys(Config):
        section, _, name = key.partition(".")
        if section == "classes":
            assert name in template["classes"][0]
        else:
            assert name in template[section], f"{key} missing from the geolabel init template"


def test_every_geolabel_module_sits_in_a_layer_of_the_import_contract() -> None:
    """import-linter checks only the modules its layers name: every geolabel module must be in one."""
    root = Path(__file__).resolve().parents[1]
    contract = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["importlinter"]["contracts"][0]
    named = {m.strip() for layer in contract["layers"] for m in layer.replace("|", ":").split(":")}
    modules = {f"geolabel.{p.stem}" for p in (root / "geolabel").glob("*.py") if p.stem != "__init__"}
    assert modules - named == set()
    assert {"georef", "importers", "ml_backend", "trainer", "exporters"} <= named
    assert "import-linter" in README
