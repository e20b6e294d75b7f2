"""Agreement between annotators of a tile: per-class IoU of their class maps, and a tile score.

Each annotator's submitted annotations of a task become a class map by the same
rules as training (:func:`trainer.harvest.harvest` over that annotator's
annotations alone: undrawn pixels are background in exhaustive labelling and
unknown in sparse labelling; ``unsure`` pixels and labels outside the catalogue
are left out). Two maps are compared on the pixels both of them label and that
hold data (nodata pixels, read from the tile's source raster, are left out).

- **Class IoU of two annotators**: ``|A ∩ B| / |A ∪ B|`` of the pixels each gave
  the class; undefined (NaN) when neither gave the class any compared pixel,
  never 1 and never 0.
- **Class IoU of three or more**: the mean over the pairs for which it is defined.
- **Tile agreement**: the mean IoU over the catalogue classes that are defined,
  background left out (as the trainer's validation mIoU: background covers most
  pixels and would lift every tile close to 1). When no annotator drew any class
  the tile's agreement is the background IoU (all said "nothing here": 1 when
  they agree on the compared pixels). NaN with fewer than two usable annotators
  or no pixel compared.

Results are stored per project beside the rounds (table ``tile_agreement`` of
the registry file), replacing the previous ones, so the dashboard and
``geolabel status`` show them without asking Label Studio.
"""

from __future__ import annotations

import csv
import itertools
import json
import math
import re
import unicodedata
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
from rasterio.errors import RasterioIOError

from geolabel.classes import BACKGROUND_NAME, LabelClass
from geolabel.config import Config
from geolabel.lsclient import LabelStudioClient
from geolabel.lsmodels import Annotation, LabelledTask
from georef.registry import RasterRecord, TileRecord
from importers.display import window_valid
from importers.project import load_project_tiles
from trainer.errors import TrainerError
from trainer.harvest import Labelling, Problem, harvest
from trainer.metrics import IGNORE, confusion
from trainer.rounds import now
from trainer.tables import connect

#: A tile's valid-pixel mask (True: holds data), or None when every pixel counts.
ValidMask = npt.NDArray[np.bool_] | None

SCHEMA = """
CREATE TABLE IF NOT EXISTS tile_agreement (
    project_id INTEGER NOT NULL,
    task_id INTEGER NOT NULL,
    tile_id TEXT NOT NULL,
    raster_id INTEGER NOT NULL,
    annotators TEXT NOT NULL,
    authors INTEGER NOT NULL,
    pixels INTEGER NOT NULL,
    agreement REAL,
    class_iou TEXT NOT NULL,
    measured_at TEXT NOT NULL,
    PRIMARY KEY (project_id, task_id)
);
CREATE TABLE IF NOT EXISTS agreement_measures (
    project_id INTEGER PRIMARY KEY,
    measured_at TEXT NOT NULL
);
"""


class AgreementError(TrainerError, ValueError):
    """Agreement cannot be measured (nothing imported) or a review cannot be chosen as asked."""


@dataclass(frozen=True)
class TileAgreement:
    """How far the annotators of one tile agree.

    Attributes:
        task_id: the tile's Label Studio task.
        tile_id: the tile (registry id).
        raster_id: the tile's raster (registry id).
        annotators: the annotators whose class maps were compared, sorted.
        authors: distinct authors of submitted annotations, as Label Studio counts them for a task's
            overlap (an annotator whose annotation could not be used counts here, not in ``annotators``).
        pixels: pixels compared, summed over the pairs.
        class_iou: IoU per class name, background first, then the catalogue; NaN where undefined.
        agreement: the tile's score (see the module docstring); NaN when undefined.
    """

    task_id: int
    tile_id: str
    raster_id: int
    annotators: tuple[str, ...]
    authors: int
    pixels: int
    class_iou: Mapping[str, float]
    agreement: float

    @property
    def compared(self) -> bool:
        """True when the tile has an agreement score (two usable annotators or more)."""
        return not math.isnan(self.agreement)


@dataclass(frozen=True)
class Measured:
    """The tiles of a project measured, and what could not be used on the way."""

    tiles: list[TileAgreement] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class AgreementSummary:
    """The project's agreement in a few numbers.

    Attributes:
        compared: tiles with an agreement score.
        mean_agreement: mean of their scores (NaN when none).
        class_iou: per class name (background first), the mean of its defined IoUs over those tiles.
        lowest: the compared tiles with the lowest agreement, lowest first.
    """

    compared: int
    mean_agreement: float
    class_iou: Mapping[str, float]
    lowest: list[TileAgreement]


# --- pure core -------------------------------------------------------------------------------------


def class_names(classes: Sequence[LabelClass]) -> list[str]:
    """Names per class index: background first, then the catalogue in order (harvest's indices)."""
    return [BACKGROUND_NAME, *(c.name for c in classes)]


def pair_iou(first: npt.NDArray[np.uint8], second: npt.NDArray[np.uint8], classes: int,
             valid: ValidMask = None) -> tuple[list[float], int]:  # fmt: skip
    """Per class index, the IoU of two class maps, and the number of pixels compared.

    Pixels either map leaves out (:data:`~trainer.metrics.IGNORE`) or outside ``valid`` are not
    compared. A class neither map gives a compared pixel has IoU NaN.

    Raises:
        ValueError: if the maps (and ``valid``) differ in shape.
    """
    if first.shape != second.shape or (valid is not None and valid.shape != first.shape):
        raise ValueError(f"class maps of shapes {first.shape} and {second.shape} cannot be compared")
    keep = (first != IGNORE) & (second != IGNORE)
    if valid is not None:
        keep &= valid
    counts = confusion(second, np.where(keep, first, IGNORE), classes)  # rows: first, columns: second
    both = np.diag(counts).astype(np.float64)
    union = counts.sum(axis=0) + counts.sum(axis=1) - np.diag(counts)
    ious = [float(b / u) if u else math.nan for b, u in zip(both, union, strict=True)]
    return ious, int(counts.sum())


def class_ious(maps: Sequence[npt.NDArray[np.uint8]], classes: int,
               valid: ValidMask = None) -> tuple[list[float], int]:  # fmt: skip
    """Per class index, the mean IoU over the pairs of ``maps`` for which it is defined; pixels compared.

    Raises:
        ValueError: with fewer than two maps, or maps of different shapes.
    """
    if len(maps) < 2:
        raise ValueError(f"agreement needs two class maps or more, not {len(maps)}")
    per_pair, pixels = [], 0
    for first, second in itertools.combinations(maps, 2):
        ious, compared = pair_iou(first, second, classes, valid)
        per_pair.append(ious)
        pixels += compared
    values = np.asarray(per_pair, dtype=np.float64)
    means = [_nanmean(values[:, k]) for k in range(classes)]
    return means, pixels


def tile_score(ious: Sequence[float]) -> float:
    """A tile's agreement from its IoU per class index (background first): see the module docstring."""
    drawn = [v for v in ious[1:] if not math.isnan(v)]
    if drawn:
        return float(np.mean(drawn))
    return float(ious[0]) if ious else math.nan


def summarise(tiles: Iterable[TileAgreement], lowest: int = 5) -> AgreementSummary:
    """The compared tiles' mean agreement, mean IoU per class and the ``lowest`` lowest tiles."""
    compared = sorted((t for t in tiles if t.compared), key=lambda t: (t.agreement, t.task_id))
    names: list[str] = list(compared[0].class_iou) if compared else []
    per_class = {
        name: _nanmean(np.asarray([t.class_iou.get(name, math.nan) for t in compared])) for name in names
    }
    mean = float(np.mean([t.agreement for t in compared])) if compared else math.nan
    return AgreementSummary(len(compared), mean, per_class, compared[:lowest])


def lowest_tiles(tiles: Iterable[TileAgreement], count: int | None = None,
                 below: float | None = None) -> list[TileAgreement]:  # fmt: skip
    """The compared tiles lowest first: those under ``below`` (when given), at most ``count`` of them.

    Raises:
        AgreementError: if neither ``count`` nor ``below`` is given, or ``count`` is below 1.
    """
    check_choice(count, below)
    chosen = sorted((t for t in tiles if t.compared), key=lambda t: (t.agreement, t.task_id))
    if below is not None:
        chosen = [t for t in chosen if t.agreement < below]
    return chosen if count is None else chosen[:count]


def check_choice(count: int | None, below: float | None) -> None:
    """Check a choice of tiles to review: a number of tiles (1 or more), a threshold, or both.

    Raises:
        AgreementError: if neither is given, or ``count`` is below 1.
    """
    if count is None and below is None:
        raise AgreementError("say which tiles to review: a number of tiles, an agreement threshold, or both")
    if count is not None and count < 1:
        raise AgreementError(f"the number of tiles to review must be 1 or more, not {count}")


def _nanmean(values: npt.NDArray[np.float64]) -> float:
    defined = values[~np.isnan(values)]
    return float(defined.mean()) if defined.size else math.nan


# --- from Label Studio tasks ----------------------------------------------------------------------


def annotator_maps(
    task: LabelledTask,
    tile: TileRecord,
    classes: Sequence[LabelClass],
    labelling: Labelling = "exhaustive",
) -> tuple[dict[str, npt.NDArray[np.uint8]], list[Problem]]:
    """Each annotator's class map of a task (training's rules, their annotations merged), and problems.

    An annotator none of whose annotations can be used (:func:`trainer.harvest.harvest` says why) has no
    map.
    """
    by_author: dict[str, list[Annotation]] = {}
    for annotation in task.submitted:
        by_author.setdefault(annotation.annotator, []).append(annotation)
    maps, problems = {}, []
    for author, theirs in sorted(by_author.items()):
        alone = LabelledTask(id=task.id, annotations=tuple(theirs))
        found = harvest([alone], {task.id: tile}, classes, labelling)
        problems += found.problems
        if found.tiles:
            maps[author] = found.tiles[0].target
    return maps, problems


def tile_agreement(
    task: LabelledTask,
    tile: TileRecord,
    classes: Sequence[LabelClass],
    labelling: Labelling = "exhaustive",
    valid: ValidMask = None,
) -> tuple[TileAgreement, list[Problem]]:
    """The agreement of a task's annotators on its tile (NaN scores with fewer than two usable ones)."""
    names = class_names(classes)
    maps, problems = annotator_maps(task, tile, classes, labelling)
    authors = len({a.annotator for a in task.submitted})
    if len(maps) < 2:
        ious, pixels = [math.nan] * len(names), 0
    else:
        ious, pixels = class_ious(list(maps.values()), len(names), valid)
    score = tile_score(ious) if pixels else math.nan
    result = TileAgreement(task.id, tile.id, tile.raster_id, tuple(maps), authors, pixels,
                           dict(zip(names, ious, strict=True)), score)  # fmt: skip
    return result, problems


def measure(
    tasks: Iterable[LabelledTask],
    tiles_by_task: Mapping[int, TileRecord],
    classes: Sequence[LabelClass],
    labelling: Labelling = "exhaustive",
    valid_of: Callable[[TileRecord], ValidMask] | None = None,
) -> Measured:
    """The agreement of every task with submitted annotations of two distinct authors or more.

    ``valid_of`` gives a tile's valid pixels (e.g. :class:`RasterValidity`); None compares every pixel.
    Tasks with one author are left out (nothing to compare); tasks without a tile are reported.
    """
    found = Measured()
    for task in tasks:
        if len({a.annotator for a in task.submitted}) < 2:
            continue
        tile = tiles_by_task.get(task.id)
        if tile is None:
            found.problems.append(f"task {task.id}: no tile in the registry for this task; not compared")
            continue
        valid = valid_of(tile) if valid_of is not None else None
        result, problems = tile_agreement(task, tile, classes, labelling, valid)
        found.tiles.append(result)
        found.problems.extend(str(p) for p in problems)
    return found


class RasterValidity:
    """Reads tiles' valid-pixel masks from their source rasters (display bands, as the import did).

    A raster that cannot be read is reported once in :attr:`problems`; its tiles compare every pixel.
    """

    def __init__(self, rasters: Mapping[int, RasterRecord]) -> None:
        """Masks of tiles of ``rasters`` (registry id -> record)."""
        self._rasters = rasters
        self.problems: list[str] = []
        self._unreadable: set[int] = set()

    def __call__(self, tile: TileRecord) -> ValidMask:
        """The tile's valid pixels, or None when its raster cannot be read."""
        raster = self._rasters.get(tile.raster_id)
        if raster is None or tile.raster_id in self._unreadable:
            return None
        try:
            return window_valid(raster.path, raster.display_bands, tile.window)
        except RasterioIOError as exc:
            self._unreadable.add(tile.raster_id)
            self.problems.append(
                f"{raster.path}: cannot read its nodata mask ({exc}); its tiles are compared on every pixel"
            )
            return None


# --- a project ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProjectAgreement:
    """A project's agreement as just measured from Label Studio, with its rasters (registry id -> record)."""

    project_id: int
    measured: Measured
    rasters: Mapping[int, RasterRecord]
    class_names: list[str]


def measure_project(
    config: Config, client: LabelStudioClient, tasks: Sequence[LabelledTask] | None = None
) -> ProjectAgreement:
    """Measure the configured project's agreement and store it for the dashboard and ``geolabel status``.

    ``tasks``: the project's labelled tasks when the caller already read them (one read per command);
    None reads them here.

    Raises:
        AgreementError: if nothing was imported for the project yet.
        LabelStudioError: if Label Studio cannot be read.
    """
    project = load_project_tiles(config, AgreementError)
    project_id, rasters, tiles = project.project_id, project.rasters, project.by_task()
    if tasks is None:
        tasks = client.labelled_tasks(project_id)
    validity = RasterValidity(rasters)
    found = measure(tasks, tiles, config.classes, config.trainer.labelling, validity)
    found.problems.extend(validity.problems)
    save_agreement(config.registry_path, project_id, found.tiles, now())
    return ProjectAgreement(project_id, found, rasters, class_names(config.classes))


# --- review ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ReviewSent:
    """Tiles sent back to Label Studio's queue, and the id of the Data Manager tab that lists them."""

    view_id: int
    tiles: list[TileAgreement]


def send_to_review(
    client: LabelStudioClient, project_id: int, tiles: Sequence[TileAgreement], first: bool = True
) -> ReviewSent:
    """Put ``tiles``' tasks back in the queue for one more annotator, and list exactly them in a tab.

    Each task's overlap becomes its authors + 1, so Label Studio serves it again to someone who has not
    labelled it (:meth:`~geolabel.lsclient.LabelStudioClient.reopen_tasks`); ``first`` serves them
    before the rest of the queue. The tab :data:`~geolabel.lsclient.REVIEW_VIEW_TITLE` lists exactly
    these tasks (none when ``tiles`` is empty). Sending the same tiles again changes nothing.

    Raises:
        LabelStudioError: if Label Studio refuses a change.
    """
    overlaps = {t.task_id: t.authors + 1 for t in tiles}
    client.reopen_tasks(project_id, overlaps, first)
    view = client.ensure_review_view(project_id, list(overlaps))
    return ReviewSent(view, list(tiles))


@dataclass(frozen=True)
class ReviewReport:
    """What ``geolabel review`` did: the project measured, the tiles chosen (lowest first) and their rows.

    ``sent`` is None on a dry run (Label Studio left unchanged).
    """

    measured: ProjectAgreement
    chosen: list[TileAgreement]
    rows: list[dict[str, object]]
    sent: ReviewSent | None


def review(
    config: Config,
    client: LabelStudioClient,
    count: int | None = None,
    below: float | None = None,
    send: bool = True,
    first: bool = True,
) -> ReviewReport:
    """Measure the project's agreement (one read of Label Studio), store it, pick the tiles to review.

    The tiles are the lowest ``count`` and/or those below ``below`` (:func:`lowest_tiles`); with ``send``
    they go back to Label Studio's queue and its review tab (:func:`send_to_review`, ``first``: served
    before the rest of the queue).

    Raises:
        AgreementError: if nothing was imported, or neither ``count`` nor ``below`` is given.
        LabelStudioError: if Label Studio cannot be read or refuses a change.
    """
    check_choice(count, below)  # before reading Label Studio
    measured = measure_project(config, client)
    chosen = lowest_tiles(measured.measured.tiles, count, below)
    sent = send_to_review(client, measured.project_id, chosen, first) if send else None
    return ReviewReport(measured, chosen, review_rows(chosen, measured.rasters, measured.class_names), sent)


def review_rows(
    tiles: Sequence[TileAgreement], rasters: Mapping[int, RasterRecord], names: Sequence[str]
) -> list[dict[str, object]]:
    """One row per tile for a review list: task, tile, raster path, agreement, IoU per class, annotators.

    Columns: ``task_id``, ``tile_id``, ``raster``, ``agreement``, one :func:`iou_fields` column per
    class name of ``names`` (empty where undefined), ``annotators`` (``;``-separated).
    """
    fields = iou_fields(names)
    rows = []
    for tile in tiles:
        raster = rasters.get(tile.raster_id)
        row: dict[str, object] = {
            "task_id": tile.task_id,
            "tile_id": tile.tile_id,
            "raster": raster.path if raster is not None else "",
            "agreement": _rounded(tile.agreement),
        }
        row.update({fields[n]: _rounded(tile.class_iou.get(n, math.nan)) for n in names})
        row["annotators"] = ";".join(tile.annotators)
        rows.append(row)
    return rows


def write_review_csv(path: Path, rows: Sequence[Mapping[str, object]], names: Sequence[str]) -> None:
    """Write :func:`review_rows` as CSV (UTF-8, header always, even without rows)."""
    columns = ["task_id", "tile_id", "raster", "agreement", *iou_fields(names).values(), "annotators"]
    with path.open("w", newline="", encoding="utf-8") as out:
        writer = csv.DictWriter(out, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)


def _rounded(value: float) -> str:
    return "" if math.isnan(value) else f"{value:.4f}"


# --- stored results -------------------------------------------------------------------------------


@dataclass(frozen=True)
class StoredAgreement:
    """A project's agreement as last measured (``measured_at``, UTC ISO time; empty: never)."""

    measured_at: str
    tiles: list[TileAgreement]


def save_agreement(
    path: str | Path, project_id: int, tiles: Iterable[TileAgreement], measured_at: str
) -> None:
    """Replace the project's stored agreement with ``tiles`` (one transaction)."""
    rows = [
        (project_id, t.task_id, t.tile_id, t.raster_id, json.dumps(list(t.annotators)), t.authors, t.pixels,
         None if math.isnan(t.agreement) else t.agreement, _ious_json(t.class_iou), measured_at)
        for t in tiles
    ]  # fmt: skip
    with connect(path, SCHEMA) as conn:
        conn.execute("DELETE FROM tile_agreement WHERE project_id = ?", (project_id,))
        conn.executemany("INSERT INTO tile_agreement VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
        conn.execute("INSERT OR REPLACE INTO agreement_measures VALUES (?, ?)", (project_id, measured_at))


def load_agreement(path: str | Path, project_id: int) -> StoredAgreement:
    """The project's stored agreement, by task id (empty before the first measure, or none compared).

    ``measured_at`` is the last measure's time even when it found no tile with two annotators.
    """
    if not Path(path).is_file():
        return StoredAgreement("", [])
    with connect(path, SCHEMA) as conn:
        rows = conn.execute(
            "SELECT task_id, tile_id, raster_id, annotators, authors, pixels, agreement, class_iou, "
            "measured_at FROM tile_agreement WHERE project_id = ? ORDER BY task_id",
            (project_id,),
        ).fetchall()
        measure = conn.execute(
            "SELECT measured_at FROM agreement_measures WHERE project_id = ?", (project_id,)
        ).fetchone()
    tiles = [
        TileAgreement(int(task), str(tile), int(raster), tuple(json.loads(who)), int(authors), int(pixels),
                      _ious_from_json(ious), math.nan if score is None else float(score))
        for task, tile, raster, who, authors, pixels, score, ious, _ in rows
    ]  # fmt: skip
    return StoredAgreement(str(measure[0]) if measure else (str(rows[0][-1]) if rows else ""), tiles)


def _ious_json(ious: Mapping[str, float]) -> str:
    return json.dumps({name: None if math.isnan(v) else v for name, v in ious.items()})


def _ious_from_json(text: str) -> dict[str, float]:
    return {str(k): math.nan if v is None else float(v) for k, v in json.loads(text).items()}


def iou_field(name: str) -> str:
    """A class's IoU field in tiles.gpkg: ``iou_`` + its name in lower-case ASCII letters, digits, ``_``."""
    ascii_name = unicodedata.normalize("NFKD", name).encode("ascii", "ignore").decode().lower()
    return "iou_" + (re.sub(r"[^0-9a-z]+", "_", ascii_name).strip("_") or "class")


def iou_fields(names: Sequence[str]) -> dict[str, str]:
    """Per class name, its field (:func:`iou_field`); names that would collide get their position added.

    For example ``{"background": "iou_background", "Red roof": "iou_red_roof"}``.
    """
    fields: dict[str, str] = {}
    taken: set[str] = set()
    for position, name in enumerate(names):
        candidate = iou_field(name)
        if candidate in taken:
            candidate = f"{candidate}_{position}"
        taken.add(candidate)
        fields[name] = candidate
    return fields
