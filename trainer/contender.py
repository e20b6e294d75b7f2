"""Models that compete with the round's U-Net on the same validation tiles.

A round trains its U-Net, then offers the same labelled tiles, split the same way, to each
:class:`Contender` it was given (the command line gives the SAM-feature head of
:mod:`ml_backend.samhead` when a SAM checkpoint is configured: the trainer does not know SAM).
A contender trains, scores itself on the validation tiles with the round's metric, and returns a
:class:`ContenderResult`. The round records every contender's scores and which model won (the
best mean IoU; the U-Net on a tie), saves the winner's files in the version folder, and the
backend serves pre-annotations from the winner (:data:`WINNER_FILE`).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from geolabel.classes import LabelClass
from trainer.harvest import LabelledTile

logger = logging.getLogger(__name__)
#: The model that always takes part: the round's own network.
UNET = "unet"
#: In a version folder: the name of the model that won its round's validation (absent: the U-Net).
WINNER_FILE = "winner.txt"


@dataclass(frozen=True)
class ContenderResult:
    """What a contender learned: its validation scores and how to save it.

    Attributes:
        name: the contender's name (e.g. ``sam_head``), recorded as the round's winner.
        metrics: flat scores on the round's validation tiles (``miou``, ``iou_<class>``...), as
            :meth:`trainer.metrics.Metrics.flat` gives them; empty when there was no validation tile.
        save: writes the contender's files into a version folder (called only if it wins).
        detail: one line for the round record (tiles used, seconds...).
    """

    name: str
    metrics: dict[str, float]
    save: Callable[[Path], None]
    detail: str = ""


class Contender(Protocol):
    """A model trained on a round's labelled tiles beside the U-Net."""

    name: str

    def fit(
        self,
        train: Sequence[LabelledTile],
        validation: Sequence[LabelledTile],
        classes: Sequence[LabelClass],
        seed: int,
    ) -> ContenderResult | None:
        """Train on ``train``, score on ``validation``; None when it cannot take part this round.

        ``train`` and ``validation`` hold the round's tiles after nodata was set to IGNORE in their
        targets. Raise only for a real fault: the round records it as a problem and goes on with
        the U-Net alone.
        """
        ...


@dataclass(frozen=True)
class Contest:
    """What the contenders of a round did: who trained, their recorded scores, and who failed."""

    results: list[ContenderResult]
    scores: dict[str, dict[str, Any]]  # by name: flat metrics and "detail", for the round record
    problems: list[str]

    def winner(self, unet: dict[str, float]) -> ContenderResult | None:
        """The contender whose mean IoU is above the U-Net's ``unet``, the best of them; None: the U-Net."""
        best, score = None, unet.get("miou", float("nan"))
        for result in self.results:
            miou = result.metrics.get("miou", float("nan"))
            if not math.isnan(miou) and (math.isnan(score) or miou > score):
                best, score = result, miou
        return best


def contest(
    contenders: Sequence[Contender],
    train: Sequence[LabelledTile],
    validation: Sequence[LabelledTile],
    classes: Sequence[LabelClass],
    seed: int,
) -> Contest:
    """Train and score each contender; one that raises is a problem, never the round's failure."""
    results, scores, problems = [], {}, []
    for contender in contenders:
        try:
            result = contender.fit(train, validation, classes, seed)
        except Exception as exc:  # a contender never fails the round
            logger.exception("contender %s failed", contender.name)
            problems.append(f"{contender.name} not trained: {type(exc).__name__}: {exc}")
            continue
        if result is not None:
            results.append(result)
            scores[result.name] = {**result.metrics, "detail": result.detail}
    return Contest(results, scores, problems)


def winner_files(winner: ContenderResult | None) -> Callable[[Path], None] | None:
    """Writes the winning contender's files and :data:`WINNER_FILE` into a version folder (None: U-Net)."""
    if winner is None:
        return None

    def write(folder: Path) -> None:
        winner.save(folder)
        (folder / WINNER_FILE).write_text(winner.name + "\n", encoding="utf-8")

    return write
