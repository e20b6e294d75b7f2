"""A light segmentation head on SAM image embeddings: one image encoder for clicks and for a model.

The backend caches SAM's ``(256, 64, 64)`` image embedding of every tile an annotator clicks on
(:mod:`ml_backend.embeddings`). A small convolutional head (:class:`SamHead`, 18 k weights)
trained on those embeddings predicts the classes of a tile; it trains in about 20 s on one thread
of a 2-core CPU, from the first few labelled tiles. Each round offers it as a
:class:`~trainer.contender.Contender` beside the U-Net (:class:`SamHeadContender`); when it
validates better, its files go into the version folder and the backend serves pre-annotations
from it (:class:`ActiveHead`).

Geometry: SAM resizes a tile's longest side to 1024 px and pads bottom and right; each embedding
cell covers 16 x 16 px of that 1024 px frame. A tile of ``height x width`` pixels fills the top-left
``input_size`` of the frame (:attr:`~ml_backend.sam.Embedding.input_size`), so the top-left
``ceil(input_height / 16) x ceil(input_width / 16)`` cells (:func:`covered_cells`). The head's
per-cell logits are interpolated bilinearly at each tile pixel's centre, in cell-centred
coordinates (:func:`axis_cells`): SAM's own mask post-processing (upscale to 1024, crop the
padding, resize to the tile) in one step, except that no pixel reads a padding cell.
"""

from __future__ import annotations

import logging
import math
import pickle
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import segmentation_models_pytorch as smp
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from geolabel.classes import BACKGROUND_NAME, LabelClass
from geolabel.config import Config
from georef.registry import TileRecord
from ml_backend.embeddings import EmbeddingCache
from ml_backend.errors import BackendError
from ml_backend.sam import Embedding, SamEngine
from trainer.contender import WINNER_FILE, ContenderResult
from trainer.errors import ModelStoreError
from trainer.harvest import LabelledTile
from trainer.metrics import IGNORE, Metrics, confusion, metrics_from_confusion

log = logging.getLogger("geolabel.samhead")

#: The contender's name: in ``winner.txt``, the round record and the pre-annotations' model version.
HEAD_NAME = "sam_head"
#: Files of a head in a version folder.
HEAD_WEIGHTS, HEAD_INFO = "sam_head.pt", "sam_head.json"
#: Side of SAM's input frame (every SAM type): the embedding grid spans it.
SAM_INPUT = 1024
#: Embeddings a round may compute for labelled tiles not cached yet (14-20 s each for vit_b on a
#: 2-core CPU); they stay cached for later clicks.
DEFAULT_MAX_NEW_EMBEDDINGS = 16
#: Fewest training tiles with an embedding and labelled pixels for the head to train.
MIN_TRAIN_TILES = 2


@dataclass(frozen=True)
class HeadSettings:
    """How the head is built and trained.

    Attributes:
        steps: optimisation steps (batches); a fixed count, so a handful of tiles gets as many updates
            as many tiles (about 13 ms per tile and step on one thread of a shared 2-core CPU).
        batch_size: embeddings per step.
        pixels_per_tile: labelled pixels of each tile drawn per step for the loss (all when fewer);
            neighbouring pixels interpolate the same cells, so a sample says as much as the tile.
        learning_rate: AdamW peak learning rate (one-cycle schedule).
        hidden: channels of the head's hidden layers.
        dropout: share of the 256 embedding channels dropped per training step (few tiles overfit).
        weight_decay: AdamW weight decay.
        threads: torch threads while training (None: leave torch's setting). The head's operations
            are small: on a shared 2-core CPU, 1 thread trained 50 tiles in 18 s and 2 threads in
            71 s (threads waiting for each other); the previous setting is restored afterwards.
    """

    steps: int = 200
    batch_size: int = 8
    pixels_per_tile: int = 4096
    learning_rate: float = 3e-3
    hidden: int = 32
    dropout: float = 0.1
    weight_decay: float = 1e-4
    threads: int | None = 1


class SamHead(torch.nn.Module):
    """Per-cell class logits from a SAM embedding: 1x1 conv, 3x3 conv (context), 1x1 conv.

    Args:
        outputs: logits per cell: background plus one per class.
        hidden: channels of the hidden layers.
        dropout: channel dropout on the embedding while training.
        channels: channels of the embedding (256 for every SAM type).
    """

    def __init__(self, outputs: int, hidden: int = 32, dropout: float = 0.1, channels: int = 256) -> None:
        super().__init__()
        self.outputs = outputs
        self.layers = torch.nn.Sequential(
            torch.nn.Dropout2d(dropout),
            torch.nn.Conv2d(channels, hidden, 1),
            torch.nn.GELU(),
            torch.nn.Conv2d(hidden, hidden, 3, padding=1),
            torch.nn.GELU(),
            torch.nn.Conv2d(hidden, outputs, 1),
        )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """``(batch, outputs, cells, cells)`` logits of ``(batch, channels, cells, cells)`` embeddings."""
        result: torch.Tensor = self.layers(features)
        return result


# geometry -------------------------------------------------------------------------------


def covered_cells(embedding: Embedding) -> tuple[int, int]:
    """``(rows, cols)`` of embedding cells the tile covers (top-left); the others are SAM's padding."""
    cell = SAM_INPUT / embedding.features.shape[-1]
    input_h, input_w = embedding.input_size
    return math.ceil(input_h / cell), math.ceil(input_w / cell)


@dataclass(frozen=True)
class AxisCells:
    """For each pixel of one tile axis: the two cells around its centre and the second one's weight."""

    low: npt.NDArray[np.int64]
    high: npt.NDArray[np.int64]
    share: npt.NDArray[np.float32]

    def weights(self, cells: int) -> npt.NDArray[np.float32]:
        """``(pixels, cells)`` bilinear weights of the cells for each pixel."""
        weights = np.zeros((len(self.low), cells), dtype=np.float32)
        pixels = np.arange(len(self.low))
        np.add.at(weights, (pixels, self.low), 1.0 - self.share)
        np.add.at(weights, (pixels, self.high), self.share)
        return weights


def axis_cells(pixels: int, input_pixels: int, cells: int) -> AxisCells:
    """Where each pixel of one tile axis falls among the embedding's cells (bilinear interpolation).

    Pixel ``i`` (centre ``i + 0.5``) lies at ``(i + 0.5) * input_pixels / pixels`` in SAM's 1024 px
    frame, so at ``that / cell - 0.5`` in cell-centre coordinates (``cell`` = 1024 / ``cells`` px).
    Positions beyond the centres of the first and of the last covered cell (``ceil(input_pixels /
    cell)`` cells) take that cell: no pixel reads SAM's padding. Elsewhere this is SAM's own mask
    post-processing (upscale to 1024, crop, resize), which also blends the padding cell into the
    last half cell of pixels.

    Raises:
        ValueError: if the sizes are not those of a tile axis inside SAM's frame.
    """
    if pixels <= 0 or not 0 < input_pixels <= SAM_INPUT:
        raise ValueError(f"a tile axis of {pixels} px resized to {input_pixels} px is not inside SAM's frame")
    cell = SAM_INPUT / cells
    last = math.ceil(input_pixels / cell) - 1
    position = np.clip((np.arange(pixels) + 0.5) * (input_pixels / pixels) / cell - 0.5, 0.0, last)
    low = np.floor(position).astype(np.int64)
    share = (position - low).astype(np.float32)
    return AxisCells(low, np.minimum(low + 1, last), share)


def tile_logits(cell_logits: torch.Tensor, embedding: Embedding) -> torch.Tensor:
    """``(outputs, height, width)`` logits at the tile's pixels from ``(outputs, cells, cells)`` ones.

    Raises:
        ValueError: if the embedding's sizes do not describe a tile inside SAM's frame.
    """
    rows, cols = tile_cells(embedding)
    device = cell_logits.device
    row_weights = torch.from_numpy(rows.weights(cell_logits.shape[-2])).to(device)
    col_weights = torch.from_numpy(cols.weights(cell_logits.shape[-1])).to(device)
    return row_weights @ cell_logits @ col_weights.T


def tile_cells(embedding: Embedding) -> tuple[AxisCells, AxisCells]:
    """:func:`axis_cells` of the rows and of the columns of an embedding's tile.

    Raises:
        ValueError: if the embedding's sizes do not describe a tile inside SAM's frame.
    """
    cells_h, cells_w = embedding.features.shape[-2:]
    (height, width), (input_h, input_w) = embedding.original_size, embedding.input_size
    return axis_cells(height, input_h, cells_h), axis_cells(width, input_w, cells_w)


# training and prediction ----------------------------------------------------------------------


def train_head(
    embeddings: Sequence[Embedding],
    targets: Sequence[npt.NDArray[np.uint8]],
    outputs: int,
    seed: int = 0,
    settings: HeadSettings | None = None,
    device: torch.device | None = None,
) -> tuple[SamHead, list[float]]:
    """Train a new head on tiles' embeddings and class-index targets; returns it and each step's loss.

    Loss: cross-entropy plus Dice over every class, background included (as :func:`trainer.fit.train`),
    on labelled pixels drawn from each tile per step (:attr:`HeadSettings.pixels_per_tile`; IGNORE
    pixels are never drawn). No augmentation: SAM's features change when the image turns, so turned
    features would be another image's.

    Args:
        embeddings: the tiles' SAM embeddings.
        targets: ``(height, width)`` class indices (0 = background, IGNORE = left out), one per tile,
            of the tile's size (:attr:`~ml_backend.sam.Embedding.original_size`).
        outputs: background plus the number of classes.
        seed: seeds the head's initial weights, the dropout, the batch order and the pixels drawn.
        settings: steps, batch size, learning rate, widths (default :class:`HeadSettings`).
        device: where to train (default: the CPU).

    Raises:
        ValueError: if there is no tile with a labelled pixel, or a target's size is not its tile's.
    """
    settings = settings or HeadSettings()
    device = device or torch.device("cpu")
    kept = _labelled(embeddings, targets)
    torch.manual_seed(seed)
    channels = kept[0][0].features.shape[0]
    head = SamHead(outputs, settings.hidden, settings.dropout, channels).to(device)
    optimiser = torch.optim.AdamW(
        head.parameters(), settings.learning_rate, weight_decay=settings.weight_decay
    )
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimiser, settings.learning_rate, settings.steps)
    loss_of = _Loss()
    prepared = [_Prepared.of(embedding, target, device) for embedding, target in kept]
    rng = np.random.default_rng(seed)
    losses = []
    head.train()
    with _torch_threads(settings.threads):
        for batch in _batches(len(prepared), settings, rng):
            loss = loss_of(head, [prepared[i] for i in batch], settings.pixels_per_tile, rng)
            optimiser.zero_grad(set_to_none=True)
            torch.autograd.backward(loss)
            optimiser.step()
            schedule.step()
            losses.append(float(loss.item()))
    return head.eval(), losses


@contextmanager
def _torch_threads(count: int | None) -> Iterator[None]:
    """Torch's thread count set to ``count`` (process-wide) for the block, then put back."""
    if count is None:
        yield
        return
    before = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def _labelled(
    embeddings: Sequence[Embedding], targets: Sequence[npt.NDArray[np.uint8]]
) -> list[tuple[Embedding, npt.NDArray[np.uint8]]]:
    """The tiles with at least one labelled pixel (an all-IGNORE tile has no loss)."""
    if len(embeddings) != len(targets):
        raise ValueError(f"{len(embeddings)} embeddings but {len(targets)} targets")
    kept = []
    for embedding, target in zip(embeddings, targets, strict=True):
        if target.shape != embedding.original_size:
            raise ValueError(f"a target of {target.shape} px for a tile of {embedding.original_size} px")
        if (target != IGNORE).any():
            kept.append((embedding, target))
    if not kept:
        raise ValueError("no tile with a labelled pixel to train the SAM head on")
    return kept


@dataclass(frozen=True)
class _Prepared:
    """A training tile: float16 features as a tensor (2 MB), its axes' cells, labelled pixels and labels."""

    features: torch.Tensor
    rows: AxisCells
    cols: AxisCells
    pixels: npt.NDArray[np.int16]  # (labelled, 2): row, col (tiles are far under 32768 px)
    labels: npt.NDArray[np.uint8]

    @classmethod
    def of(cls, embedding: Embedding, target: npt.NDArray[np.uint8], device: torch.device) -> _Prepared:
        features = torch.from_numpy(np.asarray(embedding.features, dtype=np.float16)).to(device)
        pixels = np.argwhere(target != IGNORE).astype(np.int16)
        return cls(features, *tile_cells(embedding), pixels, target[pixels[:, 0], pixels[:, 1]])

    def sample(
        self, cell_logits: torch.Tensor, count: int, rng: np.random.Generator
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(outputs, n)`` logits and ``(n,)`` labels of at most ``count`` labelled pixels, drawn at random.

        The logits are :func:`tile_logits` at those pixels only (the four cells around each, weighted
        bilinearly), so a step costs the same for a 256 or a 1024 px tile.
        """
        total = len(self.labels)
        chosen = rng.choice(total, size=count, replace=False) if total > count else np.arange(total)
        row, col = self.pixels[chosen, 0], self.pixels[chosen, 1]
        rows, cols, width = self.rows, self.cols, cell_logits.shape[-1]
        corners = [(rows.low[row], 1 - rows.share[row]), (rows.high[row], rows.share[row])]
        sides = [(cols.low[col], 1 - cols.share[col]), (cols.high[col], cols.share[col])]
        cells = np.stack([r * width + c for r, _ in corners for c, _ in sides], axis=1)
        weights = np.stack([a * b for _, a in corners for _, b in sides], axis=1)
        device = cell_logits.device
        flat = cell_logits.flatten(1)[:, torch.from_numpy(cells).to(device)]  # (outputs, n, 4)
        logits = (flat * torch.from_numpy(weights).to(device)).sum(dim=-1)
        return logits, torch.from_numpy(self.labels[chosen].astype(np.int64)).to(device)


class _Loss:
    """Cross-entropy plus Dice of a batch's sampled pixels, all its tiles together (IGNORE never drawn)."""

    def __init__(self) -> None:
        self.cross_entropy = torch.nn.CrossEntropyLoss()
        self.dice = smp.losses.DiceLoss("multiclass")

    def __call__(
        self, head: SamHead, tiles: Sequence[_Prepared], count: int, rng: np.random.Generator
    ) -> torch.Tensor:
        cells = head(torch.stack([tile.features for tile in tiles]).float())
        drawn = [tile.sample(logits, count, rng) for logits, tile in zip(cells, tiles, strict=True)]
        pixels = torch.cat([logits for logits, _ in drawn], dim=1)  # (outputs, pixels of every tile)
        labels = torch.cat([labels for _, labels in drawn])
        loss: torch.Tensor = self.cross_entropy(pixels.T, labels) + self.dice(pixels[None], labels[None])
        return loss


def _batches(count: int, settings: HeadSettings, rng: np.random.Generator) -> Iterator[list[int]]:
    """``settings.steps`` batches of tile indices, through one shuffled pass after another."""
    size = min(settings.batch_size, count)
    order: list[int] = []
    for _ in range(settings.steps):
        if len(order) < size:
            order += [int(i) for i in rng.permutation(count)]
        batch, order = order[:size], order[size:]
        yield batch


@torch.inference_mode()
def head_probabilities(head: SamHead, embedding: Embedding) -> npt.NDArray[np.float32]:
    """``(outputs, height, width)`` softmax of the head at the tile's pixels (background first)."""
    head.eval()
    device = next(head.parameters()).device
    features = torch.from_numpy(np.asarray(embedding.features, dtype=np.float32)).to(device)
    logits = tile_logits(head(features[None])[0], embedding)
    return torch.softmax(logits, dim=0).cpu().numpy()


def evaluate_head(
    head: SamHead, embeddings: Sequence[Embedding], targets: Sequence[npt.NDArray[np.uint8]]
) -> Metrics:
    """Scores of the head's most probable class against the targets (IGNORE left out), as a round's."""
    outputs = head.outputs
    matrix = np.zeros((outputs, outputs), dtype=np.int64)
    for embedding, target in zip(embeddings, targets, strict=True):
        matrix += confusion(head_probabilities(head, embedding).argmax(axis=0), target, outputs)
    return metrics_from_confusion(matrix)


# saved heads -------------------------------------------------------------------------------------


class HeadInfo(BaseModel):
    """``sam_head.json``: what a saved head predicts and from which SAM checkpoint's embeddings."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str = HEAD_NAME
    classes: list[LabelClass] = Field(min_length=1)
    sam_identity: str
    hidden: int = Field(ge=1)
    channels: int = Field(ge=1)
    train_tiles: int = Field(ge=0)
    metrics: dict[str, float] = Field(default_factory=dict)


@dataclass(frozen=True)
class LoadedHead:
    """A saved head ready to predict."""

    info: HeadInfo
    head: SamHead

    def probabilities(self, embedding: Embedding) -> npt.NDArray[np.float32]:
        """``(classes + 1, height, width)`` softmax for the tile of ``embedding``."""
        return head_probabilities(self.head, embedding)


def save_head(folder: Path, head: SamHead, info: HeadInfo) -> None:
    """Write the head's weights and :class:`HeadInfo` into a version folder."""
    torch.save(head.state_dict(), folder / HEAD_WEIGHTS)
    (folder / HEAD_INFO).write_text(info.model_dump_json(indent=2), encoding="utf-8")


def load_head(folder: Path) -> LoadedHead:
    """The head saved in a version folder, in eval mode on the CPU.

    Raises:
        ModelStoreError: if its files are missing, unreadable or do not fit together.
    """
    try:
        info = HeadInfo.model_validate_json((folder / HEAD_INFO).read_text(encoding="utf-8"))
        state = torch.load(folder / HEAD_WEIGHTS, map_location="cpu", weights_only=True)
        head = SamHead(len(info.classes) + 1, info.hidden, 0.0, info.channels)
        head.load_state_dict(state)
    except (OSError, EOFError, pickle.UnpicklingError, ValidationError, RuntimeError, ValueError) as exc:
        raise ModelStoreError(
            f"the SAM head in {folder} cannot be loaded ({type(exc).__name__}); run a new round"
        ) from None
    return LoadedHead(info, head.eval())


def winner(folder: Path) -> str | None:
    """The model a version folder names in ``winner.txt`` (None: absent, the U-Net won)."""
    try:
        return (folder / WINNER_FILE).read_text(encoding="utf-8").strip() or None
    except FileNotFoundError:
        return None


class ActiveHead:
    """The SAM head of a model version whose winner it is, loaded once per version.

    A head that cannot serve here (SAM off, a head of another checkpoint's embeddings, unreadable
    files) is None, and the reason is logged once per version: pre-annotations then come from the
    version's U-Net.

    Args:
        models_dir: the project's model store folder.
        identity: the checkpoint identity of the backend's SAM, None when SAM is off.
    """

    def __init__(self, models_dir: Path, identity: str | None) -> None:
        self.models_dir = models_dir
        self.identity = identity
        self._version: str | None = None
        self._head: LoadedHead | None = None
        self._lock = threading.Lock()

    def get(self, version: str) -> LoadedHead | None:
        """The head serving ``version``, or None (its winner is the U-Net, or the head cannot serve)."""
        with self._lock:
            if self._version != version:
                self._head = self._load(version)
                self._version = version
            return self._head

    def _load(self, version: str) -> LoadedHead | None:
        folder = self.models_dir / version
        if winner(folder) != HEAD_NAME:
            return None
        if self.identity is None:
            log.warning("version %s won with its SAM head but SAM is off: its U-Net serves", version)
            return None
        try:
            loaded = load_head(folder)
        except ModelStoreError as exc:
            log.warning("%s; the U-Net of version %s serves", exc, version)
            return None
        if loaded.info.sam_identity != self.identity:
            log.warning(
                "the SAM head of version %s was trained on embeddings of SAM %s, the backend runs %s: "
                "the version's U-Net serves (a round with this checkpoint trains a head for it)",
                version, loaded.info.sam_identity, self.identity,
            )  # fmt: skip
            return None
        return loaded


# the round's contender ---------------------------------------------------------------------------


@dataclass
class _Gathered:
    """Embeddings found for a set of labelled tiles, and what happened to the others."""

    embeddings: list[Embedding] = field(default_factory=list)
    targets: list[npt.NDArray[np.uint8]] = field(default_factory=list)
    computed: int = 0
    uncached: int = 0
    failed: list[str] = field(default_factory=list)

    def describe(self, what: str, total: int) -> str:
        line = f"{len(self.embeddings)} of {total} {what} tiles embedded ({self.computed} computed now"
        if self.uncached:
            line += f", {self.uncached} not cached and over the cap"
        if self.failed:
            line += f", {len(self.failed)} unreadable: {self.failed[0]}"
        return line + ")"


@dataclass
class SamHeadContender:
    """The SAM-feature head as a round's :class:`~trainer.contender.Contender`.

    Args:
        sam: the SAM engine (None: SAM is off, the head does not take part).
        cache: the embedding cache of ``sam``'s checkpoint.
        image_path: a tile's display image (:meth:`ml_backend.service.Backend.image_path`).
        max_new_embeddings: embeddings a round may compute for labelled tiles not cached yet; they
            are stored in the cache, so later clicks on those tiles are warm.
        settings: the head's training settings.
    """

    sam: SamEngine | None
    cache: EmbeddingCache | None
    image_path: Callable[[TileRecord], Path]
    max_new_embeddings: int = DEFAULT_MAX_NEW_EMBEDDINGS
    settings: HeadSettings = field(default_factory=HeadSettings)
    name: str = HEAD_NAME

    def fit(
        self,
        train: Sequence[LabelledTile],
        validation: Sequence[LabelledTile],
        classes: Sequence[LabelClass],
        seed: int,
    ) -> ContenderResult | None:
        """Train the head on the training tiles' embeddings and score it on the validation tiles'.

        Missing embeddings are computed up to :attr:`max_new_embeddings`, validation tiles first:
        the head competes only when it is scored on every validation tile, as the U-Net is.
        Returns None when SAM is off; a result without metrics (it cannot win) says in its detail
        why the head was not trained.
        """
        if self.sam is None or self.cache is None:
            return None
        started = time.perf_counter()
        validated = _gather(self.sam, self.cache, self.image_path, validation, self.max_new_embeddings)
        left = self.max_new_embeddings - validated.computed
        trained = _gather(self.sam, self.cache, self.image_path, train, left)
        seen = (
            f"{trained.describe('training', len(train))}; {validated.describe('validation', len(validation))}"
        )
        why = _not_comparable(trained, validated, len(validation))
        if why is not None:
            return ContenderResult(self.name, {}, _not_trained(why), f"not trained ({why}): {seen}")
        head, _ = train_head(trained.embeddings, trained.targets, len(classes) + 1, seed, self.settings)
        with _torch_threads(self.settings.threads):
            scores = evaluate_head(head, validated.embeddings, validated.targets)
        metrics = scores.flat([BACKGROUND_NAME, *(c.name for c in classes)])
        info = HeadInfo(
            classes=list(classes), sam_identity=self.sam.identity, hidden=self.settings.hidden,
            channels=trained.embeddings[0].features.shape[0], train_tiles=len(trained.embeddings),
            metrics=metrics,
        )  # fmt: skip
        seconds = time.perf_counter() - started
        return ContenderResult(
            self.name, metrics, lambda folder: save_head(folder, head, info), f"{seen}; {seconds:.1f} s"
        )


def _not_comparable(trained: _Gathered, validated: _Gathered, validation_tiles: int) -> str | None:
    """Why the head cannot take part in this round's comparison, or None when it can."""
    usable = sum(bool((target != IGNORE).any()) for target in trained.targets)
    if usable < MIN_TRAIN_TILES:
        return f"too few training tiles: {usable} embedded with a labelled pixel, {MIN_TRAIN_TILES} needed"
    if validation_tiles == 0:
        return "no validation tile"
    if len(validated.embeddings) < validation_tiles:
        return "not every validation tile has an embedding, and the U-Net is scored on all of them"
    return None


def _gather(
    sam: SamEngine,
    cache: EmbeddingCache,
    image_path: Callable[[TileRecord], Path],
    tiles: Sequence[LabelledTile],
    budget: int,
) -> _Gathered:
    """The tiles' embeddings from the cache, computing at most ``budget`` missing ones (then cached)."""
    found = _Gathered()
    for labelled in tiles:
        try:
            image = image_path(labelled.tile)
            key = cache.key(labelled.tile.id, image)
            embedding = cache.get(key)
            if embedding is None and found.computed >= budget:
                found.uncached += 1
                continue
            if embedding is None:
                embedding = cache.get_or_compute(key, lambda image=image: sam.embed(_rgb(image)))  # type: ignore[misc]
                found.computed += 1
        except (BackendError, OSError) as exc:
            found.failed.append(f"tile {labelled.tile.id}: {exc}")
            continue
        if embedding.original_size != labelled.target.shape:
            found.failed.append(f"tile {labelled.tile.id}: its display image is not its size")
            continue
        found.embeddings.append(embedding)
        found.targets.append(labelled.target)
    return found


def _rgb(image: Path) -> npt.NDArray[np.uint8]:
    from ml_backend.service import load_rgb  # the service imports this module: read it late

    return load_rgb(image)[0]


def _not_trained(why: str) -> Callable[[Path], None]:
    def save(folder: Path) -> None:
        raise RuntimeError(f"the SAM head was not trained ({why}): it has nothing to save in {folder}")

    return save


def contender_from_config(
    config: Config, max_new_embeddings: int = DEFAULT_MAX_NEW_EMBEDDINGS
) -> SamHeadContender | None:
    """The SAM head contender of a project, or None (logged) when ``[sam] checkpoint`` is empty or unloadable.

    It loads SAM and opens the backend's embedding cache, as the backend does.
    """
    from ml_backend.app import settings_from_config  # the app imports the service, which imports this
    from ml_backend.service import Backend

    backend = Backend(settings_from_config(config))
    if backend.sam is None or backend.cache is None:
        log.info("no SAM head in rounds: SAM is off (%s)", backend.sam_error)
        return None
    return SamHeadContender(backend.sam, backend.cache, backend.image_path, max_new_embeddings)
