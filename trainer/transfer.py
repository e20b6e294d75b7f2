"""Starting a model from what is already known: an earlier model version, or pretrained encoder weights.

Two sources, both files the user names (nothing is ever downloaded):

- a **prior**: a model version of this project, the active version of another project of the
  data folder, or a version folder / ``weights.pt`` with its ``manifest.json`` anywhere on disk
  (:func:`resolve_prior`). :func:`adapt_prior` turns its weights into the new network's: every
  tensor of the same name and shape is copied; output channels are matched **by class name**
  (background to background), a class the prior does not know gets fresh output weights and a
  class only the prior knows is dropped; a different number of input bands is adapted in the first
  convolution (below);
- **encoder weights**: a torchvision or timm ResNet state dict (``[model] encoder_weights``) loaded
  into the U-Net's encoder by :func:`load_encoder_weights`; the classifier (``fc.*``) is left out,
  anything else that does not fit is an error naming the keys.

Input bands: with as many bands as the prior, its first convolution and its normalisation are
kept as they are (the new version computes exactly what the prior computed). With ``m`` bands
instead of ``n``, the first convolution's kernel for band ``j`` is the prior's kernel of band
``j mod n`` scaled by ``n / m``, and a single band takes the sum of the prior's kernels (what timm
does for pretrained weights on other band counts); the new version then normalises with the
project's own statistics. Bands are matched by position: a prior trained on RGB gives its red
kernel to the project's first band whatever that band is.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from geolabel.config import Config
from geolabel.errors import ConfigError
from trainer.errors import ModelStoreError, TrainerError
from trainer.versions import MANIFEST, WEIGHTS, ModelManifest, ModelStore

if TYPE_CHECKING:
    import torch

#: The model fields a prior must share with the new version (its architecture).
ARCHITECTURE = ("architecture", "encoder", "encoder_depth", "decoder_channels")
#: The first convolution of the smp U-Net's ResNet encoders, and of torchvision / timm ResNets.
FIRST_CONV = "conv1.weight"
#: The segmentation head's output layer (one row per output channel: background, then classes).
HEAD = ("segmentation_head.0.weight", "segmentation_head.0.bias")
#: Keys of a classification ResNet that a segmentation encoder has no use for.
CLASSIFIER = ("fc.",)
#: At most this many key names in an error message.
SHOWN = 8


@dataclass(frozen=True)
class Prior:
    """An earlier model the new version starts from."""

    manifest: ModelManifest
    state: dict[str, torch.Tensor]
    source: str  # what it is, for messages and the version's origin


@dataclass(frozen=True)
class TransferReport:
    """What :func:`adapt_prior` carried over."""

    copied: int  # tensors copied as they were
    mapped: tuple[str, ...]  # classes whose output weights came from the prior (by name)
    new: tuple[str, ...]  # classes with fresh output weights
    dropped: tuple[str, ...]  # classes of the prior this project does not have
    bands: str  # how the input bands were handled

    def describe(self, source: str) -> str:
        """One line: where the weights came from and what was mapped."""
        parts = [f"from {source}", f"classes kept {', '.join(self.mapped) or 'none'}"]
        if self.new:
            parts.append(f"new {', '.join(self.new)}")
        if self.dropped:
            parts.append(f"dropped {', '.join(self.dropped)}")
        return "; ".join([*parts, self.bands])


def resolve_prior(config: Config, spec: str) -> Prior:
    """The prior named by ``spec``: a file or folder, a version of this project, or another project.

    Looked up in this order: an existing path (a version folder, or a weights file with
    ``manifest.json`` beside it; relative paths from the config file's folder), a version name of
    the project's model store, a project name of the data folder (its active version).

    Raises:
        TrainerError: if ``spec`` names none of these, or the prior cannot be read; the message lists
            what exists.
    """
    path = (config.base_dir / spec).resolve()
    if path.exists():
        return _prior_from_path(path)
    models = ModelStore(config.models_dir)
    if spec in models.versions():
        return Prior(models.manifest(spec), models.weights(spec), f"version {spec}")
    try:
        other = config.for_project(spec)
    except ConfigError:
        other = None
    if other is not None and other.project.name != config.project.name:
        store = ModelStore(other.models_dir)
        active = store.active_name()
        if active is not None:
            return Prior(
                store.manifest(active), store.weights(active), f"project {spec!r} (version {active})"
            )
        if store.root.is_dir():
            raise TrainerError(f"--init-from {spec!r}: project {spec!r} has no active model version yet")
    versions = ", ".join(models.versions()[-5:]) or "none yet"
    raise TrainerError(
        f"--init-from {spec!r}: no such file, model version or project. Give a version of this project "
        f"(latest: {versions}), another project's name (its active version is used), or the path of "
        f"a version folder / weights.pt with its {MANIFEST}"
    )


def _prior_from_path(path: Path) -> Prior:
    folder = path if path.is_dir() else path.parent
    weights = path if path.is_file() else folder / WEIGHTS
    if not (folder / MANIFEST).is_file():
        raise TrainerError(
            f"--init-from {path}: no {MANIFEST} beside it. geolabel needs a model version folder "
            f"(<data>/projects/<project>/models/<version>) or a {WEIGHTS} with its {MANIFEST}; for a "
            "plain pretrained encoder use [model] encoder_weights"
        )
    try:
        manifest = ModelStore(folder.parent).manifest(folder.name)
        state = _read_state(weights)
    except ModelStoreError as exc:
        raise TrainerError(f"--init-from {path}: {exc}") from None
    return Prior(manifest, state, str(path))


def starting_manifest(prior: ModelManifest, draft: ModelManifest) -> ModelManifest:
    """The new version's manifest: ``draft``'s classes and bands, the prior's architecture.

    With as many input bands as the prior, the prior's normalisation too (see the module doc).
    """
    update: dict[str, object] = {k: getattr(prior, k) for k in ARCHITECTURE}
    if prior.channels == draft.channels:
        update["input"] = draft.input.model_copy(update={"mean": prior.input.mean, "std": prior.input.std})
    return draft.model_copy(update=update)


def adapt_prior(
    prior: ModelManifest,
    state: Mapping[str, torch.Tensor],
    target: ModelManifest,
    fresh: Mapping[str, torch.Tensor],
) -> tuple[dict[str, torch.Tensor], TransferReport]:
    """The prior's weights fitted to ``target``'s network, whose freshly initialised weights are ``fresh``.

    Raises:
        TrainerError: if the architectures differ, or a tensor other than the first convolution and the
            output layer does not fit (the message names it).
    """
    differ = [k for k in ARCHITECTURE if getattr(prior, k) != getattr(target, k)]
    if differ:
        raise TrainerError(
            "the prior is another network: "
            + ", ".join(f"{k} {getattr(prior, k)} (this version: {getattr(target, k)})" for k in differ)
        )
    result = dict(fresh)
    missing = sorted(set(fresh) - set(state))
    if missing:
        raise TrainerError(f"the prior's weights lack {_names(missing)}: it is not a geolabel model version")
    first = f"encoder.{FIRST_CONV}"
    copied = 0
    for key, tensor in fresh.items():
        if key in HEAD or key == first:
            continue
        if state[key].shape != tensor.shape:
            raise TrainerError(
                f"the prior's {key} is {tuple(state[key].shape)}, expected {tuple(tensor.shape)}"
            )
        result[key] = state[key].clone()
        copied += 1
    result[first], bands = adapt_first_conv(state[first], target.channels)
    mapped, new, dropped = _map_outputs(prior, state, target, result)
    return result, TransferReport(copied + 1, mapped, new, dropped, bands)


def _map_outputs(
    prior: ModelManifest,
    state: Mapping[str, torch.Tensor],
    target: ModelManifest,
    result: dict[str, torch.Tensor],
) -> tuple[tuple[str, ...], tuple[str, ...], tuple[str, ...]]:
    """Copy the output rows of the classes both know (by name; row 0 is background) into ``result``."""
    rows = {"background": 0} | {c.name: i + 1 for i, c in enumerate(prior.classes)}
    names = ["background", *(c.name for c in target.classes)]
    for key in HEAD:
        weights = result[key].clone()
        for row, name in enumerate(names):
            if name in rows:
                weights[row] = state[key][rows[name]]
        result[key] = weights
    mapped = tuple(n for n in names[1:] if n in rows)
    new = tuple(n for n in names[1:] if n not in rows)
    dropped = tuple(c.name for c in prior.classes if c.name not in set(names))
    return mapped, new, dropped


def adapt_first_conv(weight: torch.Tensor, bands: int) -> tuple[torch.Tensor, str]:
    """A first-convolution kernel ``(out, n, k, k)`` for ``bands`` input bands, and how it was made."""
    have = weight.shape[1]
    if have == bands:
        return weight.clone(), f"{bands} input band(s) as the prior's"
    if bands == 1:
        return weight.sum(dim=1, keepdim=True), f"{have} prior bands summed into 1"
    index = [j % have for j in range(bands)]
    adapted = weight[:, index] * (have / bands)
    return adapted.contiguous(), (
        f"{have} prior band(s) adapted to {bands}: band j takes the prior's band j mod {have}, "
        f"scaled by {have}/{bands}"
    )


def load_encoder_weights(network: torch.nn.Module, path: Path) -> str:
    """Load a torchvision / timm ResNet state dict file into ``network``'s encoder; returns what was done.

    Accepted: a plain state dict, or one under ``state_dict`` / ``model``; a ``module.``,
    ``encoder.``, ``backbone.`` or ``model.`` prefix on every key is removed. The classifier
    (``fc.*``) is left out; a first convolution for another band count is adapted
    (:func:`adapt_first_conv`). Every other key must match the encoder's (the smp encoder keeps
    every stage of the ResNet, whatever the U-Net's depth).

    Raises:
        TrainerError: if the file is missing or unreadable, or its keys or shapes do not fit the
            encoder (the message names the missing and unexpected keys).
    """
    encoder: torch.nn.Module = network.encoder  # type: ignore[assignment]  # smp models have one
    expected = encoder.state_dict()
    if not path.is_file():
        raise TrainerError(f"[model] encoder_weights: {path} does not exist (weights are never downloaded)")
    try:
        state = _unwrap(_read_state(path))
    except ModelStoreError as exc:
        raise TrainerError(f"[model] encoder_weights: {exc}") from None
    unused = {k for k in state if k.startswith(CLASSIFIER)}
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected) - unused)
    if missing or unexpected:
        raise TrainerError(
            f"[model] encoder_weights: {path} does not fit the U-Net's encoder: missing keys "
            f"{_names(missing) or 'none'}; unexpected keys {_names(unexpected) or 'none'}. geolabel reads "
            "torchvision or timm ResNet state dicts of the model's encoder (resnet18 by default)"
        )
    loaded = {k: state[k] for k in expected}
    loaded[FIRST_CONV], bands = adapt_first_conv(state[FIRST_CONV], expected[FIRST_CONV].shape[1])
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})" for k, v in loaded.items()
             if v.shape != expected[k].shape]  # fmt: skip
    if wrong:
        raise TrainerError(f"[model] encoder_weights: {path} has tensors of other shapes: {_names(wrong)}")
    encoder.load_state_dict(loaded)
    return f"encoder weights from {path} ({len(loaded)} tensors; {len(unused)} left out; {bands})"


def _read_state(path: Path) -> dict[str, torch.Tensor]:
    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # pickle, zip and torch errors alike
        raise ModelStoreError(f"cannot read {path} as torch weights ({type(exc).__name__})") from None
    if not isinstance(state, dict):
        raise ModelStoreError(f"{path} does not hold a state dict")
    return state


def _unwrap(checkpoint: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """The tensors of a checkpoint: under ``state_dict`` / ``model`` if there, common prefixes removed."""
    state: Mapping[str, object] = checkpoint
    for key in ("state_dict", "model"):
        inner = state.get(key)
        if isinstance(inner, dict):
            state = inner
    for prefix in ("module.", "encoder.", "backbone.", "model."):
        if state and all(k.startswith(prefix) for k in state):
            state = {k[len(prefix) :]: v for k, v in state.items()}
    import torch

    return {k: v for k, v in state.items() if isinstance(v, torch.Tensor)}


def _names(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN])
    return f"{shown} (+{len(keys) - SHOWN} more)" if len(keys) > SHOWN else shown
