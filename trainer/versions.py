"""Model versions: the segmentation network's weights with their manifest, and which version is active.

Layout under ``<data_dir>/projects/<project>/models`` (one store per project)::

    ACTIVE                 # name of the active version (replaced atomically)
    <version>/manifest.json
    <version>/weights.pt   # state_dict

A version folder is written under a temporary name and renamed when complete,
so a crash mid-write never leaves a half version, and the active version keeps
serving until ``ACTIVE`` is replaced.
"""

from __future__ import annotations

import datetime as dt
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from geolabel.classes import LabelClass
from trainer.errors import ModelStoreError

if TYPE_CHECKING:  # torch loads only when weights are read or written (exports read manifests only)
    import torch

ACTIVE = "ACTIVE"
MANIFEST = "manifest.json"
WEIGHTS = "weights.pt"


class InputSpec(BaseModel):
    """Which source-raster bands the model reads and how they are normalised: ``(value - mean) / std``."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    bands: list[int] = Field(min_length=1, max_length=8)
    mean: list[float]
    std: list[float]

    @model_validator(mode="after")
    def _lengths(self) -> InputSpec:
        if not len(self.bands) == len(self.mean) == len(self.std):
            raise ValueError("bands, mean and std must have the same length")
        if any(s <= 0 for s in self.std):
            raise ValueError("std values must be positive")
        return self


class ModelManifest(BaseModel):
    """Everything needed to rebuild and use a model version."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    version: str = Field(pattern=r"^[A-Za-z0-9._-]+$")
    created: str
    architecture: str = "Unet"
    encoder: str = "resnet18"
    #: Encoder stages used (3-5) and the decoder's channels per stage, deepest first: a light U-Net
    #: (11.5 M weights, most of them in the encoder) that trains on a 2-core CPU in minutes.
    encoder_depth: int = Field(default=4, ge=3, le=5)
    decoder_channels: list[int] = Field(default_factory=lambda: [64, 32, 16, 8])
    classes: list[LabelClass] = Field(min_length=1)
    input: InputSpec
    metrics: dict[str, float] = Field(default_factory=dict)
    #: What the weights started from before training: a prior, encoder weights, the previous
    #: version (warm start) or random weights (see :mod:`trainer.transfer`).
    origin: str = ""

    @model_validator(mode="after")
    def _decoder_matches_depth(self) -> ModelManifest:
        if len(self.decoder_channels) != self.encoder_depth:
            raise ValueError("decoder_channels needs one entry per encoder stage (encoder_depth)")
        return self

    @property
    def channels(self) -> int:
        """Number of input bands."""
        return len(self.input.bands)

    @property
    def outputs(self) -> int:
        """Number of output channels: background plus one per class."""
        return len(self.classes) + 1


def new_version_name(now: dt.datetime | None = None) -> str:
    """A sortable version name from the UTC time, e.g. ``v20261122-153012``."""
    moment = now or dt.datetime.now(dt.UTC)
    return moment.strftime("v%Y%m%d-%H%M%S")


class ModelStore:
    """The model versions folder."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def versions(self) -> list[str]:
        """Complete versions, oldest first."""
        if not self.root.is_dir():
            return []
        return sorted(
            p.name for p in self.root.iterdir() if (p / MANIFEST).is_file() and not p.name.startswith(".")
        )

    def active_name(self) -> str | None:
        """Name of the active version, or None before the first promotion.

        Raises:
            ModelStoreError: if ``ACTIVE`` names a version that is not there.
        """
        pointer = self.root / ACTIVE
        if not pointer.is_file():
            return None
        name = pointer.read_text(encoding="utf-8").strip()
        if not (self.root / name / MANIFEST).is_file():
            raise ModelStoreError(f"{pointer} names version {name!r}, which is missing from {self.root}")
        return name

    def manifest(self, name: str) -> ModelManifest:
        """The manifest of version ``name``.

        Raises:
            ModelStoreError: if it is missing or invalid.
        """
        file = self.root / name / MANIFEST
        try:
            return ModelManifest.model_validate_json(file.read_text(encoding="utf-8"))
        except (OSError, ValidationError) as exc:
            raise ModelStoreError(
                f"model version {name}: cannot read {file} ({type(exc).__name__})"
            ) from None

    def weights(self, name: str) -> dict[str, torch.Tensor]:
        """The state dict of version ``name``.

        Raises:
            ModelStoreError: if the weights file is missing or unreadable.
        """
        file = self.root / name / WEIGHTS
        try:
            import torch

            state = torch.load(file, map_location="cpu", weights_only=True)
        except Exception as exc:  # pickle, zip and torch errors alike
            raise ModelStoreError(
                f"model version {name}: cannot read {file} ({type(exc).__name__})"
            ) from None
        if not isinstance(state, dict):
            raise ModelStoreError(f"model version {name}: {file} does not hold a state dict")
        return state

    def save(
        self,
        manifest: ModelManifest,
        state: dict[str, torch.Tensor],
        extras: Callable[[Path], None] | None = None,
    ) -> Path:
        """Write a new version (manifest and weights) atomically; it is not activated.

        ``extras`` writes more files into the version folder before it is complete (a contender
        that won the round, :mod:`trainer.contender`).

        Raises:
            ModelStoreError: if the version exists already, or cannot be written (then nothing of it is left).
        """
        final = self.root / manifest.version
        if final.exists():
            raise ModelStoreError(f"model version {manifest.version} exists already in {self.root}")
        staging = self.root / f".{manifest.version}.partial"
        shutil.rmtree(staging, ignore_errors=True)
        try:
            staging.mkdir(parents=True)
            import torch

            torch.save(state, staging / WEIGHTS)
            if extras is not None:
                extras(staging)
            (staging / MANIFEST).write_text(manifest.model_dump_json(indent=2), encoding="utf-8")
            _fsync_dir_files(staging)
            os.replace(staging, final)
        except OSError as exc:  # disk full, permissions: nothing half-written stays behind
            shutil.rmtree(staging, ignore_errors=True)
            raise ModelStoreError(
                f"cannot write model version {manifest.version} in {self.root}: {exc.strerror or exc}"
            ) from None
        return final

    def remove_staging(self) -> list[str]:
        """Delete the staging folders a killed write left behind; returns their names.

        Only call it while no version is being written (the trainer holds its round lock).
        """
        if not self.root.is_dir():
            return []
        stale = [p for p in self.root.iterdir() if p.is_dir() and p.name.endswith(".partial")]
        for folder in stale:
            shutil.rmtree(folder, ignore_errors=True)
        return [p.name for p in stale]

    def discard(self, name: str) -> bool:
        """Delete version ``name`` (one a failed round wrote); return whether it was there.

        Only call it under the project's round lock, for a version no round promoted or kept.

        Raises:
            ModelStoreError: if ``name`` is the active version or not a version name.
        """
        if not name or name.startswith(".") or "/" in name or name == ACTIVE:
            raise ModelStoreError(f"{name!r} is not a model version name")
        if name == self.active_name():
            raise ModelStoreError(f"model version {name} is active: it cannot be removed")
        folder = self.root / name
        if not folder.is_dir():
            return False
        shutil.rmtree(folder)
        return True

    def activate(self, name: str) -> None:
        """Make ``name`` the active version (atomic replace of ``ACTIVE``).

        Raises:
            ModelStoreError: if the version does not exist.
        """
        if not (self.root / name / MANIFEST).is_file():
            raise ModelStoreError(f"cannot activate {name!r}: no such version in {self.root}")
        temporary = self.root / f".{ACTIVE}.{os.getpid()}.tmp"
        temporary.write_text(name + "\n", encoding="utf-8")
        os.replace(temporary, self.root / ACTIVE)

    def restore_active(self, name: str | None) -> None:
        """Put back the active version a failed promotion replaced (None: no version was active).

        Raises:
            ModelStoreError: if ``name`` is not a version of this store.
        """
        if name is None:
            (self.root / ACTIVE).unlink(missing_ok=True)
        elif self.active_name() != name:
            self.activate(name)


def _fsync_dir_files(folder: Path) -> None:
    for file in folder.iterdir():
        with open(file, "rb") as handle:
            os.fsync(handle.fileno())
