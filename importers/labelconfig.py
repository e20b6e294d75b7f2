"""The Label Studio labelling configuration generated from the class catalogue."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence

from geolabel.classes import LabelClass

IMAGE_NAME = "image"
BRUSH_NAME = "label_brush"
POLYGON_NAME = "label_polygon"
SAM_POINT_NAME = "sam_point"
SAM_BOX_NAME = "sam_box"


def label_config(classes: Sequence[LabelClass]) -> str:
    """Labelling config XML: brush and polygon labels for the classes, smart SAM prompt tools.

    The smart KeyPointLabels and RectangleLabels are only shown when auto-annotation
    is on; the ML backend turns their clicks and boxes into masks of the chosen class.
    """
    view = ET.Element("View")
    ET.SubElement(
        view,
        "Image",
        {
            "name": IMAGE_NAME,
            "value": "$image",
            "zoom": "true",
            "zoomControl": "true",
            "rotateControl": "false",
        },
    )
    ET.SubElement(view, "Header", {"value": "Paint (brush)", "size": "6"})
    _labels(view, "BrushLabels", BRUSH_NAME, classes, {})
    ET.SubElement(view, "Header", {"value": "Outline (polygon)", "size": "6"})
    _labels(view, "PolygonLabels", POLYGON_NAME, classes, {"strokeWidth": "2", "pointSize": "small"})
    ET.SubElement(view, "Header", {"value": "Segment Anything: click a point, or drag a box", "size": "6"})
    _labels(view, "KeyPointLabels", SAM_POINT_NAME, classes, {"smart": "true", "smartOnly": "true"})
    _labels(view, "RectangleLabels", SAM_BOX_NAME, classes, {"smart": "true", "smartOnly": "true"})
    ET.indent(view)
    return ET.tostring(view, encoding="unicode")


def _labels(
    view: ET.Element, tag: str, name: str, classes: Sequence[LabelClass], extra: dict[str, str]
) -> None:
    control = ET.SubElement(view, tag, {"name": name, "toName": IMAGE_NAME, **extra})
    for label in classes:
        ET.SubElement(control, "Label", {"value": label.name, "background": label.color})
