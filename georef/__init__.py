"""Pure geometry core of geolabel.

Grid and window values, tiling plans, conversions between Label Studio percent
coordinates, tile pixels and world coordinates, brush masks, and the tile
registry. Nothing here talks HTTP, Label Studio servers or torch.

Axis conventions used everywhere in this package:

- ``row, col`` name integer pixel indices; ``width, height`` name sizes.
- Arrays of points have shape ``(N, 2)`` and hold ``x, y`` pairs: for pixels
  ``x`` is the column axis and ``y`` the row axis (continuous coordinates,
  ``(0, 0)`` is the top-left corner of the top-left pixel); for the world
  ``x, y`` are the CRS's easting/northing (or longitude/latitude).
- Label Studio percent coordinates are ``0..100`` of the displayed image's
  width (x) and height (y), origin top-left.
"""

from georef.errors import GeorefError, InvalidGeometryError, RegistryError
from georef.grid import Grid, PixelWindow
from georef.tiling import TilePlan, plan_tiles

__all__ = [
    "GeorefError",
    "Grid",
    "InvalidGeometryError",
    "PixelWindow",
    "RegistryError",
    "TilePlan",
    "plan_tiles",
]
