"""Annotations from Label Studio -> per-tile class targets (class indices, background, ignored pixels).

Every annotator's submitted annotations count (skips carry no label). Brush
regions are decoded from their RLE, polygons are rasterised in tile pixels (a
pixel belongs to a polygon when its centre is inside, as GDAL rasterises).

What an annotation says about the pixels nobody drew (``[trainer] labelling``):

- ``exhaustive`` (default): a submitted annotation covers the whole class
  catalogue, so they are :data:`~geolabel.classes.BACKGROUND`; an annotation
  without any region says the whole tile is background.
- ``sparse`` (scribbles): they are unknown, :data:`~trainer.metrics.IGNORE`; an
  annotation that labels no pixel is not used.

In both, pixels drawn with :data:`~geolabel.classes.UNSURE_LABEL` and pixels of
a region whose label is not in the catalogue are IGNORE. Nodata pixels become
IGNORE when the tile's pixels are read for training (harvest reads no raster).
Inside one annotation a later region overwrites an earlier one. Annotations of
one tile combine pixel by pixel: where one says IGNORE the others decide; where
two say different things (two classes, or a class and background) the pixel is
IGNORE. What cannot be used is reported, never silently dropped.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt
from affine import Affine
from rasterio.features import rasterize

from geolabel.classes import BACKGROUND, UNSURE_LABEL, LabelClass
from geolabel.lsmodels import Annotation, LabelledTask
from georef.errors import InvalidGeometryError
from georef.labelstudio import ImageSize, Region
from georef.registry import TileRecord
from georef.shapes import label_regions, region_shape
from trainer.metrics import IGNORE

Report = Callable[[str], None]
#: What a submitted annotation says about the pixels nobody drew (``[trainer] labelling``).
Labelling = Literal["exhaustive", "sparse"]


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
    """A tile's merged target: class indices (0 = background, i = i-th class), IGNORE where left out."""

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
        """Labelled pixels per class name (``names`` per class index, background first).

        In exhaustive labelling background counts every undrawn pixel, nodata included: harvest
        reads no raster. A round records :func:`class_pixels` of its training samples instead.
        """
        return class_pixels([tile.target for tile in self.tiles], names)


def class_pixels(targets: Iterable[npt.NDArray[np.uint8]], names: Sequence[str]) -> dict[str, int]:
    """Pixels per class name in class-index ``targets`` (IGNORE left out; ``names`` background first)."""
    counts = np.zeros(len(names), dtype=np.int64)
    for target in targets:
        counts += np.bincount(target[target != IGNORE], minlength=len(names))[: len(names)]
    return {name: int(count) for name, count in zip(names, counts, strict=True)}


def harvest(
    tasks: Iterable[LabelledTask],
    tiles_by_task: Mapping[int, TileRecord],
    classes: Sequence[LabelClass],
    labelling: Labelling = "exhaustive",
) -> Harvest:
    """Turn Label Studio tasks (with their ``annotations``) into per-tile targets.

    Args:
        tasks: the labelled tasks as the client parsed them (submitted and cancelled annotations).
        tiles_by_task: the registry's tiles by task id (tasks without a tile are reported).
        classes: the class catalogue; index ``i + 1`` is ``classes[i]``.
        labelling: ``exhaustive`` (undrawn pixels are background) or ``sparse`` (undrawn pixels are
            IGNORE); see the module docstring.
    """
    index = {entry.name: position + 1 for position, entry in enumerate(classes)}
    index[UNSURE_LABEL] = IGNORE
    undrawn = BACKGROUND if labelling == "exhaustive" else IGNORE
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
        labelled = _labelled_tile(tile, task_id, annotations, _Rule(index, undrawn), found.problems)
        if labelled is not None:
            found.tiles.append(labelled)
    return found


@dataclass(frozen=True)
class _Rule:
    """How regions become target values: ``index`` per label (IGNORE for unsure), ``undrawn`` elsewhere."""

    index: Mapping[str, int]
    undrawn: int


class _EveryLabel:
    """Lets every labelled region through :func:`label_regions`: unknown labels are IGNORE here."""

    def __contains__(self, label: object) -> bool:
        return True


def _labelled_tile(
    tile: TileRecord,
    task_id: int,
    annotations: Sequence[Annotation],
    rule: _Rule,
    problems: list[Problem],
) -> LabelledTile | None:
    size = ImageSize(tile.window.width, tile.window.height)
    merged: npt.NDArray[np.uint8] = np.full((size.height, size.width), IGNORE, dtype=np.uint8)
    conflict = np.zeros((size.height, size.width), dtype=bool)
    annotators, ids = set(), []
    for annotation in annotations:
        annotation_id = annotation.id

        def report(message: str, annotation_id: int = annotation_id) -> None:
            problems.append(Problem(task_id, annotation_id, message))

        target = _annotation_target(annotation, size, rule, report)
        if target is None:
            continue
        conflict |= (target != IGNORE) & (merged != IGNORE) & (target != merged)
        merged = np.where(merged == IGNORE, target, merged).astype(np.uint8)
        annotators.add(annotation.annotator)
        ids.append(annotation_id)
    if not ids:
        return None
    merged[conflict] = IGNORE
    return LabelledTile(tile, merged, frozenset(annotators), tuple(ids))


def _annotation_target(
    annotation: Annotation, size: ImageSize, rule: _Rule, report: Report
) -> npt.NDArray[np.uint8] | None:
    """One annotation's target, or None (reported) when it says nothing usable.

    Exhaustive: an annotation without label regions is all background; one whose regions all failed
    is not used. Sparse: an annotation that labels no pixel is not used.
    """
    target = np.full((size.height, size.width), rule.undrawn, dtype=np.uint8)
    regions = used = labelled_pixels = 0
    for labelled in label_regions(annotation.result, size, _EveryLabel(), report):
        regions += 1
        value = rule.index.get(labelled.class_name)
        if value is None:
            report(f"label {labelled.class_name} is not in the class catalogue; its pixels are left out")
            value = IGNORE
        mask = _region_mask(labelled.region, size, report)
        if mask is not None:
            target[mask] = value
            used += 1
            labelled_pixels += int(value != IGNORE)
    if rule.undrawn == IGNORE and labelled_pixels == 0:
        report("the annotation labels no pixel (empty, only unsure, or nothing usable); not used")
        return None
    if regions and not used:
        report("no region of the annotation could be used; not used")
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
