"""The segmentation network: a U-Net from segmentation-models-pytorch, built without downloaded weights."""

from __future__ import annotations

import segmentation_models_pytorch as smp
import torch

from trainer.versions import ModelManifest


def build_model(manifest: ModelManifest) -> torch.nn.Module:
    """A fresh network for ``manifest`` (input bands, classes + background), random weights.

    Encoder weights are never downloaded (``encoder_weights=None``): this works offline.
    """
    architecture = getattr(smp, manifest.architecture)
    network: torch.nn.Module = architecture(
        encoder_name=manifest.encoder,
        encoder_weights=None,
        encoder_depth=manifest.encoder_depth,
        decoder_channels=manifest.decoder_channels,
        in_channels=manifest.channels,
        classes=manifest.outputs,
    )
    return network
