"""Annotations from Label Studio -> per-tile class targets (class indices, unlabelled pixels ignored).

Every annotator's annotations count. Brush regions are decoded from their RLE,
polygons are rasterised in tile pixels (a pixel belongs to a polygon when its
centre is inside, as GDAL rasterises). Inside one annotation a later region
overwrites an earlier one; where two annotations of a tile disagree the pixel is
ignored. Pixels nobody labelled are :data:`~trainer.metrics.IGNORE`, never
background. What cannot be used is reported, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt
from affine import Affine
from rasterio.features import rasterize

from geolabel.classes import LabelClass
from geolabel.lsmodels import Annotation, LabelledTask
from georef.errors import InvalidGeometryError
from georef.labelstudio import ImageSize, Region
from georef.registry import TileRecord
from georef.shapes import label_regions, region_shape
from trainer.metrics import IGNORE

Report = Callable[[str], None]


@dataclass(frozen=True)
class Problem:
    """Something in an annotation that was not used, and why."""

    task_id: int
    annotation_id: int | None
    message: str

    def __str__(self) -> str:
        where = f"task {self.task_id}" + (f", annotation {self.annotation_id}" if self.annotation_id else "")
        return f"{where}: {self.message}"


@dataclass(frozen=True)
class LabelledTile:
    """A tile's merged target: class indices (0 = background, i = i-th class), IGNORE where unlabelled."""

    tile: TileRecord
    target: npt.NDArray[np.uint8]
    annotators: frozenset[str]
    annotation_ids: tuple[int, ...]


@dataclass
class Harvest:
    """What a harvest found: the labelled tiles, and the problems met on the way."""

    tiles: list[LabelledTile] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    skipped_tasks: list[int] = field(default_factory=list)  # every annotation cancelled ("skip")

    def class_pixels(self, names: Sequence[str]) -> dict[str, int]:
        """Labelled pixels per class name (``names`` per class index, background first)."""
        counts = np.zeros(len(names), dtype=np.int64)
        for tile in self.tiles:
            labelled = tile.target[tile.target != IGNORE]
            counts += np.bincount(labelled, minlength=len(names))[: len(names)]
        return {name: int(count) for name, count in zip(names, counts, strict=True)}


def harvest(
    tasks: Iterable[LabelledTask], tiles_by_task: Mapping[int, TileRecord], classes: Sequence[LabelClass]
) -> Harvest:
    """Turn Label Studio tasks (with their ``annotations``) into per-tile targets.

    Args:
        tasks: the labelled tasks as the client parsed them (submitted and cancelled annotations).
        tiles_by_task: the registry's tiles by task id (tasks without a tile are reported).
        classes: the class catalogue; index ``i + 1`` is ``classes[i]``.
    """
    index = {entry.name: position + 1 for position, entry in enumerate(classes)}
    found = Harvest()
    for task in tasks:
        task_id = task.id
        annotations = task.submitted
        if not annotations:
            if task.skipped:
                found.skipped_tasks.append(task_id)
            continue
        tile = tiles_by_task.get(task_id)
        if tile is None:
            found.problems.append(Problem(task_id, None, "no tile in the registry for this task; not used"))
            continue
        labelled = _labelled_tile(tile, task_id, annotations, index, found.problems)
        if labelled is not None:
            found.tiles.append(labelled)
    return found


def _labelled_tile(
    tile: TileRecord,
    task_id: int,
    annotations: Sequence[Annotation],
    index: Mapping[str, int],
    problems: list[Problem],
) -> LabelledTile | None:
    size = ImageSize(tile.window.width, tile.window.height)
    merged: npt.NDArray[np.uint8] = np.full((size.height, size.width), IGNORE, dtype=np.uint8)
    annotators, ids = set(), []
    for annotation in annotations:
        annotation_id = annotation.id

        def report(message: str, annotation_id: int = annotation_id) -> None:
            problems.append(Problem(task_id, annotation_id, message))

        target = _annotation_target(annotation, size, index, report)
        if target is None:
            continue
        fresh = merged == IGNORE
        agree = (target == IGNORE) | (target == merged)
        merged = np.where(fresh, target, np.where(agree, merged, IGNORE)).astype(np.uint8)
        annotators.add(annotation.annotator)
        ids.append(annotation_id)
    if not ids:
        return None
    return LabelledTile(tile, merged.astype(np.uint8), frozenset(annotators), tuple(ids))


def _annotation_target(
    annotation: Annotation, size: ImageSize, index: Mapping[str, int], report: Report
) -> npt.NDArray[np.uint8] | None:
    """One annotation's class indices, or None (reported) when it labels nothing usable."""
    target = np.full((size.height, size.width), IGNORE, dtype=np.uint8)
    used = 0
    for labelled in label_regions(annotation.result, size, index, report):
        mask = _region_mask(labelled.region, size, report)
        if mask is not None:
            target[mask] = index[labelled.class_name]
            used += 1
    if used == 0:
        report("the annotation labels no pixel (empty, or nothing usable); not used")
        return None
    return target


def _region_mask(region: Region, size: ImageSize, report: Report) -> npt.NDArray[np.bool_] | None:
    """The region's pixels (a polygon covers a pixel when it contains its centre, as GDAL rasterises)."""
    if region.mask is not None and not region.mask.any():
        report("empty brush region; not used")
        return None
    if region.mask is not None:
        return region.mask
    try:
        found = region_shape(region)
    except InvalidGeometryError as exc:
        report(str(exc))
        return None
    if found.note:
        report(found.note)
    mask = rasterize(
        [(found.geometry, 1)],
        out_shape=(size.height, size.width),
        transform=Affine.identity(),
        dtype=np.uint8,
    )
    if not mask.any():
        report("polygon smaller than a pixel (covers no pixel centre); not used")
        return None
    return np.asarray(mask, dtype=bool)
