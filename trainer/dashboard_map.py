"""The dashboard's map: every raster and tile of the project, reprojected to longitude/latitude.

Footprints are the exact corners of each grid (:meth:`georef.grid.Grid.corners_world`)
projected with PROJ (pyproj, ``always_xy``), so rasters in any CRS and any rotation
land on one web map. Imagery comes as web-mercator tiles rendered by
:mod:`importers.maptiles` from the source rasters; this module only says which
raster, where and at which zoom levels, and never reads pixels itself.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from pyproj import Transformer
from pyproj.exceptions import ProjError

from georef.grid import crs_to_text
from georef.registry import RasterRecord
from importers.errors import ImportFailedError
from importers.maptiles import MapSource, zoom_range
from trainer.rounds import LabelState

#: Fill and outline colours of the tile states; unlabelled tiles are coloured by uncertainty instead.
STATE_COLOURS = {
    LabelState.LABELLED: "#1b9e77",
    LabelState.ANNOTATED: "#66c2a5",
    LabelState.SKIPPED: "#9e9e9e",
    LabelState.NO_DATA: "#bdbdbd",
    LabelState.UNLABELLED: "#ffffff",
}
#: Uncertainty ramp (low to high), the stops of matplotlib's ``magma_r`` used for the legend too.
UNCERTAINTY_STOPS = ("#fcfdbf", "#fe9f6d", "#de4968", "#8c2981", "#3b0f70", "#000004")
TILE_URL = "dashboard/tiles/{raster}/{{z}}/{{x}}/{{y}}.png"


@dataclass(frozen=True)
class TileLinks:
    """Where a tile's Label Studio task opens: ``<url>/projects/<project>/data?task=<task>``."""

    label_studio_url: str
    project_id: int | None

    def task_url(self, task_id: int | None) -> str | None:
        """The task's page in Label Studio's data manager, or None for a tile without a task."""
        if task_id is None or self.project_id is None:
            return None
        return f"{self.label_studio_url.rstrip('/')}/projects/{self.project_id}/data?task={task_id}"


@dataclass(frozen=True)
class MapTile:
    """A tile on the map: outline in its raster's CRS, state, uncertainty, next batch, its task."""

    tile_id: str
    raster_id: int
    task_id: int | None
    crs: str
    corners: npt.NDArray[np.float64]  # (4, 2) world coordinates, clockwise from top-left
    state: LabelState
    uncertainty: float | None
    next_batch: bool


class ReprojectionError(ValueError):
    """A raster's CRS cannot be projected to longitude/latitude (the map cannot place it)."""


def to_lonlat(crs_text: str, points: npt.ArrayLike) -> npt.NDArray[np.float64]:
    """``(N, 2)`` world ``(x, y)`` points of ``crs_text`` as ``(longitude, latitude)`` in EPSG:4326.

    Raises:
        ReprojectionError: if PROJ cannot transform them (the message names the CRS).
    """
    xy = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    try:
        lon, lat = _to_wgs84(crs_text).transform(xy[:, 0], xy[:, 1], errcheck=True)
    except ProjError as exc:
        raise ReprojectionError(f"cannot place {_short(crs_text)} on the map: {exc}") from None
    result = np.column_stack((lon, lat)).astype(np.float64)
    if not np.isfinite(result).all():
        raise ReprojectionError(f"cannot place {_short(crs_text)} on the map: PROJ gave no coordinates")
    return result


@functools.lru_cache(maxsize=64)
def _to_wgs84(crs_text: str) -> Transformer:
    try:
        return Transformer.from_crs(crs_text, "EPSG:4326", always_xy=True)
    except ProjError as exc:
        raise ReprojectionError(f"cannot place {_short(crs_text)} on the map: {exc}") from None


def _short(crs_text: str) -> str:
    return crs_text if crs_text.startswith("EPSG:") else "the raster's CRS (WKT)"


def map_source(raster: RasterRecord) -> MapSource:
    """How the map renders ``raster``: its file, display bands and stretch, as the import chose them."""
    return MapSource(raster.path, raster.display_bands, raster.stretch)


def raster_json(raster: RasterRecord, tile_count: int) -> dict[str, Any]:
    """One raster for the map: footprint, zoom levels, tile URL template, or why it cannot be shown.

    A raster that cannot be placed or read is still listed, with its ``problem``, so it never
    vanishes from the map without a note.
    """
    crs = crs_to_text(raster.grid.crs)
    entry: dict[str, Any] = {
        "id": raster.id,
        "name": raster.name,
        "path": raster.path,
        "crs": crs if crs.startswith("EPSG:") else raster.grid.crs.to_string(),
        "tiles": tile_count,
        "footprint": None,
        "imagery": None,
        "problem": None,
    }
    try:
        entry["footprint"] = to_lonlat(crs, raster.grid.corners_world()).tolist()
    except ReprojectionError as exc:
        entry["problem"] = str(exc)
        return entry
    try:
        zooms = zoom_range(raster.path)
    except ImportFailedError as exc:
        entry["problem"] = f"imagery unavailable: {exc}"
        return entry
    entry["imagery"] = {"url": TILE_URL.format(raster=raster.id), "minzoom": zooms.minzoom,
                        "maxzoom": zooms.maxzoom}  # fmt: skip
    return entry


def tiles_json(tiles: Sequence[MapTile], links: TileLinks) -> list[dict[str, Any]]:
    """The tiles for the map: lon/lat footprint, state, colour, uncertainty, next batch, task link.

    Tiles whose CRS cannot be projected are left out here; their raster carries the problem.
    """
    by_crs: dict[str, list[MapTile]] = {}
    for tile in tiles:
        by_crs.setdefault(tile.crs, []).append(tile)
    entries: list[dict[str, Any]] = []
    for crs, group in by_crs.items():
        try:
            corners = to_lonlat(crs, np.concatenate([t.corners for t in group])).reshape(len(group), 4, 2)
        except ReprojectionError:
            continue
        entries.extend(
            _tile_entry(tile, footprint, links) for tile, footprint in zip(group, corners, strict=True)
        )
    return entries


def _tile_entry(tile: MapTile, footprint: npt.NDArray[np.float64], links: TileLinks) -> dict[str, Any]:
    colour = uncertainty_colour(tile.uncertainty) if tile.uncertainty is not None else None
    return {
        "id": tile.tile_id,
        "raster": tile.raster_id,
        "task": tile.task_id,
        "task_url": links.task_url(tile.task_id),
        "state": tile.state,
        "uncertainty": tile.uncertainty,
        "next_batch": tile.next_batch,
        "colour": colour or STATE_COLOURS.get(tile.state, "#ffffff"),
        "footprint": footprint.tolist(),
    }


def uncertainty_colour(value: float) -> str:
    """The ramp colour of an uncertainty in [0, 1] (clipped), linear between :data:`UNCERTAINTY_STOPS`."""
    position = min(max(float(value), 0.0), 1.0) * (len(UNCERTAINTY_STOPS) - 1)
    low = int(np.floor(position))
    high = min(low + 1, len(UNCERTAINTY_STOPS) - 1)
    share = position - low
    a, b = _rgb(UNCERTAINTY_STOPS[low]), _rgb(UNCERTAINTY_STOPS[high])
    mixed = (round(x + (y - x) * share) for x, y in zip(a, b, strict=True))
    return "#" + "".join(f"{c:02x}" for c in mixed)


def _rgb(colour: str) -> tuple[int, int, int]:
    return int(colour[1:3], 16), int(colour[3:5], 16), int(colour[5:7], 16)
