"""Label Studio's JSON and XML parsed into typed values at the client boundary.

The labelling config is read with ``label_studio_sdk.label_interface``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from label_studio_sdk.label_interface.control_tags import ControlTag
from label_studio_sdk.label_interface.interface import LabelInterface
from pydantic import BaseModel, ConfigDict, Field, model_validator

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


class Annotation(BaseModel):
    """One annotation of a task as Label Studio returns it (fields geolabel does not use are dropped).

    ``annotator`` is the author's e-mail when Label Studio names the user, else the user id.
    ``was_cancelled`` marks a skip: it carries no label.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: int = Field(ge=0)
    result: tuple[dict[str, Any], ...] = ()
    was_cancelled: bool = False
    annotator: str = ""
    created_at: str | None = None
    updated_at: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _author(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and "annotator" not in data:
            who = data.get("completed_by")
            name = str(who.get("email") or who.get("id")) if isinstance(who, Mapping) else str(who)
            data = {**data, "annotator": name, "result": data.get("result") or ()}
        return data


class LabelledTask(BaseModel):
    """A task with its annotations, submitted and cancelled (skips)."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: int = Field(ge=1)
    annotations: tuple[Annotation, ...] = ()

    @property
    def submitted(self) -> tuple[Annotation, ...]:
        """The annotations that carry labels (cancelled ones, skips, left out)."""
        return tuple(a for a in self.annotations if not a.was_cancelled)

    @property
    def skipped(self) -> bool:
        """True when the task was only skipped: annotations exist, none submitted."""
        return bool(self.annotations) and not self.submitted
