"""Errors of geolabel's infrastructure (configuration, Label Studio access, the local stack)."""


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


class LabelConfigError(GeolabelError, ValueError):
    """A project's labelling config lacks the tags geolabel needs (it was edited by hand)."""
