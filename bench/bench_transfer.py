"""Transfer bench: does starting from an earlier model save labels on a new area, and which selection helps?

A simulated annotator (its answer is the ground-truth mask) labels the chips of one *held-out* area
of ``fair_hotosm``; a *prior* is trained first on the other areas (an earlier project's model).
Held out by default: area 1 (prior from areas 2, 4, 5) and area 5 (prior from areas 1, 2, 4).

For each held-out area, seed and *start* x *strategy*, the model labels ``--initial`` random chips,
then a batch per round, each batch as large as the chips labelled so far (4, 8, 16, 32, ...), up to
the area's budget; the model is warm-started from the previous round, as the trainer does. A fixed
quarter of the area's chips are test chips, never labelled. Starts:

- ``scratch``: random initial weights (the trainer's default);
- ``prior``: the prior's weights (``trainer.transfer.adapt_prior``) and, as the trainer does for as
  many bands (``trainer.transfer.starting_manifest``), the prior's input normalisation;
- ``prior-own``: the prior's weights with the new project's own normalisation (a comparison);
- ``prior-frozen-bn``: ``prior`` with the batch-norm running statistics kept as the prior's (momentum 0)
  while fine-tuning; training still normalises with each batch's statistics (a comparison);
- ``prior-eval-bn``: ``prior`` with the batch-norm layers in evaluation mode while fine-tuning: the
  prior's statistics in training and evaluation, only their scale and shift learn (a comparison:
  ``trainer.fit.train`` puts every layer in training mode);
- ``encoder``: an ImageNet / remote-sensing ResNet-18 encoder from ``--encoder-weights FILE``
  (``trainer.transfer.load_encoder_weights``), measured only when the file is given;
- ``sam``: the SAM-feature head (``ml_backend.samhead.train_head`` on the chips' SAM embeddings, a
  new head each round, as a round's contender trains it) from ``--sam-checkpoint FILE``
  (``--sam-type``), measured only when the file is given; its strategies pick by the head's own
  probabilities and the pooled embeddings.

Strategies: ``random`` (random order), ``skip-empty`` (the same order, skipping chips the model
predicts empty), ``uncertainty`` (what a round does: :func:`trainer.selection.select_next` on every
unlabelled chip of the area, the peak uncertainty with feature-space diversity), and the
acquisitions tried for issue #15 (``--strategies``: ``acq-<name>`` ranks by :data:`ACQUISITIONS`
``[name]`` with the same diversity, ``acq-<name>-nodiv`` without, ``cold-<name>`` takes the first
batch by k-centre greedy in feature space (diversity only) then ``acq-<name>``, ``kcenter`` every
batch by k-centre). Reported per area and seed: the learning curves, and the labels each
needs to reach from-scratch random's final IoU. Results: ``bench/results/<--out>.{json,png}``.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import multiprocessing
import os
import tempfile
import time
import types
import zlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import torch
from bench_active_learning import DEFAULT_DATA, OUT, labels_to_reach, manifest_for, read_chips

from trainer.fit import Sample, TrainSettings, evaluate, seed_torch, train
from trainer.model import build_model
from trainer.predictions import quantise
from trainer.selection import (
    TileScore,
    peak_uncertainty,
    pixel_uncertainty,
    score_tiles,
    select_batch,
    select_next,
)
from trainer.transfer import adapt_prior, load_encoder_weights
from trainer.versions import InputSpec, ModelManifest

STARTS = ("scratch", "prior", "prior-own", "prior-frozen-bn", "prior-eval-bn", "encoder", "sam")
#: Share of predicted foreground pixels under which a chip counts as empty (as bench_active_learning).
EMPTY = 0.002


@dataclass(frozen=True)
class Data:
    """Every chip as read: raw pixels (not normalised), masks, names and areas."""

    names: list[str]
    areas: list[str]
    raw: npt.NDArray[np.float32]  # (N, bands, H, W)
    masks: npt.NDArray[np.uint8]  # (N, H, W)


def read_data(folder: Path, scale: int) -> Data:
    """The chips of ``folder`` with their area from ``chips.json``.

    Raises:
        SystemExit: if ``chips.json`` is missing or does not name every chip's area.
    """
    names, raw, masks, _ = read_chips(folder, scale)
    listing = folder / "chips.json"
    if not listing.is_file():
        raise SystemExit(f"{listing}: missing; the transfer bench needs each chip's area")
    area_of = {entry["chip"]: str(entry["area"]) for entry in json.loads(listing.read_text())}
    missing = [n for n in names if n not in area_of]
    if missing:
        raise SystemExit(f"{listing}: no area for {len(missing)} chips, e.g. {missing[0]}")
    return Data(names, [area_of[n] for n in names], raw, masks)


def normalise(
    raw: npt.NDArray[np.float32], stats: npt.NDArray[np.float32]
) -> tuple[npt.NDArray[np.float32], InputSpec]:
    """``raw`` normalised with the per-band mean and standard deviation of ``stats`` (a project's input)."""
    mean, std = stats.mean(axis=(0, 2, 3)), stats.std(axis=(0, 2, 3)) + 1e-6
    spec = InputSpec(bands=list(range(1, raw.shape[1] + 1)), mean=mean.tolist(), std=std.tolist())
    images = (raw - mean[None, :, None, None]) / std[None, :, None, None]
    return images.astype(np.float32), spec


@dataclass(frozen=True)
class Holdout:
    """One held-out area (the new project) and the areas its prior learned from (the earlier project).

    ``images`` and ``masks`` are the held-out area's chips, normalised with its own statistics (the
    new project's input, from its labellable chips); ``test`` and ``pool`` index them. The prior's
    chips are normalised with the prior areas' statistics (the earlier project's input), and so are
    ``images_as_prior``, the held-out chips as a version started from the prior reads them
    (:func:`trainer.transfer.starting_manifest` keeps the prior's normalisation for as many bands).
    """

    area: str
    images: npt.NDArray[np.float32]
    images_as_prior: npt.NDArray[np.float32]
    masks: npt.NDArray[np.uint8]
    test: list[int]
    pool: list[int]
    budget: int
    target: ModelManifest
    prior_areas: list[str]
    prior_images: npt.NDArray[np.float32]
    prior_masks: npt.NDArray[np.uint8]
    prior: ModelManifest


def make_holdout(data: Data, area: str, args: argparse.Namespace) -> Holdout:
    """Split ``area`` into fixed test chips and labellable chips; the other areas feed its prior."""
    inside = [i for i, a in enumerate(data.areas) if a == area]
    outside = [i for i, a in enumerate(data.areas) if a != area]
    if not inside:
        raise SystemExit(f"no chip of area {area!r}; areas: {', '.join(sorted(set(data.areas)))}")
    count = round(len(inside) * args.test_share)
    test = sorted(
        int(i) for i in np.random.default_rng(args.test_seed).choice(len(inside), count, replace=False)
    )
    pool = [i for i in range(len(inside)) if i not in set(test)]
    images, spec = normalise(data.raw[inside], data.raw[inside][pool])
    prior_images, prior_spec = normalise(data.raw[outside], data.raw[outside])
    as_prior, _ = normalise(data.raw[inside], data.raw[outside])
    classes = int(data.masks.max()) + 1
    budget = min(len(pool), round(len(pool) * args.budget_share))
    return Holdout(
        area,
        images,
        as_prior,
        data.masks[inside],
        test,
        pool,
        budget,
        manifest_for(spec, classes, "target"),
        sorted(set(data.areas) - {area}),
        prior_images,
        data.masks[outside],
        manifest_for(prior_spec, classes, "prior"),
    )


def schedule(initial: int, budget: int) -> list[int]:
    """Labelled chips after each round: ``initial``, then doubling, ending exactly at ``budget``."""
    counts = [min(initial, budget)]
    while counts[-1] < budget:
        counts.append(min(2 * counts[-1], budget))
    return counts


# ---------------------------------------------------------------- the acquisitions tried for issue #15


def _entropy(tile: TileScore) -> torch.Tensor:
    return pixel_uncertainty(torch.from_numpy(tile.probabilities), "entropy")


def mean_entropy(tile: TileScore, _weights: npt.NDArray[np.float64]) -> float:
    """Mean pixel entropy (the trainer's tile uncertainty before issue #15)."""
    return float(_entropy(tile).mean())


def foreground_entropy(tile: TileScore, _weights: npt.NDArray[np.float64]) -> float:
    """Uncertainty of the rare classes: pixel entropy weighted by the probability of not being background."""
    return float((_entropy(tile) * (1 - torch.from_numpy(tile.probabilities[0]))).mean())


def balanced_entropy(tile: TileScore, weights: npt.NDArray[np.float64]) -> float:
    """Class-balanced: pixel entropy weighted by the inverse labelled share of the pixel's predicted class."""
    predicted = tile.probabilities.argmax(axis=0)
    return float((_entropy(tile).numpy() * weights[predicted]).mean())


def top_pixels(tile: TileScore, _weights: npt.NDArray[np.float64], share: float = 0.05) -> float:
    """Region-level: mean entropy of the tile's most uncertain ``share`` of pixels."""
    values = _entropy(tile).flatten()
    count = max(1, round(share * values.numel()))
    return float(values.topk(count).values.mean())


def block_impurity(tile: TileScore, _weights: npt.NDArray[np.float64], blocks: int = 8) -> float:
    """Region-level (after RIPU): per block of an 8 x 8 grid, mean entropy x impurity of the predicted
    classes (entropy of their histogram); the tile scores the mean of its best quarter of blocks."""
    entropy = _entropy(tile).numpy()
    predicted = tile.probabilities.argmax(axis=0)
    classes = tile.probabilities.shape[0]
    scores = []
    for rows, cols in itertools.product(_cuts(entropy.shape[0], blocks), _cuts(entropy.shape[1], blocks)):
        share = np.bincount(predicted[rows, cols].ravel(), minlength=classes) / predicted[rows, cols].size
        impurity = -(share[share > 0] * np.log(share[share > 0])).sum() / math.log(classes)
        scores.append(float(entropy[rows, cols].mean()) * impurity)
    best = sorted(scores, reverse=True)[: max(1, len(scores) // 4)]
    return float(np.mean(best))


def balanced_top_pixels(tile: TileScore, weights: npt.NDArray[np.float64], share: float = 0.05) -> float:
    """Class-balanced and region-level: the top ``share`` of class-weighted pixel entropies, averaged."""
    weighted = _entropy(tile).numpy() * weights[tile.probabilities.argmax(axis=0)]
    count = max(1, round(share * weighted.size))
    return float(np.sort(weighted, axis=None)[-count:].mean())


def _cuts(length: int, parts: int) -> list[slice]:
    edges = np.linspace(0, length, parts + 1).round().astype(int)
    return [slice(int(a), int(b)) for a, b in itertools.pairwise(edges) if b > a]


Acquisition = Callable[[TileScore, npt.NDArray[np.float64]], float]
#: Tile scores tried (each ranks with uncertainty x feature distance, ``select_batch``, diversity 1).
ACQUISITIONS: dict[str, Acquisition] = {
    "entropy": mean_entropy,
    "foreground": foreground_entropy,
    "balanced": balanced_entropy,
    "top-pixels": top_pixels,
    "blocks": block_impurity,
    "balanced-top": balanced_top_pixels,
}
#: Every strategy: baselines, the trainer's selection, the acquisitions, and diversity-only variants.
STRATEGIES = (
    "random",
    "skip-empty",
    "uncertainty",
    *(f"acq-{name}" for name in ACQUISITIONS),
    *(f"acq-{name}-nodiv" for name in ACQUISITIONS),
    "kcenter",
    *(f"cold-{name}" for name in ACQUISITIONS),
)


def class_weights(masks: Sequence[npt.NDArray[np.uint8]], classes: int) -> npt.NDArray[np.float64]:
    """``1 / (classes x labelled share)`` per class (1 for every class when shares are equal)."""
    counts = np.bincount(np.concatenate([m.ravel() for m in masks]), minlength=classes)[:classes]
    share = np.maximum(counts / max(counts.sum(), 1), 1e-3)
    return cast(npt.NDArray[np.float64], 1.0 / (classes * share))


def kcenter(features: npt.NDArray[np.float32], labelled: npt.NDArray[np.float32], size: int) -> list[int]:
    """Greedy k-centre: each pick is the candidate farthest from every labelled or picked tile."""
    return select_batch(
        np.ones(len(features)), features, labelled, size, diversity=1.0, shortlist=len(features)
    )


# ---------------------------------------------------------------- runs


@dataclass
class Run:
    """One held-out area, start, strategy and seed: the learning curve and where the time went."""

    area: str
    start: str
    strategy: str
    seed: int
    curve: list[tuple[int, float, float]]  # (labelled chips, test IoU, share of empty chips labelled)
    seconds: float = 0.0
    cpu_seconds: float = 0.0  # this process's CPU time: what the run costs on an idle core
    picked: list[list[int]] = field(default_factory=list)  # chips labelled per round (area-local index)


_worker: dict[str, object] = {}  # per worker process: the data, held-out areas, arguments, prior files


def _start_worker(args: argparse.Namespace, priors: dict[str, str], sam: dict[str, str]) -> None:
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.jobs))
    data = read_data(args.data, args.scale)
    holdouts = {a: make_holdout(data, a, args) for a in args.areas}
    _worker.update(args=args, priors=priors, sam=sam, holdouts=holdouts)


def _holdout(area: str) -> Holdout:
    return cast(dict[str, Holdout], _worker["holdouts"])[area]


def _args() -> argparse.Namespace:
    return cast(argparse.Namespace, _worker["args"])


def train_prior(area: str) -> tuple[str, float, float, float]:
    """Train the prior of held-out ``area`` on the other areas and save it.

    Returns the area, the prior's test IoU on the held-out area before any label, the seconds and
    the CPU seconds.
    """
    start, cpu = time.perf_counter(), time.process_time()
    holdout, args = _holdout(area), _args()
    seed_torch(0)
    network = build_model(holdout.prior)
    path = Path(cast(dict[str, str], _worker["priors"])[area])
    if path.is_file():  # --prior-cache
        network.load_state_dict(torch.load(path, weights_only=True))
    else:
        samples = [Sample(i, m) for i, m in zip(holdout.prior_images, holdout.prior_masks, strict=True)]
        settings = TrainSettings(args.prior_epochs, args.batch_size, args.prior_learning_rate, seed=0)
        train(network, samples, settings)
        torch.save(network.state_dict(), path)
    seconds = time.perf_counter() - start
    test = [Sample(holdout.images_as_prior[i], holdout.masks[i]) for i in holdout.test]
    return area, evaluate(network, test, holdout.target.outputs).miou, seconds, time.process_time() - cpu


def start_network(holdout: Holdout, start: str, seed: int) -> torch.nn.Module:
    """The network a run starts from (see the module doc)."""
    seed_torch(seed)
    network = build_model(holdout.target)
    if start.startswith("prior"):
        state = torch.load(cast(dict[str, str], _worker["priors"])[holdout.area], weights_only=True)
        weights, _ = adapt_prior(holdout.prior, state, holdout.target, network.state_dict())
        network.load_state_dict(weights)
    for module in network.modules():
        if start == "prior-frozen-bn" and isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.momentum = 0.0  # running statistics stay the prior's; training still uses the batch's
        if start == "prior-eval-bn" and isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.train = types.MethodType(_stay_in_eval, module)  # type: ignore[method-assign]
    if start == "encoder":
        load_encoder_weights(network, _args().encoder_weights)
    return network


def _stay_in_eval(module: torch.nn.Module, mode: bool = True) -> torch.nn.Module:
    """``train()`` of a batch-norm layer that stays in evaluation mode: the prior's statistics throughout."""
    return torch.nn.Module.train(module, False)


# ---------------------------------------------------------------- the SAM-feature head (--sam-checkpoint)

#: What the SAM-feature head start runs: it has no network to warm-start, a head is trained per round.
SAM_STRATEGIES = ("random", "skip-empty", "uncertainty")


def embed_areas(data: Data, args: argparse.Namespace, folder: Path) -> dict[str, str]:
    """SAM embeddings of every chip of each held-out area (as read, ``--scale``), saved once per area.

    Runs in this process before the runs, on every core (about 14 s a chip for vit_b on this CPU:
    SAM resizes each chip to 1024 px). Reused from ``folder`` when there (``--prior-cache``).

    Raises:
        SystemExit: if the checkpoint cannot be loaded (the message says why).
    """
    from ml_backend.errors import SamUnavailableError
    from ml_backend.sam import checkpoint_identity, load_sam

    identity = checkpoint_identity(args.sam_type, args.sam_checkpoint)
    files = {a: str(folder / f"sam-{a}-{identity}-scale{args.scale}.npz") for a in args.areas}
    engine = None
    for area, path in files.items():
        if Path(path).is_file():
            continue
        if engine is None:
            try:
                engine = load_sam(args.sam_type, args.sam_checkpoint, "cpu")
            except SamUnavailableError as exc:
                raise SystemExit(f"--sam-checkpoint: {exc}") from None
        chips = [i for i, a in enumerate(data.areas) if a == area]
        print(f"area {area}: SAM {args.sam_type} embeddings of {len(chips)} chips", flush=True)
        found = [engine.embed(np.clip(data.raw[i].transpose(1, 2, 0).round(), 0, 255).astype(np.uint8))
                 for i in chips]  # fmt: skip
        np.savez(path, features=np.stack([e.features for e in found]), original=found[0].original_size,
                 input=found[0].input_size)  # fmt: skip
    return files


def sam_run(area: str, strategy: str, seed: int) -> Run:
    """The SAM-feature head on the held-out area: a head trained on the labelled chips each round.

    Same initial chips, random order, rounds and test chips as :func:`run`; the head is
    :func:`ml_backend.samhead.train_head` with its default settings (what a round's contender trains).
    """
    from ml_backend.sam import Embedding
    from ml_backend.samhead import SamHead, evaluate_head, head_probabilities, train_head

    began, cpu = time.perf_counter(), time.process_time()
    holdout, args = _holdout(area), _args()
    stored = np.load(cast(dict[str, str], _worker["sam"])[area])
    sizes = (tuple(int(v) for v in stored["original"]), tuple(int(v) for v in stored["input"]))
    embeddings = [Embedding(f, sizes[0], sizes[1]) for f in stored["features"]]  # type: ignore[arg-type]
    labelled, order = initial_chips(holdout, seed, args)
    test = ([embeddings[i] for i in holdout.test], [holdout.masks[i] for i in holdout.test])
    torch.manual_seed(seed)
    head = SamHead(holdout.target.outputs).eval()
    result = Run(area, "sam", strategy, seed, [(0, evaluate_head(head, *test).miou, 0.0)], picked=[labelled])
    counts = schedule(args.initial, holdout.budget)
    for number in range(len(counts)):
        head, _ = train_head([embeddings[i] for i in labelled], [holdout.masks[i] for i in labelled],
                             holdout.target.outputs, seed + len(labelled))  # fmt: skip
        record(result, evaluate_head(head, *test).miou, labelled, holdout)
        if number + 1 == len(counts):
            break
        remaining = [i for i in order if i not in set(labelled)]
        size = counts[number + 1] - len(labelled)
        scored = [
            head_score(head_probabilities(head, embeddings[i]), embeddings[i].features) for i in remaining
        ]
        if strategy == "random":
            picks = remaining[:size]
        elif strategy == "skip-empty":  # the first chips of the random order not predicted empty
            shown = [i for i, s in zip(remaining, scored, strict=True) if s.foreground >= EMPTY]
            picks = list(dict.fromkeys(shown + remaining))[:size]
        else:
            known = np.stack([pooled(embeddings[i].features) for i in labelled])
            picks = [remaining[p] for p in select_next(scored, known, size)]
        result.picked.append(picks)
        labelled = labelled + picks
    result.seconds, result.cpu_seconds = (
        round(time.perf_counter() - began, 1),
        round(time.process_time() - cpu, 1),
    )
    return result


@dataclass(frozen=True)
class HeadScore:
    """A chip as the SAM head sees it: what :func:`trainer.selection.select_next` needs, and foreground."""

    peak_uncertainty: float
    features: npt.NDArray[np.float32]
    foreground: float


def head_score(probabilities: npt.NDArray[np.float32], features: npt.NDArray[np.float16]) -> HeadScore:
    """Peak uncertainty of the head's stored probabilities, pooled embedding, foreground share."""
    everywhere = np.ones(probabilities.shape[1:], dtype=bool)
    peak = peak_uncertainty(quantise(probabilities), everywhere, "entropy")
    return HeadScore(peak, pooled(features), float((probabilities.argmax(axis=0) > 0).mean()))


def pooled(features: npt.NDArray[np.float16]) -> npt.NDArray[np.float32]:
    """An embedding averaged over its cells, L2-normalised (the head's feature space for diversity)."""
    vector = features.astype(np.float32).mean(axis=(1, 2))
    return cast(npt.NDArray[np.float32], vector / max(float(np.linalg.norm(vector)), 1e-12))


def round_settings(labelled: int, seed: int, args: argparse.Namespace) -> TrainSettings:
    """A round's training: ``--epochs`` passes, at least ``--min-steps`` optimiser steps."""
    steps_per_epoch = -(-labelled // args.batch_size)
    epochs = max(args.epochs, -(-args.min_steps // steps_per_epoch))
    return TrainSettings(epochs, args.batch_size, args.learning_rate, seed=seed + labelled)


@dataclass(frozen=True)
class Labelling:
    """What a run's selection sees: the network, the held-out chips as it reads them, their masks."""

    network: torch.nn.Module
    images: npt.NDArray[np.float32]
    masks: npt.NDArray[np.uint8]

    def sample(self, index: int) -> Sample:
        """Chip ``index`` with its mask (the simulated annotator's answer)."""
        return Sample(self.images[index], self.masks[index])

    def score(self, indices: list[int]) -> list[TileScore]:
        """The trainer's tile scores of ``indices`` (every pixel valid)."""
        everywhere = np.ones(self.masks.shape[1:], dtype=bool)
        images = [self.images[i] for i in indices]
        return list(score_tiles(self.network, images, [everywhere] * len(indices), "entropy"))


def initial_chips(holdout: Holdout, seed: int, args: argparse.Namespace) -> tuple[list[int], list[int]]:
    """A seed's initial chips and its random order of the others (the same for every start and strategy)."""
    rng = np.random.default_rng([seed, int(holdout.area) if holdout.area.isdigit() else 0])
    labelled = [int(i) for i in rng.choice(holdout.pool, min(args.initial, holdout.budget), replace=False)]
    return labelled, [int(i) for i in rng.permutation(holdout.pool) if i not in set(labelled)]


def record(result: Run, miou: float, labelled: list[int], holdout: Holdout) -> None:
    """One point of the learning curve, printed."""
    empty = float(np.mean([not holdout.masks[i].any() for i in labelled]))
    result.curve.append((len(labelled), miou, empty))
    print(f"  area {result.area} {result.start:8s} {result.strategy:18s} seed {result.seed} "
          f"{len(labelled):4d} chips IoU {miou:.3f}", flush=True)  # fmt: skip


def run(area: str, start: str, strategy: str, seed: int) -> Run:
    """Label the held-out area from ``--initial`` random chips up to its budget (see the module doc)."""
    if start == "sam":
        return sam_run(area, strategy, seed)
    began, cpu = time.perf_counter(), time.process_time()
    holdout, args = _holdout(area), _args()
    labelled, order = initial_chips(holdout, seed, args)
    images = holdout.images if start in ("scratch", "prior-own", "encoder") else holdout.images_as_prior
    work = Labelling(start_network(holdout, start, seed), images, holdout.masks)
    test = [work.sample(i) for i in holdout.test]
    first = evaluate(work.network, test, holdout.target.outputs).miou
    result = Run(area, start, strategy, seed, [(0, first, 0.0)], picked=[list(labelled)])
    counts = schedule(args.initial, holdout.budget)
    for number in range(len(counts)):
        train(work.network, [work.sample(i) for i in labelled], round_settings(len(labelled), seed, args))
        record(result, evaluate(work.network, test, holdout.target.outputs).miou, labelled, holdout)
        if number + 1 == len(counts):
            break
        picks = next_batch(work, strategy, labelled, order, counts[number + 1] - len(labelled), number)
        result.picked.append(picks)
        labelled = labelled + picks
    result.seconds, result.cpu_seconds = (
        round(time.perf_counter() - began, 1),
        round(time.process_time() - cpu, 1),
    )
    return result


def next_batch(
    work: Labelling, strategy: str, labelled: list[int], order: list[int], size: int, number: int
) -> list[int]:
    """The ``size`` chips ``strategy`` labels next after round ``number`` (0: after the initial chips).

    ``order`` is the run's random order of the labellable chips (the random strategies walk it).
    """
    remaining = [i for i in order if i not in set(labelled)]
    if strategy == "random":
        return remaining[:size]
    if strategy == "skip-empty":
        return skip_empty(work, remaining, size)
    scored = work.score(remaining)
    features = np.stack([s.features for s in scored])
    known = np.stack([s.features for s in work.score(labelled)])
    if strategy == "uncertainty":  # what a round does
        return [remaining[p] for p in select_next(scored, known, size)]
    if strategy == "kcenter" or (strategy.startswith("cold-") and number == 0):
        return [remaining[p] for p in kcenter(features, known, size)]
    name = strategy.split("-", 1)[1].removesuffix("-nodiv")
    weights = class_weights([work.masks[i] for i in labelled], work.masks.max() + 1)
    uncertainty = np.array([ACQUISITIONS[name](s, weights) for s in scored])
    diversity = 0.0 if strategy.endswith("-nodiv") else 1.0
    return [remaining[p] for p in select_batch(uncertainty, features, known, size, diversity)]


def skip_empty(work: Labelling, remaining: list[int], size: int) -> list[int]:
    """The next ``size`` chips of ``remaining`` the model does not predict empty (empty ones if too few)."""
    picked: list[int] = []
    for first in range(0, len(remaining), 16):
        chunk = remaining[first : first + 16]
        picked += [i for i, s in zip(chunk, work.score(chunk), strict=True) if s.foreground >= EMPTY]
        if len(picked) >= size:
            return picked[:size]
    return (picked + [i for i in remaining if i not in set(picked)])[:size]


# ---------------------------------------------------------------- summary


def summarise(runs: list[Run], args: argparse.Namespace) -> dict[str, object]:
    """Per held-out area: mean curves, and per seed the labels each needs for scratch-random's final IoU."""
    result: dict[str, object] = {}
    for area in args.areas:
        mine = [r for r in runs if r.area == area]
        by = {(r.start, r.strategy, r.seed): r for r in mine}
        keys = sorted(
            {(r.start, r.strategy) for r in mine}, key=lambda k: (STARTS.index(k[0]), STRATEGIES.index(k[1]))
        )
        counts = [n for n, _, _ in mine[0].curve]
        budget = counts[-1]
        per_seed = []
        for seed in args.seed_list:
            reference = by[("scratch", "random", seed)].curve[-1][1]
            row: dict[str, object] = {"seed": seed, "scratch_random_final": round(reference, 4)}
            for start, strategy in keys:
                curve = by[(start, strategy, seed)].curve
                need = labels_to_reach(curve, reference)
                row[f"{start}/{strategy}"] = {
                    "final": round(curve[-1][1], 4),
                    "curve_mean": round(float(np.mean([v for _, v, _ in curve[2:]])), 4),
                    "labels_to_reach": round(need, 1),
                    "label_share": round(need / budget, 3),
                }
            per_seed.append(row)
        result[area] = {
            "labelled": counts,
            "mean": {f"{s}/{t}": _mean_curve(mine, s, t) for s, t in keys},
            "std": {f"{s}/{t}": _std_curve(mine, s, t) for s, t in keys},
            "per_seed": per_seed,
            "empty_share_at_budget": {
                f"{s}/{t}": round(
                    float(np.mean([r.curve[-1][2] for r in mine if (r.start, r.strategy) == (s, t)])), 3
                )
                for s, t in keys
            },
            "run_seconds": {
                f"{s}/{t}": round(
                    float(np.mean([r.seconds for r in mine if (r.start, r.strategy) == (s, t)])), 1
                )
                for s, t in keys
            },
        }
    return result


def _mean_curve(runs: list[Run], start: str, strategy: str) -> list[float]:
    values = np.array(
        [[v for _, v, _ in r.curve] for r in runs if (r.start, r.strategy) == (start, strategy)]
    )
    return cast(list[float], values.mean(axis=0).round(4).tolist())


def _std_curve(runs: list[Run], start: str, strategy: str) -> list[float]:
    values = np.array(
        [[v for _, v, _ in r.curve] for r in runs if (r.start, r.strategy) == (start, strategy)]
    )
    return cast(list[float], values.std(axis=0).round(4).tolist())


def plot(summary: dict[str, object], areas: list[str], path: Path) -> None:
    """Learning curves per held-out area, mean of the seeds with a band of one standard deviation."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(areas), figsize=(6 * len(areas), 4.5), dpi=120, squeeze=False)
    for axis, area in zip(axes[0], areas, strict=True):
        entry = cast(dict[str, object], summary[area])
        counts = cast(list[int], entry["labelled"])
        means, stds = cast(dict[str, list[float]], entry["mean"]), cast(dict[str, list[float]], entry["std"])
        for key, mean in means.items():
            line = "-" if key.startswith("prior") else "--" if key.startswith("scratch") else ":"
            axis.plot(counts, mean, line, marker="o", label=key)
            axis.fill_between(counts, np.subtract(mean, stds[key]), np.add(mean, stds[key]), alpha=0.12)
        axis.set_xscale("symlog", linthresh=4)
        axis.set_xticks(counts, [str(c) for c in counts])
        axis.set_xlabel("labelled chips of the held-out area")
        axis.set_ylabel("test IoU (building)")
        axis.set_title(f"held-out area {area}")
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path)


def arguments() -> argparse.Namespace:
    """The command line (see the module doc)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--data", type=Path, default=DEFAULT_DATA, help="folder with images/, masks/, chips.json"
    )
    parser.add_argument("--areas", nargs="+", default=["1", "5"], help="areas held out in turn")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument(
        "--test-share", type=float, default=0.25, help="fixed test chips of the held-out area"
    )
    parser.add_argument("--test-seed", type=int, default=1234, help="which chips are the test chips")
    parser.add_argument("--initial", type=int, default=4, help="random chips labelled before the first round")
    parser.add_argument(
        "--budget-share", type=float, default=0.45, help="labellable chips labelled at the end"
    )
    parser.add_argument("--epochs", type=int, default=3, help="epochs per round (warm start)")
    parser.add_argument("--min-steps", type=int, default=20, help="optimiser steps per round at least")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--learning-rate", type=float, default=5e-4, help="peak of each round's one-cycle")
    parser.add_argument("--prior-epochs", type=int, default=10, help="the prior's epochs (trainer default)")
    parser.add_argument("--prior-learning-rate", type=float, default=2e-3, help="(trainer default)")
    parser.add_argument("--scale", type=int, default=2, help="read chips this many times coarser (1: full)")
    parser.add_argument("--starts", nargs="+", choices=STARTS, default=["scratch", "prior"])
    parser.add_argument(
        "--strategies", nargs="+", choices=STRATEGIES, default=["random", "uncertainty", "skip-empty"]
    )
    parser.add_argument(
        "--scratch-strategies",
        nargs="+",
        choices=STRATEGIES,
        default=["random", "uncertainty"],
        help="strategies run from scratch (random always: it is the reference)",
    )
    parser.add_argument(
        "--encoder-weights", type=Path, help="ResNet-18 state dict file: adds the encoder start"
    )
    parser.add_argument("--sam-type", choices=("vit_b", "vit_l", "vit_h"), default="vit_b")
    parser.add_argument("--sam-checkpoint", type=Path, help="SAM checkpoint: adds the SAM-feature head")
    parser.add_argument("--prior-cache", type=Path, help="keep the trained priors here and reuse them")
    parser.add_argument("--out", default="transfer", help="results name: bench/results/<out>.{json,png}")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs in parallel")
    args = parser.parse_args()
    args.seed_list = list(range(args.first_seed, args.first_seed + args.seeds))
    return args


def tasks(args: argparse.Namespace) -> list[tuple[str, str, str, int]]:
    """Every (area, start, strategy, seed), the largest area first (the pool balances better).

    Scratch with random order is always run: it is the reference. ``encoder`` and ``sam`` run when
    their file is given.
    """
    wanted = {"scratch", *args.starts}
    wanted |= {"encoder"} if args.encoder_weights else set()
    wanted |= {"sam"} if args.sam_checkpoint else set()
    todo = []
    for area, start in itertools.product(args.areas, [s for s in STARTS if s in wanted]):
        chosen = {"random", *args.scratch_strategies} if start == "scratch" else set(args.strategies)
        for strategy in [s for s in STRATEGIES if s in chosen]:
            todo += [(area, start, strategy, seed) for seed in args.seed_list]
    return todo


def check_files(args: argparse.Namespace) -> list[str]:
    """Notes on the weight files: which starts are measured and why others are not."""
    notes = []
    if args.encoder_weights is None:
        notes.append(
            "no --encoder-weights file: the pretrained-encoder start is not measured "
            "(nothing can be downloaded here)"
        )
    elif not args.encoder_weights.is_file():
        raise SystemExit(f"--encoder-weights {args.encoder_weights}: no such file")
    if args.sam_checkpoint is None:
        notes.append(
            "no --sam-checkpoint file: the SAM-feature head is not measured (nothing can be downloaded here)"
        )
    elif not args.sam_checkpoint.is_file():
        raise SystemExit(f"--sam-checkpoint {args.sam_checkpoint}: no such file")
    elif unsupported := sorted(set(args.strategies) - set(SAM_STRATEGIES)):
        raise SystemExit(f"--sam-checkpoint: the SAM head runs {', '.join(SAM_STRATEGIES)}, not "
                         f"{', '.join(unsupported)}; leave those out of --strategies")  # fmt: skip
    return notes


def prior_name(area: str, args: argparse.Namespace) -> str:
    """The prior's file name: the held-out area and every setting that changes the prior."""
    key = (args.data, args.test_share, args.test_seed, args.scale)
    key += (args.prior_epochs, args.prior_learning_rate, args.batch_size)
    return f"prior-{area}-{zlib.crc32(repr(key).encode()):08x}.pt"


def main() -> int:
    args = arguments()
    began, load = time.perf_counter(), os.getloadavg()
    notes = check_files(args)
    for note in notes:
        print(note)
    context = multiprocessing.get_context("spawn")  # no fork after torch's thread pools exist
    with tempfile.TemporaryDirectory() as temporary:
        folder = args.prior_cache or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        priors = {a: str(folder / prior_name(a, args)) for a in args.areas}
        sam = embed_areas(read_data(args.data, args.scale), args, folder) if args.sam_checkpoint else {}
        with context.Pool(args.jobs, initializer=_start_worker, initargs=(args, priors, sam)) as pool:
            trained = pool.map(train_prior, args.areas, chunksize=1)
            prior_s = time.perf_counter() - began
            runs = pool.starmap(run, tasks(args), chunksize=1)
    summary: dict[str, object] = {
        "priors": {
            a: {"zero_shot_iou": round(m, 4), "seconds": round(s, 1), "cpu_seconds": round(c, 1)}
            for a, m, s, c in trained
        },
        "areas": summarise(runs, args),
        "notes": notes,
        "settings": {k: str(v) for k, v in vars(args).items()},
        "prior_phase_s": round(prior_s, 1),
        "runtime_s": round(time.perf_counter() - began, 1),
        "cpu_s": round(sum(r.cpu_seconds for r in runs) + sum(c for *_, c in trained), 1),
        "load_average": {"start": load, "end": os.getloadavg()},
        "runs": [vars(r) for r in runs],
    }
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.out}.json").write_text(json.dumps(summary, indent=1))
    plot(cast(dict[str, object], summary["areas"]), args.areas, OUT / f"{args.out}.png")
    print(json.dumps({k: v for k, v in summary.items() if k != "runs"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
