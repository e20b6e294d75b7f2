"""A model version over many tiles: the chunk function that Dask workers (or this process) run.

:func:`run_chunk` takes values only: a :class:`ModelJob` (the version's folder and name, the
prediction store's folder, the uncertainty method, the device, and, for a round, the project's
labelling schema) and a chunk of :class:`TileWork` (tile and raster records). It reads the tiles from
their source rasters, runs the model as one batch, stores each tile's probabilities atomically
(:class:`~trainer.predictions.PredictionStore`) and returns small :class:`TileOutcome` values. It never
opens the registry, so any worker that sees the data folder and the rasters can run it.

:func:`map_tiles` cuts a tile list into chunks and runs them on an engine
(:func:`geolabel.compute.open_engine`), in order. Chunks are the same whatever the engine, so a
2-worker cluster and this process give the same batches, hence the same stored bytes and scores.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from geolabel.compute import Engine
from geolabel.lsmodels import ProjectSchema
from georef.registry import RasterRecord, TileRecord
from trainer.device import resolve_device
from trainer.inference import LoadedModel, load_version, read_input
from trainer.preannotations import prediction
from trainer.predictions import PredictionStore, StoredPrediction, quantise
from trainer.scoring import UncertaintyMethod
from trainer.selection import score_tiles
from trainer.versions import ModelStore


@dataclass(frozen=True)
class ModelJob:
    """What every chunk of a job shares: which version runs, where its predictions go, how to score.

    Attributes:
        models_dir: the project's model store folder.
        version: the model version's name (its folder in ``models_dir``).
        predictions_dir: the project's prediction store folder.
        method: the uncertainty method of the scores.
        device: ``[compute] device`` (``auto``, ``cpu``, ``cuda:N``).
        schema: the project's labelling schema when each outcome must carry its Label Studio prediction
            (a round); None otherwise (``geolabel predict``, the export).
    """

    models_dir: Path
    version: str
    predictions_dir: Path
    method: UncertaintyMethod = "entropy"
    device: str = "cpu"
    schema: ProjectSchema | None = None


@dataclass(frozen=True)
class TileWork:
    """One tile to predict: its record and its raster's (values; no registry needed)."""

    tile: TileRecord
    raster: RasterRecord


@dataclass(frozen=True)
class TileOutcome:
    """What a chunk returns per tile (its probabilities are stored, not returned).

    Attributes:
        tile_id: the tile.
        uncertainty: mean pixel uncertainty of the stored probabilities (0 sure .. 1).
        foreground: share of valid pixels predicted as a class.
        features: the encoder's pooled, L2-normalised features (for diverse batches).
        peak_uncertainty: mean uncertainty of the tile's most uncertain pixels, what the next batch is
            picked by (:func:`trainer.selection.select_next`).
        prediction: the Label Studio prediction (regions, score, model version) when the job has a schema.
    """

    tile_id: str
    uncertainty: float
    foreground: float
    features: npt.NDArray[np.float32]
    peak_uncertainty: float = 0.0
    prediction: dict[str, Any] | None = None

    @property
    def confidence(self) -> float:
        """``1 - uncertainty``: the prediction's ``score`` in Label Studio."""
        return 1.0 - self.uncertainty


@functools.lru_cache(maxsize=2)
def cached_model(models_dir: Path, version: str, device: str) -> LoadedModel:
    """Version ``version`` loaded once per process (each Dask worker keeps the last two it ran).

    Raises:
        ModelStoreError: if its files are missing or do not fit.
        TrainerError: if the device is not available.
    """
    loaded = load_version(ModelStore(models_dir), version)
    return LoadedModel(loaded.manifest, loaded.network.to(resolve_device(device)))


def run_chunk(job: ModelJob, chunk: Sequence[TileWork]) -> list[TileOutcome]:
    """Predict, store and score one chunk of tiles (one batch through the model).

    Raises:
        ModelInputError: if a tile's raster is missing or cannot feed the model.
        ModelStoreError: if the version cannot be loaded.
    """
    model = cached_model(job.models_dir, job.version, job.device)
    manifest = model.manifest
    store = PredictionStore(job.predictions_dir, job.version)
    inputs = [read_input(work.raster, work.tile, manifest) for work in chunk]
    scores = score_tiles(model.network, [i.pixels for i in inputs], [i.valid for i in inputs], job.method)
    outcomes = []
    for work, tile_input, score in zip(chunk, inputs, scores, strict=True):
        store.save(work.tile.id, score.probabilities, tile_input.valid)
        pushed = None
        if job.schema is not None:
            kept = StoredPrediction(quantise(score.probabilities), tile_input.valid)  # as stored
            pushed = prediction(kept, manifest.classes, job.schema, job.method, job.version)
        outcomes.append(
            TileOutcome(
                work.tile.id,
                score.uncertainty,
                score.foreground,
                score.features,
                score.peak_uncertainty,
                pushed,
            )
        )
    return outcomes


def chunked(work: Sequence[TileWork], size: int) -> list[list[TileWork]]:
    """``work`` cut into chunks of ``size`` tiles, in order."""
    return [list(work[start : start + size]) for start in range(0, len(work), size)]


def map_tiles(
    engine: Engine,
    job: ModelJob,
    work: Sequence[TileWork],
    chunk: int,
    advance: Callable[[int], None] | None = None,
) -> Iterator[TileOutcome]:
    """Run :func:`run_chunk` over ``work`` on ``engine``; outcomes in the order of ``work``.

    ``advance(n)`` is called as each chunk of ``n`` tiles is done. Stop iterating to cancel the rest.
    """
    function = functools.partial(run_chunk, job)
    for outcomes in engine.map_ordered(function, chunked(work, chunk)):
        if advance is not None:
            advance(len(outcomes))
        yield from outcomes
