"""Running a model version on tiles: source-raster input and class probabilities."""

from __future__ import annotations

from collections.abc import Sequence
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


def input_bands(raster: RasterRecord, manifest: ModelManifest) -> list[int]:
    """The bands of ``raster`` that feed ``manifest``'s inputs: the raster's recorded mapping.

    A raster imported before mappings were recorded feeds the model's own band numbers when it has them.

    Raises:
        ModelInputError: if the raster cannot provide the model's input; the message names the raster,
            what the model reads and what to do.
    """
    wanted = len(manifest.input.bands)
    bands = list(raster.input_bands) if raster.input_bands is not None else list(manifest.input.bands)
    if len(bands) == wanted and max(bands) <= raster.band_count:
        return bands
    has = f"maps bands {bands} to it" if raster.input_bands is not None else f"has {raster.band_count} bands"
    raise ModelInputError(
        f"{raster.name} cannot feed model {manifest.version}: the model reads {wanted} bands "
        f"(bands {manifest.input.bands} of the project's first raster) and {raster.name} {has}; its "
        f"tiles are left out. Remove it with `geolabel forget {raster.path}` and import it into a project "
        "of its own"
    )


def read_input(raster: RasterRecord, tile: TileRecord, manifest: ModelManifest) -> TileInput:
    """Read the bands of ``tile`` that feed the model (:func:`input_bands`) and normalise them.

    Raises:
        ModelInputError: if the raster is missing or cannot provide the model's input.
    """
    bands = input_bands(raster, manifest)
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


def feeding_tiles(
    registry: TileRegistry, tiles: Sequence[TileRecord], manifest: ModelManifest
) -> tuple[list[TileRecord], list[str]]:
    """The tiles whose raster can provide ``manifest``'s input, and one problem per raster that cannot.

    A raster imported before projects fixed their input may not have the model's bands: its tiles are
    left out (and said so) instead of stopping a round or an export of every other tile.
    """
    problems: dict[int, str] = {}
    rasters: dict[int, RasterRecord] = {}
    kept: list[TileRecord] = []
    for tile in tiles:
        if tile.raster_id not in rasters:
            rasters[tile.raster_id] = raster = registry.raster(tile.raster_id)
            try:
                input_bands(raster, manifest)
            except ModelInputError as exc:
                problems[tile.raster_id] = str(exc)
        if tile.raster_id not in problems:
            kept.append(tile)
    return kept, list(problems.values())
