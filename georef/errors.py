"""Errors raised by the geometry core."""


class GeorefError(ValueError):
    """Base class of every error raised by :mod:`georef`."""


class InvalidGeometryError(GeorefError):
    """A grid, window or shape is not valid (non-positive size, singular transform...)."""


class RegistryError(GeorefError):
    """The tile registry refused an operation (unknown tile, conflicting rows...)."""
