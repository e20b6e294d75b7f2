"""What a project's labelling page shows, generated from the class catalogue.

One function, :func:`project_labelling`, decides a project's Label Studio labelling config and its
annotator instructions from the classes, whether SAM is on and whether labelling is exhaustive or
sparse; :func:`apply_labelling` brings an existing project in line with it.
"""

from __future__ import annotations

import dataclasses
import html
import xml.etree.ElementTree as ET
from collections.abc import Sequence

from geolabel.classes import UNSURE_LABEL, LabelClass
from geolabel.errors import LabelStudioAuthError, LabelStudioError, LabelStudioUnreachableError
from geolabel.lsclient import LabelStudioClient

IMAGE_NAME = "image"
BRUSH_NAME = "label_brush"
POLYGON_NAME = "label_polygon"
SAM_POINT_NAME = "sam_point"
SAM_BOX_NAME = "sam_box"
#: Colour of the ``unsure`` label: a neutral grey no default class uses.
UNSURE_COLOR = "#a6a6a6"
UNSURE_HINT = "pixels you cannot decide: left out of training"
BRUSH_HEADER = "Paint (brush)"
POLYGON_HEADER = "Outline (polygon)"
SAM_POINT_HEADER = "SAM (Auto-Annotation on): click a point"
SAM_BOX_HEADER = "SAM (Auto-Annotation on): drag a box"
#: The image takes the free width; the controls a fixed column beside it, so that a class change never
#: scrolls the image away (at 1366x768 every class button is visible without scrolling).
ROW_STYLE = "display: flex; flex-direction: row; align-items: flex-start; gap: 12px"
IMAGE_STYLE = "flex: 1 1 auto; min-width: 0"
CONTROLS_STYLE = "flex: 0 0 320px; width: 320px; position: sticky; top: 0"
HEADER_STYLE = "margin: 6px 0 2px 0; font-size: 15px"


@dataclasses.dataclass(frozen=True)
class ProjectLabelling:
    """What decides a project's labelling page (build it with :func:`project_labelling`).

    Attributes:
        classes: the class catalogue.
        sam: whether the ML backend serves Segment Anything (then its smart tools are shown).
        sparse: whether undrawn pixels are unknown (``trainer.labelling = "sparse"``), not background.
    """

    classes: tuple[LabelClass, ...]
    sam: bool
    sparse: bool = False

    @property
    def config(self) -> str:
        """The labelling config XML."""
        return label_config(self.classes, self.sam)

    @property
    def instructions(self) -> str:
        """The annotators' instructions (HTML)."""
        return instructions(self.classes, self.sam, self.sparse)


def project_labelling(classes: Sequence[LabelClass], sam: bool, sparse: bool = False) -> ProjectLabelling:
    """The one place that decides a project's labelling config and instructions: classes, SAM, mode."""
    return ProjectLabelling(tuple(classes), sam, sparse)


def label_config(classes: Sequence[LabelClass], sam: bool = False) -> str:
    """Labelling config XML: the image with a side column of brush and polygon labels, SAM tools if on.

    Brush and polygon controls carry the classes and ``unsure``; with ``sam`` a smart KeyPointLabels
    row and a smart RectangleLabels row (the classes only), each under its own heading: the ML backend
    turns their clicks and boxes into masks of the chosen class.
    """
    view = ET.Element("View", {"style": ROW_STYLE})
    image_column = ET.SubElement(view, "View", {"style": IMAGE_STYLE})
    ET.SubElement(
        image_column,
        "Image",
        {
            "name": IMAGE_NAME,
            "value": "$image",
            "zoom": "true",
            "zoomControl": "true",
            "rotateControl": "false",
        },
    )
    controls = ET.SubElement(view, "View", {"style": CONTROLS_STYLE})
    ET.SubElement(controls, "Header", _header(BRUSH_HEADER))
    _labels(controls, "BrushLabels", BRUSH_NAME, classes, {}, unsure=True)
    ET.SubElement(controls, "Header", _header(POLYGON_HEADER))
    _labels(
        controls,
        "PolygonLabels",
        POLYGON_NAME,
        classes,
        {"strokeWidth": "2", "pointSize": "small"},
        unsure=True,
    )
    if sam:
        smart = {"smart": "true", "smartOnly": "true"}
        ET.SubElement(controls, "Header", _header(SAM_POINT_HEADER))
        _labels(controls, "KeyPointLabels", SAM_POINT_NAME, classes, smart, unsure=False)
        ET.SubElement(controls, "Header", _header(SAM_BOX_HEADER))
        _labels(controls, "RectangleLabels", SAM_BOX_NAME, classes, smart, unsure=False)
    ET.indent(view)
    return ET.tostring(view, encoding="unicode")


def _header(text: str) -> dict[str, str]:
    return {"value": text, "size": "6", "style": HEADER_STYLE}


def has_sam_tools(config: str) -> bool:
    """Whether a labelling config shows SAM's smart prompt tools (KeyPointLabels or RectangleLabels).

    A config that is not XML has none.
    """
    try:
        root = ET.fromstring(config)  # noqa: S314 (a config geolabel or the project's owner wrote)
    except ET.ParseError:
        return False
    return any(element.tag in ("KeyPointLabels", "RectangleLabels") for element in root.iter())


def same_config(first: str, second: str) -> bool:
    """Whether two labelling configs are the same but for white space."""
    return "".join(first.split()) == "".join(second.split())


def _labels(
    parent: ET.Element,
    tag: str,
    name: str,
    classes: Sequence[LabelClass],
    extra: dict[str, str],
    unsure: bool,
) -> None:
    control = ET.SubElement(parent, tag, {"name": name, "toName": IMAGE_NAME, **extra})
    for label in classes:
        attributes = {"value": label.name, "background": label.color}
        if label.description:
            attributes["hint"] = label.description
        ET.SubElement(control, "Label", attributes)
    if unsure:
        ET.SubElement(
            control, "Label", {"value": UNSURE_LABEL, "background": UNSURE_COLOR, "hint": UNSURE_HINT}
        )


def instructions(classes: Sequence[LabelClass], sam: bool, sparse: bool = False) -> str:
    """The annotators' instructions (HTML, shown by Label Studio) generated from the catalogue.

    Only plain tags: Label Studio strips style attributes from instructions.
    """
    parts = [
        "<h3>How to label a tile</h3>",
        "<p>Each task is one tile of a georeferenced image. Pick a class in the column beside the image, "
        f"then paint it (<b>{BRUSH_HEADER}</b>) or outline it (<b>{POLYGON_HEADER}</b>, click the "
        "corners, close on the first point).</p>",
        _coverage(sparse),
        "<ul>",
        *(_class_item(label) for label in classes),
        f"<li><b>{UNSURE_LABEL}</b>: pixels you cannot decide (blurred, "
        "hidden, ambiguous). They are left out of training: use it rather than guessing.</li>",
        "</ul>",
    ]
    if sam:
        parts.append(_sam_help())
    return "\n".join(parts)


def _coverage(sparse: bool) -> str:
    if sparse:
        return (
            "<p>This project uses <b>sparse</b> labelling: draw the parts you are sure of; you need not "
            "label everything. Pixels nobody drew are unknown and left out of training.</p>"
        )
    return (
        "<p><b>A submitted tile is complete</b>: label every object of every class below that appears on "
        "it. Pixels nobody drew are <b>background</b> (none of the classes) and are trained as such, so "
        "an object left undrawn teaches the model it is not there. A tile with no object is submitted "
        "empty.</p>"
    )


def _class_item(label: LabelClass) -> str:
    name = html.escape(label.name)
    text = html.escape(label.description) if label.description else "no description in geolabel.toml"
    return f"<li><b>{name}</b>: {text}</li>"


def _sam_help() -> str:
    return (
        "<h4>Segment Anything (SAM)</h4>"
        "<p>The two SAM rows work only with <b>Auto-Annotation</b> on (the switch in the bar under the "
        "image); with it off their classes do nothing. Under <b>click a point</b>, pick a class and click "
        "on an object: SAM's mask of it appears as a brush region of that class, and further clicks with "
        "the same class refine it. Under <b>drag a box</b>, pick a class and drag a box around an object. "
        "With <b>Auto-Accept Suggestions</b> off, you accept or reject each mask. Correct masks with the "
        "brush and the eraser before you submit.</p>"
    )


def apply_labelling(client: LabelStudioClient, project_id: int, wanted: ProjectLabelling) -> str | None:
    """Bring a project's labelling config and instructions in line with ``wanted``.

    Label Studio refuses a config that drops labels or tools existing annotations use; the old config
    is then kept (with instructions that match it) and the returned warning says why and what to do.

    Returns:
        None when the project now shows ``wanted``, else a warning for the user.

    Raises:
        LabelStudioError: if Label Studio is unreachable, rejects the token or refuses the instructions.
    """
    current = str(client.project(project_id).get("label_config") or "")
    warning = None
    shown = wanted
    if not same_config(current, wanted.config):
        try:
            client.set_label_config(project_id, wanted.config)
        except (LabelStudioUnreachableError, LabelStudioAuthError):
            raise
        except LabelStudioError as exc:  # refused
            shown = dataclasses.replace(wanted, sam=has_sam_tools(current))
            warning = (
                f"Label Studio kept project {project_id}'s labelling config ({exc}); existing annotations "
                "use labels or tools the new one drops. Rename the classes back in geolabel.toml, or "
                "edit those annotations, then run the command again"
            )
    client.set_instructions(project_id, shown.instructions)
    return warning
