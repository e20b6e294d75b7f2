"""Errors of the ML backend, each with the HTTP status it is answered with.

The message is sent to the client as JSON: it says what was wrong and what to
do, and never contains a traceback, a token or a password.
"""

from __future__ import annotations


class BackendError(Exception):
    """Base class of every error the backend answers with (``status``: the HTTP status)."""

    status = 500


class BadRequestError(BackendError, ValueError):
    """The request body is malformed: not JSON, missing fields, prompts outside the image."""

    status = 400


class UnknownTaskError(BackendError, LookupError):
    """A task or tile the registry does not know, or a task of another project."""

    status = 404


class TileImageMissingError(BackendError, FileNotFoundError):
    """The tile's display image is not on disk (moved or deleted data folder)."""

    status = 410


class SamUnavailableError(BackendError, RuntimeError):
    """SAM is off: no checkpoint configured, file missing, or it does not match the model type."""

    status = 503


class ModelUnavailableError(BackendError, RuntimeError):
    """The active model version cannot be loaded."""

    status = 503


class PrecomputeBusyError(RuntimeError):
    """Another process is already precomputing into this embedding cache."""


class TileInputError(BackendError, ValueError):
    """The tile's raster cannot provide the project's model input (it has too few bands)."""

    status = 422
