"""Label Studio's JSON and XML parsed into typed values at the client boundary.

The labelling config is read with ``label_studio_sdk.label_interface``.
"""

from __future__ import annotations

from dataclasses import dataclass

from label_studio_sdk.label_interface.control_tags import ControlTag
from label_studio_sdk.label_interface.interface import LabelInterface

from geolabel.errors import LabelConfigError

FIX = "re-create the project with `geolabel import`, or add the tag in Label Studio's labelling settings"


@dataclass(frozen=True)
class ProjectSchema:
    """Tag names of a geolabel labelling config.

    Attributes:
        image: name of the ``Image`` object every region is drawn on.
        brush: name of the ``BrushLabels`` control masks are returned in.
        labels: class names of the brush control.
        polygon: name of the ``PolygonLabels`` control, or None (then no polygons are returned).
        prompts: names of the smart ``KeyPointLabels`` / ``RectangleLabels`` controls (SAM prompts).
    """

    image: str
    brush: str
    labels: tuple[str, ...]
    polygon: str | None
    prompts: tuple[str, ...]


def read_schema(label_config: str) -> ProjectSchema:
    """Read the tags the backend uses from a labelling config (XML).

    Raises:
        LabelConfigError: if the config is not valid XML or has no ``Image`` or no ``BrushLabels`` on it.
    """
    try:
        interface = LabelInterface(label_config)
    except Exception as exc:  # the SDK raises several XML and validation errors
        raise LabelConfigError(
            f"the project's labelling config cannot be read ({type(exc).__name__})"
        ) from None
    images = [str(obj.name) for obj in interface.objects if obj.tag == "Image"]
    if not images:
        raise LabelConfigError(f"the labelling config has no <Image> tag; {FIX}")
    image = images[0]
    controls = [c for c in interface.controls if image in (c.to_name or [])]
    brush = _first(controls, "BrushLabels")
    if brush is None:
        raise LabelConfigError(f"the labelling config has no <BrushLabels> on <Image name={image!r}>: {FIX}")
    polygon = _first(controls, "PolygonLabels")
    prompts = tuple(str(c.name) for c in controls if c.tag in ("KeyPointLabels", "RectangleLabels"))
    return ProjectSchema(
        image=image,
        brush=str(brush.name),
        labels=tuple(brush.labels or ()),
        polygon=str(polygon.name) if polygon is not None else None,
        prompts=prompts,
    )


def _first(controls: list[ControlTag], tag: str) -> ControlTag | None:
    return next((c for c in controls if c.tag == tag), None)
