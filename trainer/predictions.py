"""Per-tile class probabilities of a model version, kept on disk for exports.

Layout under ``<data_dir>/projects/<project>/predictions`` (one store per project)::

    <version>/<tile_id>.npz   # proba: (classes + 1, height, width) uint8, 0-255; valid: packed bits

Probabilities are quantised to 0-255 (background first, then the manifest's
classes), as in the exported ``predictions_proba.tif``. Each file is written
under a temporary name and renamed, so a killed job leaves whole files only and
a rerun computes just the tiles still missing. This module does not import
torch: exports read stored predictions without loading a model
(:func:`trainer.inference.predict_tiles` computes them).
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from trainer.errors import ModelStoreError


@dataclass(frozen=True)
class StoredPrediction:
    """One tile's quantised probabilities ``(classes + 1, height, width)`` and its valid-pixel mask."""

    proba: npt.NDArray[np.uint8]
    valid: npt.NDArray[np.bool_]


def quantise(proba: npt.NDArray[np.float32]) -> npt.NDArray[np.uint8]:
    """Probabilities in 0..1 as 0..255 (rounded to nearest)."""
    return np.asarray(np.clip(np.rint(proba * 255.0), 0, 255), dtype=np.uint8)


class PredictionStore:
    """The stored predictions of one model version."""

    def __init__(self, root: Path, version: str) -> None:
        self.folder = root / version
        self.version = version

    def path(self, tile_id: str) -> Path:
        """File of a tile's prediction."""
        return self.folder / f"{tile_id}.npz"

    def has(self, tile_id: str) -> bool:
        """True when the tile's prediction is stored."""
        return self.path(tile_id).is_file()

    def save(self, tile_id: str, proba: npt.NDArray[np.float32], valid: npt.NDArray[np.bool_]) -> None:
        """Store a tile's ``(classes + 1, height, width)`` softmax (0..1) and valid mask, atomically."""
        if proba.shape[1:] != valid.shape:
            raise ValueError(f"probabilities {proba.shape[1:]} and valid mask {valid.shape} differ in size")
        self.folder.mkdir(parents=True, exist_ok=True)
        final = self.path(tile_id)
        partial = final.with_name(f".{final.name}.{os.getpid()}.partial")
        with open(partial, "wb") as handle:
            np.savez_compressed(handle, proba=quantise(proba), valid=np.packbits(valid), shape=valid.shape)
        os.replace(partial, final)

    def load(self, tile_id: str) -> StoredPrediction:
        """A tile's stored prediction.

        Raises:
            ModelStoreError: if it is missing or unreadable.
        """
        path = self.path(tile_id)
        try:
            with np.load(path) as data:
                height, width = (int(v) for v in data["shape"])
                valid = np.unpackbits(data["valid"], count=height * width).reshape(height, width).astype(bool)
                return StoredPrediction(np.asarray(data["proba"], dtype=np.uint8), valid)
        except (OSError, KeyError, ValueError) as exc:
            raise ModelStoreError(
                f"prediction of tile {tile_id} by {self.version} is missing or unreadable ({path}): {exc}"
            ) from None

    def missing(self, tile_ids: Iterable[str]) -> list[str]:
        """The tiles of ``tile_ids`` without a stored prediction, in order."""
        return [tile_id for tile_id in tile_ids if not self.has(tile_id)]
