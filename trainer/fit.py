"""Training and evaluating the segmentation network on in-memory samples.

A :class:`Sample` is one labelled tile: normalised model input and a target of
class *indices* (0 = background, trained like any class; ``i`` = the manifest's
``i``-th class; :data:`~trainer.metrics.IGNORE` = left out: unsure, disagreement,
nodata, undrawn in sparse labelling; see :mod:`trainer.harvest`). The functions
here know nothing of Label Studio or rasters, so the active-learning benchmark
and the rounds run the same code.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import segmentation_models_pytorch as smp
import torch

from trainer.device import autocast, model_device
from trainer.inference import pad_to_32
from trainer.metrics import IGNORE, Metrics, confusion, metrics_from_confusion


@dataclass(frozen=True)
class Sample:
    """One labelled tile: ``(bands, height, width)`` float32 input and ``(height, width)`` uint8 target."""

    image: npt.NDArray[np.float32]
    target: npt.NDArray[np.uint8]

    def __post_init__(self) -> None:
        if self.image.shape[1:] != self.target.shape:
            raise ValueError(f"image {self.image.shape[1:]} and target {self.target.shape} differ in size")


@dataclass(frozen=True)
class TrainSettings:
    """How long and how hard to train.

    Attributes:
        epochs: passes over the labelled tiles.
        batch_size: tiles per optimisation step.
        learning_rate: AdamW learning rate (cosine-annealed to zero over the run).
        seed: seeds torch (random layers) and the batch order, crops and augmentation; with
            :func:`seed_torch` before the network is built, the same samples give the same weights
            on one machine.
        crop: side of the random square each tile is cropped to per step (tiles smaller are used whole);
            a 512 px tile trains four times faster as 256 px crops and still shows all of itself.
    """

    epochs: int = 10
    batch_size: int = 8
    learning_rate: float = 2e-3
    seed: int = 0
    crop: int = 256


def seed_torch(seed: int) -> None:
    """Seed torch's generators: call it before building a network so its initial weights repeat."""
    torch.manual_seed(seed)


def train(
    network: torch.nn.Module,
    samples: Sequence[Sample],
    settings: TrainSettings,
    progress: Callable[[int, float], None] | None = None,
) -> list[float]:
    """Train ``network`` in place on ``samples``; returns the mean loss of each epoch.

    Loss: cross-entropy plus Dice over every class, background included, both skipping IGNORE
    pixels. Every batch is augmented with a random flip and a random multiple of 90 degrees (aerial
    images have no "up"). Batches go to the network's device (move it first:
    :func:`trainer.device.resolve_device`); on a GPU the forward pass runs in mixed precision.

    Args:
        network: the model, trained from its current weights (warm start).
        samples: labelled tiles, all of one size.
        settings: epochs, batch size, learning rate, seed.
        progress: called with ``(epoch, mean loss)`` after each epoch.

    Raises:
        ValueError: if there are no samples.
    """
    if not samples:
        raise ValueError("no labelled tiles to train on")
    rng = np.random.default_rng(settings.seed)  # batch order, crops, D4 augmentation
    seed_torch(settings.seed)  # anything random inside the network (dropout) repeats too
    steps = settings.epochs * -(-len(samples) // settings.batch_size)
    optimiser = torch.optim.AdamW(network.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, settings.learning_rate, total_steps=steps)
    cross_entropy = torch.nn.CrossEntropyLoss(ignore_index=IGNORE)
    dice = smp.losses.DiceLoss("multiclass", ignore_index=IGNORE)
    device = model_device(network)
    network.train()
    losses = []
    for epoch in range(settings.epochs):
        total = 0.0
        for images, targets in _batches(samples, settings, rng):
            images, targets = images.to(device), targets.to(device)
            with autocast(device):
                logits = network(images)
            logits = logits.float()
            loss = cross_entropy(logits, targets) + dice(logits, targets)
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            schedule.step()
            total += loss.item() * len(images)
        losses.append(total / len(samples))
        if progress is not None:
            progress(epoch + 1, losses[-1])
    network.eval()
    return losses


def _batches(
    samples: Sequence[Sample], settings: TrainSettings, rng: np.random.Generator
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Shuffled, cropped, augmented, padded batches."""
    order = rng.permutation(len(samples))
    size = settings.batch_size
    for start in range(0, len(order), size):
        pairs = [_augment(_crop(samples[i], settings.crop, rng), rng) for i in order[start : start + size]]
        yield _stack(pairs)


def _stack(
    pairs: Sequence[tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of tiles of any sizes (edge tiles are smaller, turned ones swap sides).

    Each image is padded bottom and right to the batch's largest height and width rounded up to a
    multiple of 32 (reflected pixels); its target there is IGNORE, so padding never trains.
    """
    height = max(image.shape[1] for image, _ in pairs)
    width = max(image.shape[2] for image, _ in pairs)
    height, width = height + -height % 32, width + -width % 32
    images, targets = [], []
    for image, target in pairs:
        pad = ((0, height - image.shape[1]), (0, width - image.shape[2]))
        images.append(np.pad(image, ((0, 0), *pad), mode="reflect") if any(p for _, p in pad) else image)
        targets.append(np.pad(target, pad, constant_values=IGNORE))
    return torch.from_numpy(np.stack(images)), torch.from_numpy(np.stack(targets).astype(np.int64))


def _crop(sample: Sample, side: int, rng: np.random.Generator) -> Sample:
    _, height, width = sample.image.shape
    if height <= side and width <= side:
        return sample
    row = int(rng.integers(0, max(height - side, 0) + 1))
    col = int(rng.integers(0, max(width - side, 0) + 1))
    window = (slice(row, row + side), slice(col, col + side))
    return Sample(sample.image[(slice(None), *window)], sample.target[window])


def _augment(
    sample: Sample, rng: np.random.Generator
) -> tuple[npt.NDArray[np.float32], npt.NDArray[np.uint8]]:
    """One of the 8 symmetries of the square, at random: a quarter-turn count and a flip."""
    turns, flip = int(rng.integers(4)), bool(rng.integers(2))
    image, target = np.rot90(sample.image, turns, (1, 2)), np.rot90(sample.target, turns)
    if flip:
        image, target = image[:, :, ::-1], target[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(target)


@torch.inference_mode()
def probabilities(
    network: torch.nn.Module, images: Sequence[npt.NDArray[np.float32]], batch_size: int = 16
) -> Iterator[torch.Tensor]:
    """Softmax ``(classes, height, width)`` of each image, in order.

    Consecutive images of one size run through the network together, up to ``batch_size`` at a time
    (about twice as fast as one by one on a CPU). They run on the network's device (mixed precision on
    a GPU); the softmax is taken in float32 and comes back on the CPU. The decorator keeps inference
    mode to the generator's own steps, not the caller's code between them.
    """
    network.eval()
    device = model_device(network)
    for group in _same_size_runs(images, batch_size):
        _, height, width = group[0].shape
        batch = torch.from_numpy(np.stack([pad_to_32(image) for image in group])).to(device)
        with autocast(device):
            logits = network(batch)
        yield from torch.softmax(logits[:, :, :height, :width].float(), dim=1).cpu()


def _same_size_runs(
    images: Sequence[npt.NDArray[np.float32]], limit: int
) -> Iterator[list[npt.NDArray[np.float32]]]:
    """``images`` cut into runs of consecutive same-size images, at most ``limit`` long."""
    run: list[npt.NDArray[np.float32]] = []
    for image in images:
        if run and (len(run) == limit or image.shape != run[0].shape):
            yield run
            run = []
        run.append(image)
    if run:
        yield run


def evaluate(network: torch.nn.Module, samples: Sequence[Sample], classes: int) -> Metrics:
    """Scores of ``network`` on ``samples`` (``classes`` includes background)."""
    matrix = np.zeros((classes, classes), dtype=np.int64)
    for sample, probability in zip(samples, probabilities(network, [s.image for s in samples]), strict=True):
        matrix += confusion(probability.argmax(dim=0).numpy(), sample.target, classes)
    return metrics_from_confusion(matrix)
