"""A project's model input: how many bands its model reads, from which raster bands, at what resolution.

A project fixes its input when it is created (its first import): the number of
input bands, the bands of that first raster that feed them, and the ground size
of a pixel (a range in metres, from the pixel's column and row vectors). Every
later raster records which of its own bands feed those inputs; a raster that
cannot provide them is refused before anything is written.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from rasterio.errors import CRSError

from georef.grid import Grid

#: Mean radius of the WGS 84 ellipsoid's equal-area sphere, for degrees -> metres.
EARTH_RADIUS_M = 6_371_007.2
#: A raster whose pixel is this many times larger or smaller than the project's gets a warning.
RESOLUTION_TOLERANCE = 2.0


@dataclass(frozen=True, slots=True)
class ProjectInput:
    """What a project's model reads.

    Attributes:
        project: the project's title.
        source_bands: 1-based bands of the raster that fixed the input, in input order.
        source: where the input came from, in words (``"first import of a.tif"``...).
        resolution: ground size of a pixel, ``(smallest, largest)`` in metres, or None when unknown.
    """

    project: str
    source_bands: tuple[int, ...]
    source: str
    resolution: tuple[float, float] | None

    @property
    def band_count(self) -> int:
        """Number of input bands the model reads."""
        return len(self.source_bands)


def ground_resolution(grid: Grid) -> tuple[float, float]:
    """Ground size of one pixel of ``grid``: ``(smallest, largest)`` of its column and row vectors, in metres.

    Projected CRSs use their linear unit; geographic ones convert degrees at the grid's centre latitude
    (on a sphere: close enough to compare resolutions, which is all this is for).
    """
    t = grid.transform
    column, row = (t.a, t.d), (t.b, t.e)
    if grid.crs.is_geographic:
        _, latitude = grid.transform @ (grid.width / 2, grid.height / 2)
        scale = math.pi / 180 * EARTH_RADIUS_M
        shrink = math.cos(math.radians(max(-89.9, min(89.9, latitude))))
        sizes = [math.hypot(x * shrink * scale, y * scale) for x, y in (column, row)]
    else:
        sizes = [math.hypot(*vector) * _metres_per_unit(grid) for vector in (column, row)]
    return min(sizes), max(sizes)


def _metres_per_unit(grid: Grid) -> float:
    try:
        return float(grid.crs.linear_units_factor[1])
    except CRSError:
        return 1.0


def resolution_mismatch(project: ProjectInput, grid: Grid) -> str | None:
    """Why ``grid``'s pixels are more than 2x larger or smaller than the project's, or None when they fit."""
    if project.resolution is None:
        return None
    low, high = project.resolution
    small, large = ground_resolution(grid)
    if large <= high * RESOLUTION_TOLERANCE and small >= low / RESOLUTION_TOLERANCE:
        return None
    return (
        f"its pixels measure {_metres(small, large)} on the ground, project {project.project!r} was "
        f"created with {_metres(low, high)} pixels (more than {RESOLUTION_TOLERANCE:g}x apart); the model "
        "will see objects at another scale. Resample the raster (gdalwarp -tr) or use a project of its own"
    )


def _metres(low: float, high: float) -> str:
    if math.isclose(low, high, rel_tol=1e-6):
        return f"{low:.3g} m"
    return f"{low:.3g}-{high:.3g} m"
