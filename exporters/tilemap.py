"""The coordinators' map: every tile's footprint with its state, uncertainty and selection round.

State comes from Label Studio at export time (``labelled``: at least one
submitted annotation; ``skipped``: only cancelled ones; ``unlabelled``), or
``no data`` for tiles whose pixels are all nodata (no task). Uncertainty is the
latest promoted round's score of the tile; ``selected_round`` / ``queue_rank``
say in which round's next batch the tile was last put, and where. ``agreement``
and one ``iou_<class>`` column per class (background first) say how far the
tile's annotators agree (:mod:`trainer.agreement`); NaN for a tile with fewer
than two annotators, and for a class none of them drew.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from shapely.geometry import Polygon

from geolabel.lsmodels import LabelledTask
from georef.registry import TileRecord, TileStatus
from trainer.agreement import TileAgreement, iou_fields
from trainer.rounds import LabelState, RoundStatus, RoundStore

TILES_SCHEMA = {
    "tile_id": "str",
    "raster": "str",
    "tile_row": "int64",
    "tile_col": "int64",
    "task_id": "int64",
    "state": "str",
    "annotations": "int64",
    "annotators": "int64",
    "uncertainty": "float64",
    "scored_by": "str",
    "selected_round": "int64",
    "queue_rank": "int64",
}


@dataclass(frozen=True)
class TaskSummary:
    """What Label Studio holds for a task: submitted annotations, their distinct authors, cancelled ones."""

    annotations: int
    annotators: int
    cancelled: int


@dataclass(frozen=True)
class RoundView:
    """What the rounds say of tiles: the latest promoted round's scores and each tile's latest selection."""

    uncertainty: Mapping[str, float]
    scored_by: str
    selection: Mapping[str, tuple[int, int]]  # tile id -> (round id, rank)


def summarise(tasks: Sequence[LabelledTask]) -> dict[int, TaskSummary]:
    """Per task id, its annotation counts."""
    return {
        task.id: TaskSummary(
            len(task.submitted),
            len({a.annotator for a in task.submitted}),
            len(task.annotations) - len(task.submitted),
        )
        for task in tasks
    }


def round_view(store: RoundStore, project_id: int) -> RoundView:
    """Scores and selections recorded by the project's rounds (empty before the first round)."""
    promoted = [r for r in store.rounds(project_id) if r.status == RoundStatus.PROMOTED]  # failed: nothing
    selection: dict[str, tuple[int, int]] = {}
    for record in promoted:  # oldest first: later rounds overwrite
        for entry in store.queue(record.id):
            selection[entry.tile_id] = (record.number, entry.rank)  # the project's round number
    if not promoted:
        return RoundView({}, "", selection)
    latest = promoted[-1]
    states = store.tile_states(latest.id)
    uncertainty = {t: s.uncertainty for t, s in states.items() if s.uncertainty is not None}
    return RoundView(uncertainty, latest.model_version or "", selection)


def tiles_schema(class_names: Sequence[str]) -> dict[str, str]:
    """:data:`TILES_SCHEMA` with ``agreement`` and an IoU column per class name (background first).

    The IoU columns are named by :func:`trainer.agreement.iou_fields`, e.g. ``iou_building``.
    """
    ious = dict.fromkeys(iou_fields(class_names).values(), "float64")
    return {**TILES_SCHEMA, "agreement": "float64", **ious}


def tile_row(
    tile: TileRecord,
    raster: str,
    summary: TaskSummary | None,
    view: RoundView,
    agreement: TileAgreement | None = None,
    class_names: Sequence[str] = (),
) -> dict[str, object]:
    """The attributes of one tile's feature; with ``class_names``, the :func:`tiles_schema` columns."""
    return {**_base_row(tile, raster, summary, view), **agreement_columns(agreement, class_names)}


def agreement_columns(agreement: TileAgreement | None, class_names: Sequence[str]) -> dict[str, float]:
    """A tile's ``agreement`` and IoU columns; NaN where undefined or not measured (``agreement`` None)."""
    fields = iou_fields(class_names)
    if agreement is None:
        return {"agreement": math.nan, **dict.fromkeys(fields.values(), math.nan)}
    ious = {fields[name]: float(agreement.class_iou.get(name, math.nan)) for name in class_names}
    return {"agreement": agreement.agreement, **ious}


def _base_row(
    tile: TileRecord,
    raster: str,
    summary: TaskSummary | None,
    view: RoundView,
) -> dict[str, object]:
    selected = view.selection.get(tile.id)
    uncertainty = view.uncertainty.get(tile.id)
    return {
        "tile_id": tile.id,
        "raster": raster,
        "tile_row": tile.tile_row,
        "tile_col": tile.tile_col,
        "task_id": tile.task_id,
        "state": _state(tile, summary),
        "annotations": summary.annotations if summary else 0,
        "annotators": summary.annotators if summary else 0,
        "uncertainty": float("nan") if uncertainty is None else uncertainty,
        "scored_by": view.scored_by if uncertainty is not None else "",
        "selected_round": selected[0] if selected else None,
        "queue_rank": selected[1] if selected else None,
    }


def footprint(tile: TileRecord) -> Polygon:
    """The tile's outline in its CRS (exact for rotated grids too)."""
    return Polygon(tile.grid.corners_world())


def _state(tile: TileRecord, summary: TaskSummary | None) -> LabelState:
    if tile.status == TileStatus.SKIPPED:
        return LabelState.NO_DATA
    if summary is None:
        return LabelState.UNLABELLED
    if summary.annotations:
        return LabelState.LABELLED
    return LabelState.SKIPPED if summary.cancelled else LabelState.UNLABELLED
