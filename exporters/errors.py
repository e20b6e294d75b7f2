"""Errors of the exporters package."""


class ExportError(Exception):
    """Base class of export errors; the message says what is wrong and what to do."""


class OutputExistsError(ExportError, FileExistsError):
    """The output folder exists and ``overwrite`` was not asked for."""


class ExportInputError(ExportError, ValueError):
    """The export cannot be made from what the project holds or what was asked (CRS, layers)."""
