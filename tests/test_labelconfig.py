"""The labelling page generated from the catalogue: config, instructions, and SAM tools following SAM."""

from __future__ import annotations

import dataclasses
import io
import tomllib
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from rich.console import Console

from geolabel.classes import UNSURE_LABEL, LabelClass
from geolabel.config import DEFAULT_CONFIG, parse_config
from geolabel.local import sync_sam_tools
from geolabel.lsclient import LabelStudioClient
from geolabel.lsmodels import read_schema
from georef.registry import TileRegistry
from importers.labelconfig import (
    SAM_BOX_HEADER,
    SAM_BOX_NAME,
    SAM_POINT_HEADER,
    SAM_POINT_NAME,
    UNSURE_COLOR,
    apply_labelling,
    has_sam_tools,
    instructions,
    label_config,
    project_labelling,
)
from importers.pipeline import ImportOptions, import_raster
from tests.conftest import CLASSES, GeoTiffFactory, LabelStudioServer

DESCRIBED = [
    LabelClass(id=1, name="building", color="#e31a1c", description="roofs, <sheds> & greenhouses"),
    LabelClass(id=2, name="water", color="#1f78b4"),
]
SAM_TAGS = ("KeyPointLabels", "RectangleLabels")


def controls(config: str) -> dict[str, ET.Element]:
    return {c.get("name", ""): c for c in ET.fromstring(config).iter() if c.get("toName")}


def values(control: ET.Element) -> list[str]:
    return [label.get("value", "") for label in control]


@pytest.mark.parametrize("sam", [False, True])
def test_brush_and_polygon_carry_the_classes_and_unsure_sam_tools_only_when_on(sam: bool) -> None:
    config = label_config(DESCRIBED, sam=sam)
    schema = read_schema(config)  # what the ML backend reads
    names = ["building", "water", UNSURE_LABEL]
    assert schema.labels == tuple(names)
    tags = controls(config)
    assert values(tags["label_polygon"]) == names
    assert has_sam_tools(config) is sam
    assert bool(schema.prompts) is sam
    assert [c.tag for c in tags.values() if c.tag in SAM_TAGS] == (list(SAM_TAGS) if sam else [])
    if sam:
        for name in (SAM_POINT_NAME, SAM_BOX_NAME):  # SAM answers masks of classes, never of unsure
            assert values(tags[name]) == ["building", "water"]
            assert tags[name].get("smartOnly") == "true"


def test_each_sam_row_has_its_own_heading_just_above_it() -> None:
    column = ET.fromstring(label_config(CLASSES, sam=True))[1]
    children = list(column)
    for name, heading in ((SAM_POINT_NAME, SAM_POINT_HEADER), (SAM_BOX_NAME, SAM_BOX_HEADER)):
        index = next(i for i, c in enumerate(children) if c.get("name") == name)
        assert children[index - 1].tag == "Header"
        assert children[index - 1].get("value") == heading


def test_the_image_and_the_label_controls_are_two_columns_of_one_flex_row() -> None:
    root = ET.fromstring(label_config(CLASSES))
    assert "display: flex" in root.get("style", "")
    image_column, control_column = list(root)
    assert [c.tag for c in image_column] == ["Image"]
    assert {c.tag for c in control_column} == {"Header", "BrushLabels", "PolygonLabels"}


def test_unsure_has_a_neutral_colour_no_template_class_uses() -> None:
    colours = {c.color for c in template_classes()}
    assert UNSURE_COLOR not in colours
    red, green, blue = (int(UNSURE_COLOR[i : i + 2], 16) for i in (1, 3, 5))
    assert red == green == blue  # grey
    unsure = [label for label in ET.fromstring(label_config(CLASSES)).iter("Label")][-1]
    assert (unsure.get("value"), unsure.get("background")) == (UNSURE_LABEL, UNSURE_COLOR)


def test_descriptions_are_escaped_in_the_instructions_and_hints() -> None:
    text = instructions(DESCRIBED, sam=False)
    assert "roofs, &lt;sheds&gt; &amp; greenhouses" in text
    assert "<sheds>" not in text
    hints = {
        label.get("value"): label.get("hint")
        for label in ET.fromstring(label_config(DESCRIBED)).iter("Label")
    }
    assert hints["building"] == "roofs, <sheds> & greenhouses"  # XML-escaped by the serialiser
    assert hints["water"] is None


def test_instructions_say_what_undrawn_pixels_and_unsure_mean_and_explain_sam_only_when_on() -> None:
    exhaustive = instructions(DESCRIBED, sam=False)
    assert "background" in exhaustive
    assert "label every object of every class" in exhaustive
    assert f"<b>{UNSURE_LABEL}</b>: pixels you cannot decide" in exhaustive
    assert "left out of training" in exhaustive
    assert "Auto-Annotation" not in exhaustive
    sparse = instructions(DESCRIBED, sam=False, sparse=True)
    assert "sparse" in sparse
    assert "label every object" not in sparse
    assert "are unknown" in sparse
    with_sam = instructions(DESCRIBED, sam=True)
    assert "Auto-Annotation" in with_sam
    assert "click a point" in with_sam
    assert "drag a box" in with_sam


def test_one_function_decides_config_and_instructions() -> None:
    on = project_labelling(DESCRIBED, sam=True, sparse=True)
    assert on.config == label_config(DESCRIBED, sam=True)
    assert on.instructions == instructions(DESCRIBED, sam=True, sparse=True)
    off = dataclasses.replace(on, sam=False)
    assert not has_sam_tools(off.config)
    assert has_sam_tools(on.config)
    assert not has_sam_tools("not xml <")


def test_a_class_description_is_optional_and_never_changes_the_class() -> None:
    template = template_classes()
    assert template[0].description.startswith("roofs of buildings")
    plain = parse_config({"classes": [{"id": 1, "name": "building", "color": "#E31A1C"}]}, base_dir=Path("."))
    assert plain.classes[0].description == ""
    assert plain.classes == template[:1]  # a model trained before a description was added still fits
    assert len({plain.classes[0], template[0]}) == 1


def template_classes() -> list[LabelClass]:
    """The classes of the ``geolabel init`` template."""
    return [LabelClass.model_validate(c) for c in tomllib.loads(DEFAULT_CONFIG)["classes"]]


# through the real Label Studio ------------------------------------------------------------------


@pytest.mark.labelstudio
def test_new_project_shows_the_instructions_and_sam_tools_follow_the_backend(
    make_geotiff: GeoTiffFactory,
    options: ImportOptions,
    registry: TileRegistry,
    client: LabelStudioClient,
    label_studio: LabelStudioServer,
) -> None:
    options = dataclasses.replace(options, classes=DESCRIBED)
    report = import_raster(make_geotiff(width=256, height=256), options, registry, client)
    project = client.project(report.project_id)
    assert project["show_instruction"] is True
    assert "roofs, &lt;sheds&gt; &amp; greenhouses" in project["expert_instruction"]
    assert not has_sam_tools(project["label_config"])  # SAM is off until a backend says it is on
    config = parse_config(
        {
            "project": {"name": options.project},
            "classes": [c.model_dump() for c in DESCRIBED],
            "trainer": {"labelling": "sparse"},
        },
        base_dir=options.data_dir,
    )
    console = Console(file=io.StringIO(), width=200)

    assert sync_sam_tools(config, client, report.project_id, True, console)
    project = client.project(report.project_id)
    assert project["label_config"] == project_labelling(DESCRIBED, sam=True).config
    assert "Auto-Annotation" in project["expert_instruction"]
    assert "sparse" in project["expert_instruction"]

    assert sync_sam_tools(config, client, report.project_id, False, console)
    project = client.project(report.project_id)
    assert not has_sam_tools(project["label_config"])
    assert "Auto-Annotation" not in project["expert_instruction"]
    assert "without SAM tools" in console.file.getvalue()  # type: ignore[attr-defined]


@pytest.mark.labelstudio
def test_a_refused_config_change_keeps_the_old_config_with_a_warning(
    make_geotiff: GeoTiffFactory,
    options: ImportOptions,
    registry: TileRegistry,
    client: LabelStudioClient,
) -> None:
    report = import_raster(make_geotiff(width=256, height=256), options, registry, client)
    with_sam = project_labelling(CLASSES, sam=True)
    assert apply_labelling(client, report.project_id, with_sam) is None
    tile = registry.tiles()[0]
    point = {  # a SAM prompt saved in an annotation (smartOnly prompts normally are not)
        "from_name": SAM_POINT_NAME,
        "to_name": "image",
        "type": "keypointlabels",
        "original_width": 256,
        "original_height": 256,
        "value": {"x": 50.0, "y": 50.0, "width": 1.0, "keypointlabels": ["building"]},
    }
    client.create_annotation(tile.task_id or 0, [point])

    warning = apply_labelling(client, report.project_id, project_labelling(CLASSES, sam=False))
    assert warning is not None
    assert "kept project" in warning
    project = client.project(report.project_id)
    assert project["label_config"] == with_sam.config
    assert project["expert_instruction"] == with_sam.instructions  # instructions match the kept config
