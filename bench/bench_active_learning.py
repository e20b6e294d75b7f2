"""Active-learning benchmark: does uncertainty ordering save labels, and does a candidate pool lose any?

A simulated annotator labels real chips (its answer is the ground-truth mask).
From the same few labelled chips, each strategy adds a batch per round until the
budget is spent; the model is warm-started from the previous round, exactly as
the trainer does. Test chips are fixed and never labelled.

Strategies (same budget, same seeds, same initial chips; ``--strategies``, default the first three):
- ``uncertainty``: the trainer's selection over ``--pool-sample`` random unlabelled
  chips (128): mean entropy (``--score foreground`` weights it by the building
  probability, ``--score peak`` is the round's ranking since issue #15: the mean of the
  most uncertain 5 % of pixels), predicted-empty chips last, greedy farthest-point
  diversity in the model's feature space (``trainer.selection.select_batch``);
- ``random``: random order;
- ``random-skip-empty``: random order, skipping chips the model predicts empty;
- ``uncertainty-all``: the same selection over every unlabelled chip, all scored each round;
- ``uncertainty-pool``: the same selection over the trainer's candidate pool of at most ``--pool``
  chips (``trainer.pool.candidate_pool``: a quarter the previous round's most uncertain scored chips,
  a quarter neighbours of the chips labelled since, the rest a spatially stratified sample), built
  from each chip's footprint (centre and side in its CRS, from its GeoTIFF transform).

Reports the learning curves (table + ``bench/results/<--out>.png``), the label
saving (how many labelled chips each strategy needs to reach the final IoU of
random ordering), and per round how many unlabelled chips each strategy scored
and how long that took. Any folder of ``images/<name>.tif`` and ``masks/<name>.tif``
(0 = background, 1..K = classes) pairs works.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

import numpy as np
import numpy.typing as npt
import rasterio
import torch
from rasterio.enums import Resampling

from geolabel.classes import LabelClass
from georef.grid import Grid, crs_to_text
from trainer.fit import Sample, TrainSettings, evaluate, train
from trainer.model import build_model
from trainer.pool import candidate_pool
from trainer.selection import TileScore, pixel_uncertainty, score_tiles, select_batch
from trainer.splits import Footprint
from trainer.versions import InputSpec, ModelManifest

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "results"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "fair_hotosm"
STRATEGIES = ("uncertainty", "random", "random-skip-empty", "uncertainty-all", "uncertainty-pool")
DEFAULT_STRATEGIES = STRATEGIES[:3]
#: The strategies that select with :func:`select_uncertain`; they differ only in the chips they score.
UNCERTAIN = ("uncertainty", "uncertainty-all", "uncertainty-pool")
#: Share of predicted foreground pixels under which a chip counts as predicted empty: about 33 px of a
#: 128 px chip (in fair_hotosm every chip with a building has at least 0.3 % building pixels).
EMPTY = 0.002


@dataclass(frozen=True)
class Chips:
    """All chips in memory: normalised images, masks, names and footprints on the ground."""

    names: list[str]
    images: npt.NDArray[np.float32]  # (N, bands, H, W)
    masks: npt.NDArray[np.uint8]  # (N, H, W)
    spec: InputSpec
    classes: int  # including background
    footprints: list[Footprint]  # of the full-resolution GeoTIFF, in its own CRS


def load_chips(folder: Path, scale: int) -> Chips:
    """Read every ``images/<name>.tif`` with its ``masks/<name>.tif``, ``scale`` times coarser."""
    names, stack, labels, footprints = read_chips(folder, scale)
    mean, std = stack.mean(axis=(0, 2, 3)), stack.std(axis=(0, 2, 3)) + 1e-6
    spec = InputSpec(bands=list(range(1, stack.shape[1] + 1)), mean=mean.tolist(), std=std.tolist())
    normalised = (stack - mean[None, :, None, None]) / std[None, :, None, None]
    return Chips(names, normalised.astype(np.float32), labels, spec, int(labels.max()) + 1, footprints)


def read_chips(
    folder: Path, scale: int
) -> tuple[list[str], npt.NDArray[np.float32], npt.NDArray[np.uint8], list[Footprint]]:
    """Names, raw pixels ``(N, bands, H, W)``, masks and footprints of the pairs in ``folder``."""
    names = sorted(p.stem for p in (folder / "images").glob("*.tif") if (folder / "masks" / p.name).is_file())
    if not names:
        raise SystemExit(f"{folder}: no images/<name>.tif with a matching masks/<name>.tif")
    images, masks, footprints = [], [], []
    for name in names:
        with rasterio.open(folder / "images" / f"{name}.tif") as src:
            shape = (src.count, src.height // scale, src.width // scale)
            images.append(src.read(out_shape=shape, resampling=Resampling.average).astype(np.float32))
            footprints.append(footprint(Grid(src.width, src.height, src.transform, src.crs)))
        with rasterio.open(folder / "masks" / f"{name}.tif") as src:
            masks.append(src.read(1, out_shape=shape[1:], resampling=Resampling.mode))
    return names, np.stack(images), np.stack(masks), footprints


def footprint(grid: Grid) -> Footprint:
    """A chip's centre and side on the ground, as the trainer derives a tile's (``trainer.loop``)."""
    x, y = grid.centre_world()
    return Footprint(crs_to_text(grid.crs), x, y, max(grid.side_lengths()))


@dataclass
class Run:
    """One strategy with one seed: labelled chip indices, the learning curve, and the scoring per round."""

    strategy: str
    seed: int
    labelled: list[int]
    curve: list[tuple[int, float, float]]  # (labelled chips, test mIoU, share of empty chips labelled)
    scored: list[int] = field(default_factory=list)  # unlabelled chips scored, per selection round
    score_s: list[float] = field(default_factory=list)  # seconds scoring them, per selection round


@dataclass(frozen=True)
class Step:
    """One selection round: the picks, the unlabelled chips scored (most uncertain first), its seconds."""

    picks: list[int]
    ranked: list[int]
    seconds: float


def manifest(chips: Chips) -> ModelManifest:
    """The trainer's default model for the chips (one class entry per non-background class)."""
    return manifest_for(chips.spec, chips.classes)


def manifest_for(spec: InputSpec, classes: int, version: str = "bench") -> ModelManifest:
    """The trainer's default model for ``classes`` (background included) named ``class1`` ..."""
    labels = [LabelClass(id=i, name=f"class{i}", color="#ff0000") for i in range(1, classes)]
    return ModelManifest(version=version, created="", classes=labels, input=spec)


_worker: tuple[Chips, argparse.Namespace, list[int]] | None = None  # per worker process


def _start_worker(args: argparse.Namespace) -> None:
    """A worker process: its share of the cores as torch threads, and its own copy of the chips."""
    global _worker
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // args.jobs))
    chips = load_chips(args.data, args.scale)
    _worker = (chips, args, test_chips(chips, args))


def _run(strategy: str, seed: int) -> Run:
    if _worker is None:
        raise RuntimeError("the worker was not started")
    chips, args, test = _worker
    return run_strategy(chips, args, strategy, seed, test)


def test_chips(chips: Chips, args: argparse.Namespace) -> list[int]:
    """The fixed test chips (the same for every seed and strategy), never labelled."""
    count = len(chips.names)
    share = round(count * args.test_share)
    return sorted(int(i) for i in np.random.default_rng(1234).choice(count, share, replace=False))


def run_strategy(chips: Chips, args: argparse.Namespace, strategy: str, seed: int, test: list[int]) -> Run:
    """Label ``args.initial`` chips, then a batch per round up to ``args.budget``."""
    rng = np.random.default_rng(seed)
    pool = [i for i in range(len(chips.names)) if i not in set(test)]
    labelled = [int(i) for i in rng.choice(pool, args.initial, replace=False)]
    torch.manual_seed(seed)
    network = build_model(manifest(chips))
    test_samples = [Sample(chips.images[i], chips.masks[i]) for i in test]
    run = Run(strategy, seed, labelled, [])
    order = [int(i) for i in rng.permutation(pool)]  # the random strategies' order
    previous = Step(list(labelled), [], 0.0)  # the initial chips are the first round's new labels
    while True:
        samples = [Sample(chips.images[i], chips.masks[i]) for i in labelled]
        settings = TrainSettings(
            epochs=args.epochs,
            batch_size=args.batch_size,
            learning_rate=args.learning_rate,
            seed=seed + len(labelled),
        )
        train(network, samples, settings)
        miou = evaluate(network, test_samples, chips.classes).miou
        empty = float(np.mean([not chips.masks[i].any() for i in labelled]))
        run.curve.append((len(labelled), miou, empty))
        print(
            f"  {strategy:18s} seed {seed}  {len(labelled):4d} chips  mIoU {miou:.3f}  empty {empty:.0%}",
            flush=True,
        )
        if len(labelled) >= args.budget:
            return run
        size = min(args.batch, args.budget - len(labelled))
        previous = next_batch(network, chips, strategy, labelled, order, size, args, rng, previous)
        run.scored.append(len(previous.ranked))
        run.score_s.append(round(previous.seconds, 4))
        labelled += previous.picks


def next_batch(
    network: torch.nn.Module,
    chips: Chips,
    strategy: str,
    labelled: list[int],
    order: list[int],
    size: int,
    args: argparse.Namespace,
    rng: np.random.Generator,
    previous: Step,
) -> Step:
    """The chips a strategy labels next, and the unlabelled chips it scored to find them.

    ``order`` is the seed's random order of the pool. ``random`` takes the next chips in it;
    ``random-skip-empty`` walks it, scoring 16 chips at a time, and skips the predicted-empty ones;
    the uncertainty strategies select among their candidates (:func:`candidates`).
    ``previous`` is the previous round's step (its picks are the labels new since then).
    """
    done = set(labelled)
    remaining = [i for i in order if i not in done]
    if strategy == "random":
        return Step(remaining[:size], [], 0.0)
    if strategy == "random-skip-empty":
        return skip_empty(network, chips, remaining, size)
    chosen = candidates(chips, strategy, remaining, args, rng, previous)
    return select_uncertain(network, chips, chosen, labelled, size, args)


def candidates(
    chips: Chips,
    strategy: str,
    remaining: list[int],
    args: argparse.Namespace,
    rng: np.random.Generator,
    previous: Step,
) -> list[int]:
    """The unlabelled chips an uncertainty strategy scores this round.

    ``uncertainty``: ``args.pool_sample`` random ones; ``uncertainty-all``: every one;
    ``uncertainty-pool``: :func:`trainer.pool.candidate_pool` of ``args.pool`` chips, from the previous
    round's scored chips (most uncertain first) and the footprints of the chips it picked, seeded from
    the run's random generator.
    """
    if strategy == "uncertainty":
        return [int(i) for i in rng.permutation(remaining)[: args.pool_sample]]
    if strategy == "uncertainty-all":
        return list(remaining)
    ordered = sorted(remaining)
    ids = candidate_pool(
        [(chips.names[i], chips.footprints[i]) for i in ordered],
        args.pool,
        [chips.names[i] for i in previous.ranked],
        [chips.footprints[i] for i in previous.picks],
        int(rng.integers(2**31)),
    )
    index = {chips.names[i]: i for i in ordered}
    return [index[name] for name in ids]


def select_uncertain(
    network: torch.nn.Module,
    chips: Chips,
    chosen: list[int],
    labelled: list[int],
    size: int,
    args: argparse.Namespace,
) -> Step:
    """The trainer's selection among ``chosen``: uncertainty, predicted-empty chips last, diversity.

    Only the scoring of ``chosen`` is timed (the labelled chips' features cost the same for every
    strategy). ``ranked`` orders ``chosen`` by the uncertainty the selection uses.
    """
    start = time.perf_counter()
    scored = score(network, chips, chosen)
    seconds = time.perf_counter() - start
    labelled_scores = score(network, chips, labelled)
    uncertainty = np.array([tile_uncertainty(s, args.score) for s in scored])
    empty = np.array([predicted_empty(s) for s in scored])
    if (~empty).sum() >= 4 * size:  # predicted-empty chips last
        uncertainty[empty] *= 0.1
    picks = select_batch(
        uncertainty,
        np.stack([s.features for s in scored]),
        np.stack([s.features for s in labelled_scores]),
        size,
        args.diversity,
    )
    ranked = [chosen[i] for i in np.argsort(-uncertainty, kind="stable")]
    return Step([chosen[p] for p in picks], ranked, seconds)


def score(network: torch.nn.Module, chips: Chips, indices: list[int]) -> list[TileScore]:
    """The trainer's tile scores of ``indices`` (every pixel valid)."""
    everywhere = np.ones(chips.masks.shape[1:], dtype=bool)
    images = [chips.images[i] for i in indices]
    return list(score_tiles(network, images, [everywhere] * len(indices), "entropy"))


def tile_uncertainty(tile: TileScore, method: str) -> float:
    """``entropy``: mean pixel entropy; ``foreground``: entropy weighted by the foreground probability;
    ``peak``: the mean of the most uncertain 5 % of pixels, what a round ranks by since issue #15
    (:func:`trainer.selection.select_next`)."""
    if method == "entropy":
        return tile.uncertainty
    if method == "peak":
        return tile.peak_uncertainty
    probabilities = torch.from_numpy(tile.probabilities)
    entropy = pixel_uncertainty(probabilities, "entropy")
    return float((entropy * (1 - probabilities[0])).mean())


def predicted_empty(tile: TileScore) -> bool:
    """Fewer than :data:`EMPTY` of the pixels predicted as a class (stray pixels are not a building)."""
    return tile.foreground < EMPTY


def skip_empty(network: torch.nn.Module, chips: Chips, remaining: list[int], size: int) -> Step:
    """The next ``size`` chips of ``remaining`` the model does not predict empty (empty ones if too few)."""
    picked: list[int] = []
    start, seen = time.perf_counter(), 0
    for first in range(0, len(remaining), 16):
        chunk = remaining[first : first + 16]
        seen += len(chunk)
        picked += [
            i for i, s in zip(chunk, score(network, chips, chunk), strict=True) if not predicted_empty(s)
        ]
        if len(picked) >= size:
            return Step(picked[:size], remaining[:seen], time.perf_counter() - start)
    picks = (picked + [i for i in remaining if i not in set(picked)])[:size]
    return Step(picks, remaining, time.perf_counter() - start)


def labels_to_reach(curve: list[tuple[int, float, float]], target: float) -> float:
    """Labelled chips at which ``curve`` first reaches ``target`` (linear between rounds; inf if never)."""
    for (n0, v0, _), (n1, v1, _) in itertools.pairwise(curve):
        if v1 >= target:
            return n0 + (n1 - n0) * (target - v0) / (v1 - v0) if v1 > v0 and v0 < target else n1
    return float("inf") if curve[-1][1] < target else curve[0][0]


def summarise(runs: list[Run], seeds: list[int], strategies: list[str]) -> dict[str, object]:
    """Mean curves, per-seed label need against random, chips scored and scoring time per round."""
    curves = {s: np.array([[v for _, v, _ in r.curve] for r in runs if r.strategy == s]) for s in strategies}
    counts = [n for n, _, _ in runs[0].curve]
    by = {(r.strategy, r.seed): r for r in runs}
    others = [s for s in strategies if s != "random"]
    per_seed = []
    for seed in seeds:
        random_final = by[("random", seed)].curve[-1][1]
        row: dict[str, object] = {"seed": seed, "random_final_miou": random_final}
        for s in others:
            run = by[(s, seed)]
            need = labels_to_reach(run.curve, random_final)
            row[s] = {
                "final_miou": run.curve[-1][1],
                "labels_to_reach_random_final": need,
                "label_share": need / counts[-1],
                "scored_per_round": run.scored,
                "score_s_per_round": run.score_s,
            }
        per_seed.append(row)
    mean_curves = {s: curves[s].mean(axis=0) for s in strategies}
    random_final = float(mean_curves["random"][-1])
    mean_need = {}
    for s in others:
        curve = [(n, float(v), 0.0) for n, v in zip(counts, mean_curves[s], strict=True)]
        need = labels_to_reach(curve, random_final)
        mean_need[s] = {"labels": need, "label_share": need / counts[-1]}
    empty = {s: float(np.mean([r.curve[-1][2] for r in runs if r.strategy == s])) for s in strategies}
    summary: dict[str, object] = {
        "labelled": counts,
        "mean_miou": {s: mean_curves[s].round(4).tolist() for s in strategies},
        "std_miou": {s: curves[s].std(axis=0).round(4).tolist() for s in strategies},
        "empty_share_at_budget": empty,
        "per_seed": per_seed,
        "mean_curve_labels_to_reach_random_final": mean_need,
        "scoring": scoring(runs, strategies),
    }
    if {"uncertainty-all", "uncertainty-pool"} <= set(strategies):
        summary["pool_vs_all"] = pool_vs_all(by, seeds)
    return summary


def scoring(runs: list[Run], strategies: list[str]) -> dict[str, dict[str, object]]:
    """Per strategy: mean unlabelled chips scored per round, and mean seconds per round and per chip."""
    result: dict[str, dict[str, object]] = {}
    for s in strategies:
        scored = np.array([r.scored for r in runs if r.strategy == s], dtype=np.float64)
        seconds = np.array([r.score_s for r in runs if r.strategy == s], dtype=np.float64)
        total = float(scored.sum())
        result[s] = {
            "mean_scored_per_round": scored.mean(axis=0).round(1).tolist(),
            "mean_score_s_per_round": seconds.mean(axis=0).round(3).tolist(),
            "scored_per_run": float(scored.sum(axis=1).mean()),
            "score_s_per_run": round(float(seconds.sum(axis=1).mean()), 2),
            "ms_per_chip": round(1000 * float(seconds.sum()) / total, 2) if total else None,
        }
    return result


def pool_vs_all(by: dict[tuple[str, int], Run], seeds: list[int]) -> dict[str, object]:
    """Paired per seed: pool minus all in final IoU and in mean IoU over the curve.

    Also the labelled chips the pool needs to reach all's final IoU.
    """
    final, area, need = [], [], []
    for seed in seeds:
        pool, every = by[("uncertainty-pool", seed)].curve, by[("uncertainty-all", seed)].curve
        final.append(pool[-1][1] - every[-1][1])
        area.append(float(np.mean([p[1] - a[1] for p, a in zip(pool, every, strict=True)])))
        need.append(labels_to_reach(pool, every[-1][1]))
    return {
        "final_miou_difference": [round(d, 4) for d in final],
        "final_miou_difference_mean": round(float(np.mean(final)), 4),
        "final_miou_difference_std": round(float(np.std(final)), 4),
        "curve_mean_miou_difference": [round(d, 4) for d in area],
        "curve_mean_miou_difference_mean": round(float(np.mean(area)), 4),
        "curve_mean_miou_difference_std": round(float(np.std(area)), 4),
        "pool_labels_to_reach_all_final": need,
    }


def plot(summary: dict[str, object], strategies: list[str], path: Path) -> None:
    """Learning curves, mean with a band of one standard deviation; unlabelled chips scored per round."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = cast(list[int], summary["labelled"])
    means = cast(dict[str, list[float]], summary["mean_miou"])
    stds = cast(dict[str, list[float]], summary["std_miou"])
    scored_by = cast(dict[str, dict[str, list[float]]], summary["scoring"])
    figure, (axes, right) = plt.subplots(1, 2, figsize=(11, 4.5), dpi=120, width_ratios=(3, 2))
    for strategy in strategies:
        mean, std = np.array(means[strategy]), np.array(stds[strategy])
        axes.plot(counts, mean, marker="o", label=strategy)
        axes.fill_between(counts, mean - std, mean + std, alpha=0.15)
        scored = scored_by[strategy]["mean_scored_per_round"]
        right.plot(counts[: len(scored)], scored, marker="o", label=strategy)
    axes.set_xlabel("labelled chips")
    axes.set_ylabel("test IoU (foreground classes)")
    axes.set_title("Active learning on the real labelled chips")
    axes.grid(alpha=0.3)
    axes.legend()
    right.set_xlabel("labelled chips before the round")
    right.set_ylabel("unlabelled chips scored")
    right.set_title("Scoring per round")
    right.grid(alpha=0.3)
    figure.tight_layout()
    figure.savefig(path)


def arguments() -> argparse.Namespace:
    """The command line (see the module doc)."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with images/ and masks/")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--initial", type=int, default=8, help="chips labelled before the first round")
    parser.add_argument("--batch", type=int, default=16, help="chips labelled per round")
    parser.add_argument("--budget", type=int, default=120, help="labelled chips at the end")
    parser.add_argument("--test-share", type=float, default=0.2, help="fixed test chips, never labelled")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per round (warm start)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument(
        "--learning-rate", type=float, default=5e-4, help="peak of each round's one-cycle (warm start)"
    )
    parser.add_argument("--scale", type=int, default=2, help="read chips this many times coarser (1: full)")
    parser.add_argument("--diversity", type=float, default=1.0, help="distance exponent (0: plain entropy)")
    parser.add_argument(
        "--pool-sample", type=int, default=128, help="unlabelled chips scored per round (uncertainty)"
    )
    parser.add_argument(
        "--pool", type=int, default=64, help="candidate pool size (uncertainty-pool, trainer.pool)"
    )
    parser.add_argument(
        "--score", choices=("entropy", "foreground", "peak"), default="entropy", help="tile uncertainty"
    )
    parser.add_argument(
        "--strategies",
        nargs="+",
        choices=STRATEGIES,
        default=list(DEFAULT_STRATEGIES),
        help="strategies to run (random is always run: it is the reference)",
    )
    parser.add_argument(
        "--out", default="active_learning", help="results name: bench/results/<out>.{json,png}"
    )
    parser.add_argument(
        "--jobs", type=int, default=os.cpu_count() or 1, help="runs in parallel, one torch thread each"
    )
    args = parser.parse_args()
    args.strategies = [s for s in STRATEGIES if s in set(args.strategies) | {"random"}]
    return args


def main() -> int:
    args = arguments()
    start = time.perf_counter()
    chips = load_chips(args.data, args.scale)
    test = test_chips(chips, args)
    print(f"{len(chips.names)} chips, {len(test)} fixed test chips, {chips.classes - 1} class(es)")
    seeds = list(range(args.seeds))
    todo = [(strategy, seed) for seed in seeds for strategy in args.strategies]
    context = multiprocessing.get_context("spawn")  # no fork after torch's thread pools exist
    with context.Pool(args.jobs, initializer=_start_worker, initargs=(args,)) as pool:
        runs = pool.starmap(_run, todo, chunksize=1)
    summary = summarise(runs, seeds, args.strategies)
    summary["settings"] = {k: str(v) for k, v in vars(args).items()}
    summary["runtime_s"] = round(time.perf_counter() - start, 1)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / f"{args.out}.json").write_text(json.dumps(summary, indent=2))
    plot(summary, args.strategies, OUT / f"{args.out}.png")
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
