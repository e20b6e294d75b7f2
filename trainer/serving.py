"""The order Label Studio serves a round's tiles in: the selected batch first, in pick order.

Label Studio's uncertainty sampling serves, among the unlabelled tasks holding a prediction of the
project's model version, the one whose prediction has the lowest ``score`` and that no other annotator
holds (``_try_uncertainty_sampling`` then ``_get_first_unlocked`` in Label Studio's
``projects/functions/next_task.py``). A prediction's score is the tile's confidence
(:func:`trainer.scoring.prediction_score`), but a round's batch (:func:`trainer.selection.select_next`)
is picked for uncertainty *and* diversity: served by confidence alone, annotators would not label it.

So a round pushes *serving scores* (:func:`serving_scores`):

- the tile at rank ``r`` (0 first) of a batch of ``B`` tiles is pushed with
  ``SERVING_FLOOR * r / B`` (:func:`batch_score`): below 1e-6, in pick order;
- every other prediction keeps its confidence, raised to at least :data:`SERVING_FLOOR` (1e-6: a
  difference only for a tile no pixel of which the model leans either way).

So the batch comes before every other task, in pick order, whatever the other tiles' confidence, and also
before the predictions the ML backend makes later, with their confidence, for tiles the round did not
score. A tile's serving score follows from its confidence and, for a batch tile, its rank and the batch
size, all kept in the round's record (:class:`trainer.rounds.QueueEntry`, with the true confidence and
uncertainty): anyone serving the same prediction again (:func:`served_score`) gives the same score.
"""

from __future__ import annotations

from collections.abc import Sequence

from geolabel.errors import LabelStudioError, LabelStudioUnreachableError
from geolabel.lsclient import QUEUE_VIEW_TITLE, LabelStudioClient

__all__ = ["SERVING_FLOOR", "batch_score", "keep_queue_view", "served_score", "serving_scores"]

#: The lowest score a prediction outside a round's batch is pushed with; the batch's scores lie below it.
SERVING_FLOOR = 1e-6


def batch_score(rank: int, size: int) -> float:
    """The score pushed for the tile at ``rank`` (0 first) of a batch of ``size`` tiles: below the floor.

    Raises:
        ValueError: if the rank is not one of the batch's.
    """
    if not 0 <= rank < size:
        raise ValueError(f"rank {rank} is not one of a batch of {size} tiles")
    return SERVING_FLOOR * rank / size


def served_score(confidence: float, rank: int | None, size: int) -> float:
    """The score to give a prediction of confidence ``confidence`` (0..1) of a round's model version.

    ``rank``: the tile's rank in that round's batch of ``size`` tiles, or None when it is not in it.

    Raises:
        ValueError: if the confidence lies outside 0..1 or the rank is not one of the batch's.
    """
    if not 0.0 <= confidence <= 1.0:
        raise ValueError(f"confidence must lie in 0..1; got {confidence!r}")
    return max(confidence, SERVING_FLOOR) if rank is None else batch_score(rank, size)


def serving_scores(confidence: Sequence[float], picks: Sequence[int]) -> list[float]:
    """The score to push with each prediction so that Label Studio serves ``picks`` first, in order.

    Args:
        confidence: each pushed prediction's confidence (``1 - uncertainty``), 0..1.
        picks: indices into ``confidence`` of the round's batch, in pick order (rank 0 first).

    Returns:
        One score per prediction, aligned with ``confidence`` (:func:`served_score`): rank ``r`` of the
        ``B`` picks gets ``SERVING_FLOOR * r / B``; the others keep their confidence, at least
        :data:`SERVING_FLOOR`.

    Raises:
        ValueError: if a pick is out of range or repeated, or a confidence lies outside 0..1.
    """
    if len(set(picks)) != len(picks):
        raise ValueError(f"the batch names a tile twice: {list(picks)}")
    wrong = [p for p in picks if not 0 <= p < len(confidence)]
    if wrong:
        raise ValueError(f"pick {wrong[0]} is not one of the {len(confidence)} scored tiles")
    rank = {index: r for r, index in enumerate(picks)}
    return [served_score(c, rank.get(i), len(picks)) for i, c in enumerate(confidence)]


def keep_queue_view(client: LabelStudioClient, project_id: int) -> str | None:
    """Keep the project's "Next to label" Data Manager tab (:meth:`LabelStudioClient.ensure_queue_view`).

    Returns:
        None, or the problem to record in the round when Label Studio refused the tab (the round goes on:
        the tab only shows the order; uncertainty sampling serves it without the tab).

    Raises:
        LabelStudioUnreachableError: if Label Studio cannot be reached (the round's next call would fail).
    """
    try:
        client.ensure_queue_view(project_id)
    except LabelStudioUnreachableError:
        raise
    except LabelStudioError as exc:
        return f"the Data Manager tab {QUEUE_VIEW_TITLE!r} was not kept up to date: {exc}"
    return None
