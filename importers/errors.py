"""Errors raised while reading rasters and importing them."""


class ImportFailedError(Exception):
    """Base class of every importer error; the message says what is wrong and how to fix it."""


class RasterNotFoundError(ImportFailedError, FileNotFoundError):
    """The raster path does not exist or is not a file."""


class NotARasterError(ImportFailedError, ValueError):
    """GDAL cannot read the file as a raster."""


class NotGeoreferencedError(ImportFailedError, ValueError):
    """The raster has no CRS or no geotransform (or only ground control points)."""


class UnsupportedRasterError(ImportFailedError, ValueError):
    """The raster is readable but geolabel cannot display it (complex data, bad band choice...)."""


class InputMismatchError(ImportFailedError, ValueError):
    """The raster cannot provide its project's model input (too few bands, --bands of the wrong length)."""


class ForgetRefusedError(ImportFailedError, ValueError):
    """``geolabel forget`` refused: the raster's tasks carry annotations, or the raster is ambiguous."""


class RasterChangedError(ImportFailedError, ValueError):
    """A raster at an already imported path now has different content."""


class AllNodataError(ImportFailedError, ValueError):
    """Every pixel of the raster is nodata: there is nothing to label."""


class RasterReadError(ImportFailedError, OSError):
    """GDAL failed to read pixels of a raster that opened (a damaged or truncated file)."""


class TileWriteError(ImportFailedError, OSError):
    """A display tile could not be written (disk full, permissions...)."""


class LabelFileError(ImportFailedError, ValueError):
    """A vector label file cannot be read or used (no such layer, no CRS, no way to tell its classes)."""
