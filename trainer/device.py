"""Where a model runs: the CPU, or a CUDA GPU when one is present; mixed precision on the GPU only.

One setting, ``[compute] device`` (``auto``, ``cpu``, ``cuda`` or ``cuda:N``), for training and
inference. On a GPU the forward passes run under ``torch.autocast`` in bfloat16 (no loss scaling
needed, and the softmax is taken in float32), so results agree with the CPU's within rounding of the
quantised 0-255 probabilities; on the CPU everything stays float32, as before.
"""

from __future__ import annotations

import contextlib

import torch

from trainer.errors import TrainerError


def resolve_device(setting: str) -> torch.device:
    """The device for ``setting``: ``auto`` is CUDA when available, else the CPU.

    Raises:
        TrainerError: if a CUDA device is asked for and none is available.
    """
    if setting == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(setting)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise TrainerError(
            f"[compute] device = {setting!r} but this machine has no usable CUDA GPU (torch "
            f'{torch.__version__}); set device = "auto" or "cpu"'
        )
    return device


def model_device(network: torch.nn.Module) -> torch.device:
    """The device holding ``network``'s weights (the CPU for a network without any)."""
    parameter = next(network.parameters(), None)
    return parameter.device if parameter is not None else torch.device("cpu")


def autocast(device: torch.device) -> contextlib.AbstractContextManager[object]:
    """Mixed precision (bfloat16) on a GPU; nothing on the CPU."""
    if device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()
