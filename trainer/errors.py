"""Errors of the trainer package."""

from geolabel.errors import LabelStudioUnreachableError


class TrainerError(Exception):
    """Base class of trainer errors; the message says what is wrong and what to do."""


class ModelStoreError(TrainerError, OSError):
    """A model version is missing, incomplete or unreadable."""


class ModelInputError(TrainerError, ValueError):
    """A tile cannot be turned into model input (missing raster, too few bands)."""


class RoundBusyError(TrainerError):
    """Another round of the project is running."""


class LabelStudioDownError(TrainerError, LabelStudioUnreachableError):
    """Label Studio stayed unreachable during a round, even after retries (a Label Studio error too)."""


class HarvestError(LabelStudioDownError):
    """Label Studio could not be read for the harvest, even after retries."""


class SchedulerBusyError(TrainerError):
    """Another scheduler already watches this data folder."""


class ProbabilityImportError(TrainerError, ValueError):
    """A probability raster cannot become the project's predictions (bands, classes, CRS, extent, values)."""
