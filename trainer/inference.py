"""Running a model version on tiles: source-raster input and class probabilities."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import rasterio
import torch
from rasterio.errors import RasterioIOError
from rasterio.windows import Window

from georef.registry import RasterRecord, TileRecord, TileRegistry
from importers.display import valid_mask
from trainer.errors import ModelInputError, ModelStoreError
from trainer.model import build_model
from trainer.predictions import PredictionStore
from trainer.versions import ModelManifest, ModelStore


@dataclass(frozen=True)
class TileInput:
    """Normalised ``(bands, height, width)`` float32 model input and the mask of valid pixels."""

    pixels: npt.NDArray[np.float32]
    valid: npt.NDArray[np.bool_]


@dataclass(frozen=True)
class LoadedModel:
    """A model version ready to predict."""

    manifest: ModelManifest
    network: torch.nn.Module


def load_version(store: ModelStore, name: str) -> LoadedModel:
    """Rebuild version ``name`` from its manifest and weights, in eval mode on the CPU.

    Raises:
        ModelStoreError: if the files are missing or the weights do not fit the manifest.
    """
    manifest = store.manifest(name)
    network = build_model(manifest)
    try:
        network.load_state_dict(store.weights(name))
    except RuntimeError:
        raise ModelStoreError(f"model version {name}: weights do not match its manifest") from None
    return LoadedModel(manifest, network.eval())


def read_input(raster: RasterRecord, tile: TileRecord, manifest: ModelManifest) -> TileInput:
    """Read the model's bands of ``tile`` from its source raster and normalise them.

    Raises:
        ModelInputError: if the raster is missing or has fewer bands than the model reads.
    """
    bands = manifest.input.bands
    if max(bands) > raster.band_count:
        raise ModelInputError(
            f"model {manifest.version} reads bands {bands} but {raster.path} has {raster.band_count}"
        )
    window = Window(tile.window.col_off, tile.window.row_off, tile.window.width, tile.window.height)
    try:
        with rasterio.open(raster.path) as src:
            data = src.read(bands, window=window)
            valid = valid_mask(src, bands, data, window)
    except RasterioIOError as exc:
        raise ModelInputError(f"cannot read {raster.path} for tile {tile.id}: {exc}") from None
    mean = np.asarray(manifest.input.mean, dtype=np.float32)[:, None, None]
    std = np.asarray(manifest.input.std, dtype=np.float32)[:, None, None]
    pixels = (np.nan_to_num(data.astype(np.float32)) - mean) / std
    pixels[:, ~valid] = 0.0
    return TileInput(pixels, valid)


def pad_to_32(pixels: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """``(bands, height, width)`` reflect-padded bottom and right to multiples of 32 (U-Net strides)."""
    _, height, width = pixels.shape
    pad_h, pad_w = -height % 32, -width % 32
    if pad_h == 0 and pad_w == 0:
        return pixels
    return np.pad(pixels, ((0, 0), (0, pad_h), (0, pad_w)), mode="reflect")


def predict_tiles(
    registry: TileRegistry,
    model: LoadedModel,
    store: PredictionStore,
    tiles: Sequence[TileRecord],
    advance: Callable[[int], None] | None = None,
    chunk: int = 16,
) -> None:
    """Run ``model`` on ``tiles`` (read from their source rasters) and store each prediction.

    Tiles are read and predicted ``chunk`` at a time (same-size tiles run as one batch); each stored
    tile calls ``advance(1)``. Already stored tiles are not skipped here: pass
    ``store.missing(...)`` to resume.
    """
    from trainer.fit import probabilities  # trainer.fit imports this module

    for start in range(0, len(tiles), chunk):
        part = tiles[start : start + chunk]
        inputs = [read_input(registry.raster(t.raster_id), t, model.manifest) for t in part]
        softmaxes = probabilities(model.network, [i.pixels for i in inputs])
        for tile, tile_input, softmax in zip(part, inputs, softmaxes, strict=True):
            store.save(tile.id, softmax.numpy(), tile_input.valid)
            if advance is not None:
                advance(1)
