"""What a round's network starts from: a prior, the active version, encoder weights or random weights.

The weights themselves are adapted by :mod:`trainer.transfer`; this module decides which start a
round takes (:func:`initial_network`) and, after training, whether a prior's own weights did better
on validation than what training made of them (:func:`prior_if_better`).
"""

from __future__ import annotations

import torch

from geolabel.config import Config
from trainer.fit import Sample, evaluate
from trainer.inference import LoadedModel
from trainer.metrics import not_worse
from trainer.model import build_model
from trainer.transfer import (
    ARCHITECTURE,
    Prior,
    adapt_prior,
    load_encoder_weights,
    resolve_prior,
    starting_manifest,
)
from trainer.versions import ModelManifest

#: The manifest fields two versions share when one's weights fit the other's network as they are.
COMPATIBLE = ("classes", "input", *ARCHITECTURE)


def compatible(old: ModelManifest, new: ModelManifest) -> bool:
    """True when ``old``'s weights load into ``new``'s network and mean the same (warm start)."""
    return all(getattr(old, k) == getattr(new, k) for k in COMPATIBLE)


def initial_network(
    config: Config, manifest: ModelManifest, active: LoadedModel | None, given: Prior | None
) -> tuple[torch.nn.Module, ModelManifest, bool]:
    """The network a round trains, its manifest (``origin``: what it started from), and if from a prior.

    In order: the ``given`` prior (``--init-from``), or ``[model] init_from`` when no version is
    active yet; the active version as it is (warm start); the active version adapted to changed
    classes (by name, :func:`trainer.transfer.adapt_prior`); ``[model] encoder_weights``; random weights.

    Raises:
        TrainerError: if the prior or the encoder weights cannot be used (the message says why).
    """
    prior = given
    if prior is None and active is None and config.model.init_from:
        prior = resolve_prior(config, config.model.init_from)
    if prior is None and active is not None:
        if compatible(active.manifest, manifest):
            network = build_model(manifest)
            network.load_state_dict(active.network.state_dict())
            origin = f"warm start from {active.manifest.version}"
            return network, manifest.model_copy(update={"origin": origin}), False
        if _same_network(active.manifest, manifest):  # the classes changed: adapt by name
            prior = Prior(active.manifest, active.network.state_dict(), f"version {active.manifest.version}")
    if prior is not None:
        manifest = starting_manifest(prior.manifest, manifest)
        network = build_model(manifest)
        state, report = adapt_prior(prior.manifest, prior.state, manifest, network.state_dict())
        network.load_state_dict(state)
        return network, manifest.model_copy(update={"origin": report.describe(prior.source)}), True
    network = build_model(manifest)
    weights = config.encoder_weights
    origin = load_encoder_weights(network, weights) if weights is not None else "random weights"
    return network, manifest.model_copy(update={"origin": origin}), False


def _same_network(old: ModelManifest, new: ModelManifest) -> bool:
    return all(getattr(old, k) == getattr(new, k) for k in ARCHITECTURE)


def prior_if_better(
    network: torch.nn.Module,
    initial: dict[str, torch.Tensor],
    validation: list[Sample],
    manifest: ModelManifest,
    trained: dict[str, float],
    names: list[str],
    train_tiles: int,
) -> tuple[dict[str, float], ModelManifest]:
    """Put the prior's weights back when training on the round's few tiles made it worse on validation.

    A good prior fine-tuned on a handful of tiles can forget what it knew; the round then keeps the
    prior as it started (``network`` is changed in place) and says so in the version's origin.
    Returns the metrics of the weights kept and the manifest with that origin.
    """
    trained_state = {k: v.detach().clone() for k, v in network.state_dict().items()}
    network.load_state_dict(initial)
    before = evaluate(network, validation, manifest.outputs).flat(names)
    if not_worse(trained, before):
        network.load_state_dict(trained_state)
        return trained, manifest
    note = (
        f"; kept as it started: trained on {train_tiles} tiles it scored mIoU {trained.get('miou', 0):.3f} "
        f"on validation, below its {before.get('miou', 0):.3f} before training"
    )
    return before, manifest.model_copy(update={"origin": manifest.origin + note})
