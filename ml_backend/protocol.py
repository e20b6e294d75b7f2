"""Label Studio's ML-backend protocol: request bodies as pydantic models, prompts from the click context.

Label Studio sends (``label_studio/ml/api_connector.py``):

- ``POST /setup``: ``{"project": "<id>.<created timestamp>", "schema": <label config>, "hostname",
  "access_token", "extra_params"}``; the answer carries ``model_version``;
- ``POST /predict``: ``{"tasks": [...], "project", "label_config", "params": {"context": ...}}``;
  ``context`` is absent for pre-annotations and holds the smart-tool regions for a click;
- ``POST /webhook``: ``{"action": "ANNOTATION_CREATED", "annotation": {...}, "task": {...}, ...}``.
"""

from __future__ import annotations

import math
import re
from typing import Annotated, Any, TypeVar

import numpy as np
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from geolabel.lsmodels import ProjectSchema
from georef.labelstudio import ImageSize, PercentRect, percent_to_pixel, rect_to_pixel_corners
from ml_backend.errors import BadRequestError
from ml_backend.sam import Prompt

M = TypeVar("M", bound=BaseModel)

#: Largest id of a Label Studio object (SQLite and Django integer keys are signed 64-bit).
MAX_ID = 2**63 - 1
#: Most tasks one ``/predict`` request may carry (Label Studio asks for one at a time when a task opens;
#: "Retrieve predictions" on a selection sends the whole selection at once).
MAX_TASKS = 100
#: A Label Studio id as it crosses the boundary: 1 .. 2**63 - 1.
ObjectId = Annotated[int, Field(ge=1, le=MAX_ID)]
_PROJECT_KEY = re.compile(r"([0-9]{1,19})(\..*)?", re.DOTALL)


class _Body(BaseModel):
    model_config = ConfigDict(extra="ignore")


class TaskIn(_Body):
    """A task as Label Studio sends it (only what the backend reads)."""

    id: ObjectId
    project: ObjectId | None = None
    data: dict[str, Any] = Field(default_factory=dict)


class ContextRegion(_Body):
    """One smart-tool region of the click context (a key point or a box)."""

    type: str
    from_name: str = ""
    original_width: int | None = None
    original_height: int | None = None
    is_positive: bool | None = None
    value: dict[str, Any]


class Context(_Body):
    """The interactive context: the smart regions drawn so far on the task."""

    result: list[ContextRegion] = Field(default_factory=list)


class Params(_Body):
    """``params`` of a predict request."""

    context: Context | None = None


class PredictRequest(_Body):
    """Body of ``POST /predict``."""

    tasks: list[TaskIn] = Field(min_length=1)
    project: str | None = None
    label_config: str | None = None
    params: Params = Params()

    @field_validator("tasks", mode="before")
    @classmethod
    def _at_most_max_tasks(cls, tasks: object) -> object:
        """Refuse an over-long task list before any task is validated."""
        if isinstance(tasks, list) and len(tasks) > MAX_TASKS:
            raise ValueError(
                f"{len(tasks)} tasks in one request; the backend answers at most {MAX_TASKS} at a time "
                "(select fewer tasks before retrieving predictions)"
            )
        return tasks


class SetupRequest(_Body):
    """Body of ``POST /setup`` (``access_token`` is read by nobody and never logged)."""

    project: str | None = None
    schema_: str | None = Field(default=None, alias="schema")


class WebhookEvent(_Body):
    """Body of ``POST /webhook``.

    Label Studio sends ``annotation`` and ``task`` as objects for ``ANNOTATION_CREATED`` and
    ``ANNOTATION_UPDATED``, as lists for ``ANNOTATIONS_CREATED``, and ``annotations`` (ids only) for
    ``ANNOTATIONS_DELETED``.
    """

    action: str
    project: dict[str, Any] | None = None
    task: dict[str, Any] | list[dict[str, Any]] | None = None
    annotation: dict[str, Any] | list[dict[str, Any]] | None = None
    annotations: list[dict[str, Any]] | None = None

    def reported(self) -> list[dict[str, Any]]:
        """The annotations the event reports, whatever key and shape it used."""
        found = self.annotations or self.annotation or []
        return [found] if isinstance(found, dict) else list(found)

    def single_task_id(self) -> int | None:
        """The id of the event's task when it names exactly one."""
        return object_id(self.task.get("id")) if isinstance(self.task, dict) else None


def parse_body(model: type[M], body: object) -> M:
    """Validate a JSON body.

    Raises:
        BadRequestError: naming the first invalid field.
    """
    if not isinstance(body, dict):
        raise BadRequestError("the request body must be a JSON object")
    try:
        return model.model_validate(body)
    except ValidationError as exc:
        error = exc.errors()[0]
        where = ".".join(str(part) for part in error["loc"]) or "body"
        raise BadRequestError(f"{where}: {error['msg']}") from None


def project_id(project: str | None) -> int | None:
    """Label Studio's ``"<id>.<timestamp>"`` project key -> the project id (None if absent).

    Raises:
        BadRequestError: if the key is not of that form.
    """
    if not project:
        return None
    match = _PROJECT_KEY.fullmatch(project)
    number = int(match.group(1)) if match else 0
    if not 1 <= number <= MAX_ID:
        shown = project if len(project) <= 40 else f"{project[:40]}... ({len(project)} characters)"
        raise BadRequestError(
            f"project {shown!r} is not of the form '<id>.<timestamp>' with an id from 1 to {MAX_ID}"
        )
    return number


def object_id(value: object) -> int | None:
    """An id from a webhook body: an int from 1 to :data:`MAX_ID`, else None (bools are not ids)."""
    if isinstance(value, int) and not isinstance(value, bool) and 1 <= value <= MAX_ID:
        return value
    return None


class ClassPrompt(_Body):
    """A SAM prompt for one class, in tile pixels."""

    model_config = ConfigDict(arbitrary_types_allowed=True, frozen=True)

    label: str
    prompt: Prompt


def prompt_from_context(context: Context, schema: ProjectSchema, size: ImageSize) -> ClassPrompt:
    """Turn the click context into one SAM prompt.

    The class is the label of the latest region; every point and box of that class drawn so far on
    the task is used, so further clicks refine the same object (negative points remove parts).

    Raises:
        BadRequestError: no usable region, an unknown class, or regions drawn on an image of another size.
    """
    regions = [r for r in context.result if r.type in ("keypointlabels", "rectanglelabels")]
    if not regions:
        raise BadRequestError("the context has no key point or rectangle from a smart tool")
    label = _label(regions[-1])
    if label not in schema.labels:
        raise BadRequestError(f"class {label!r} is not in the project's brush labels {list(schema.labels)}")
    points: list[tuple[float, float]] = []
    labels: list[int] = []
    box: tuple[float, float, float, float] | None = None
    for region in regions:
        if _label(region) != label:
            continue
        _check_size(region, size)
        if region.type == "keypointlabels":
            points.append(_point(region, size))
            labels.append(0 if _negative(region) else 1)
        else:
            box = _box(region, size)  # the latest box wins
    return ClassPrompt(
        label=label,
        prompt=Prompt(np.asarray(points, dtype=np.float64).reshape(-1, 2), np.asarray(labels), box),
    )


def _label(region: ContextRegion) -> str:
    names = region.value.get(region.type)
    if not isinstance(names, list) or not names or not isinstance(names[0], str):
        raise BadRequestError(f"a {region.type} region has no class in value.{region.type}")
    return names[0]


def _negative(region: ContextRegion) -> bool:
    flag = region.is_positive if region.is_positive is not None else region.value.get("is_positive", True)
    return flag is False


def _check_size(region: ContextRegion, size: ImageSize) -> None:
    drawn = (region.original_width, region.original_height)
    if None not in drawn and drawn != (size.width, size.height):
        raise BadRequestError(
            f"the click was made on a {drawn[0]}x{drawn[1]} image but the tile is {size.width}x{size.height}"
        )


def _number(region: ContextRegion, key: str, default: object = None) -> float:
    value = region.value.get(key, default)
    try:
        number = float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan
    except OverflowError:  # an int beyond the float range
        number = math.nan
    if not math.isfinite(number):
        raise BadRequestError(f"a {region.type} region needs a finite number in value.{key}")
    return number


def _point(region: ContextRegion, size: ImageSize) -> tuple[float, float]:
    col, row = percent_to_pixel([[_number(region, "x"), _number(region, "y")]], size)[0]
    return float(col), float(row)


def _box(region: ContextRegion, size: ImageSize) -> tuple[float, float, float, float]:
    rect = PercentRect(
        _number(region, "x"),
        _number(region, "y"),
        _number(region, "width"),
        _number(region, "height"),
        _number(region, "rotation", 0.0) if region.value.get("rotation") is not None else 0.0,
    )
    corners = rect_to_pixel_corners(rect, size)
    (x0, y0), (x1, y1) = corners.min(axis=0), corners.max(axis=0)
    return float(x0), float(y0), float(x1), float(y1)
