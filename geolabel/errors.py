"""Errors of the command line layer: configuration and Label Studio access."""


class GeolabelError(Exception):
    """Base class of errors raised by the :mod:`geolabel` package."""


class ConfigError(GeolabelError, ValueError):
    """``geolabel.toml`` is missing or invalid; the message names the key and what is allowed."""


class LabelStudioError(GeolabelError, ConnectionError):
    """Label Studio refused or failed a request; the message never contains the token."""


class LabelStudioUnreachableError(LabelStudioError):
    """No Label Studio answers at the configured URL."""


class LabelStudioAuthError(LabelStudioError, PermissionError):
    """Label Studio rejected the API token."""


class StackError(GeolabelError, RuntimeError):
    """The local Label Studio server could not be started."""
