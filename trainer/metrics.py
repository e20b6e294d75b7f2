"""Segmentation metrics from a confusion matrix: per-class IoU, F1, precision, recall, overall accuracy.

Background (index 0) is a class like the others in the confusion matrix: labelled background
predicted as a class is a false positive of that class, and background has its own scores
(``background_iou`` ...). Only :attr:`Metrics.miou` leaves it out (see there).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

#: Target value of pixels left out of training and scoring: drawn ``unsure``, annotators disagreeing,
#: nodata, and undrawn pixels in sparse labelling. They count neither as a class nor as background.
IGNORE = 255


def confusion(
    predicted: npt.NDArray[np.integer], target: npt.NDArray[np.integer], classes: int
) -> npt.NDArray[np.int64]:
    """``(classes, classes)`` counts, rows = target index, columns = predicted index.

    Pixels whose target is :data:`IGNORE` are left out. ``predicted`` and ``target`` hold class
    indices ``0 .. classes - 1`` (0 = background).
    """
    keep = target != IGNORE
    pairs = target[keep].astype(np.int64) * classes + predicted[keep].astype(np.int64)
    return np.bincount(pairs, minlength=classes * classes).reshape(classes, classes)


@dataclass(frozen=True)
class ClassMetrics:
    """Scores of one class (NaN where the class is absent from both target and prediction)."""

    iou: float
    f1: float
    precision: float
    recall: float
    support: int  # labelled pixels of this class


@dataclass(frozen=True)
class Metrics:
    """Validation scores: per class index (0 = background) and overall."""

    per_class: tuple[ClassMetrics, ...]
    accuracy: float
    pixels: int

    @property
    def miou(self) -> float:
        """Mean IoU over the foreground classes present in target or prediction, NaN if none.

        Background is left out of the mean (its IoU is ``per_class[0]``): it covers most pixels and
        would lift the mean while the classes stay poor. A background pixel predicted as a class
        still lowers that class's IoU, so over-predicting a class is penalised.
        """
        values = [m.iou for m in self.per_class[1:] if not np.isnan(m.iou)]
        return float(np.mean(values)) if values else float("nan")

    def flat(self, names: list[str]) -> dict[str, float]:
        """``{"miou", "accuracy", "<name>_iou", "<name>_f1", ...}`` with ``names`` per class index.

        Undefined scores (NaN: a class absent from both target and prediction) are left out, so the
        result is plain JSON.
        """
        flat = {"miou": self.miou, "accuracy": self.accuracy}
        for name, scores in zip(names, self.per_class, strict=True):
            for key in ("iou", "f1", "precision", "recall"):
                flat[f"{name}_{key}"] = getattr(scores, key)
        return {key: value for key, value in flat.items() if not np.isnan(value)}


def metrics_from_confusion(matrix: npt.NDArray[np.int64]) -> Metrics:
    """Per-class and overall scores of a confusion matrix (see :func:`confusion`)."""
    true_positive = np.diag(matrix).astype(np.float64)
    labelled = matrix.sum(axis=1).astype(np.float64)
    predicted = matrix.sum(axis=0).astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = true_positive / (labelled + predicted - true_positive)
        precision = true_positive / predicted
        recall = true_positive / labelled
        f1 = 2 * true_positive / (labelled + predicted)
    total = int(matrix.sum())
    per_class = tuple(
        ClassMetrics(float(iou[i]), float(f1[i]), float(precision[i]), float(recall[i]), int(labelled[i]))
        for i in range(len(matrix))
    )
    accuracy = float(true_positive.sum() / total) if total else float("nan")
    return Metrics(per_class, accuracy, total)


def not_worse(new: dict[str, float], old: dict[str, float]) -> bool:
    """True unless ``new``'s mean IoU is below ``old``'s (a missing or NaN old score never blocks).

    Both are :meth:`Metrics.flat` dicts; a missing or NaN new score is worse than any old one.
    """
    old_miou, new_miou = old.get("miou", float("nan")), new.get("miou", float("nan"))
    if np.isnan(old_miou):
        return True
    return not np.isnan(new_miou) and new_miou >= old_miou
