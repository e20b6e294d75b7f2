"""Errors of the trainer package."""


class TrainerError(Exception):
    """Base class of trainer errors; the message says what is wrong and what to do."""


class ModelStoreError(TrainerError, OSError):
    """A model version is missing, incomplete or unreadable."""


class ModelInputError(TrainerError, ValueError):
    """A tile cannot be turned into model input (missing raster, too few bands)."""
