"""What the shell gives a round besides its configuration: the models that compete with its U-Net."""

from __future__ import annotations

from geolabel.config import Config
from trainer.contender import Contender


def contenders(config: Config) -> list[Contender]:
    """The contenders of the project's rounds: the SAM-feature head when a SAM checkpoint is configured.

    A module-level function, so that the round scheduler's job store can keep it by name
    (:func:`trainer.scheduler.round_if_due`). SAM loads only when ``[sam] checkpoint`` is set.
    """
    if config.sam_checkpoint is None:
        return []
    from ml_backend.samhead import contender_from_config

    head = contender_from_config(config, config.sam.round_embeddings)
    return [] if head is None else [head]
