"""A project's rasters and tiles as the tile registry records them: what whole-project jobs read first."""

from __future__ import annotations

from dataclasses import dataclass

from geolabel.config import Config
from georef.registry import RasterRecord, TileRecord, TileRegistry


@dataclass(frozen=True)
class ProjectTiles:
    """The configured project's Label Studio id, its rasters by id and its tiles (no other project's)."""

    project_id: int
    rasters: dict[int, RasterRecord]
    tiles: list[TileRecord]

    def by_task(self) -> dict[int, TileRecord]:
        """The tiles that have a Label Studio task, by task id."""
        return {t.task_id: t for t in self.tiles if t.task_id is not None}


def load_project_tiles(config: Config, error: type[Exception]) -> ProjectTiles:
    """The configured project's rasters and tiles from the registry.

    Raises:
        error: (the caller's error type, so that its exit code applies) if nothing was imported yet, or
            nothing for this project.
    """
    if not config.registry_path.is_file():
        raise error(
            f"nothing imported yet ({config.registry_path} does not exist); run geolabel import first"
        )
    with TileRegistry(config.registry_path) as registry:
        project_id = registry.project_id(config.project.name)
        if project_id is None:
            raise error(f"project {config.project.name!r} has no tiles yet; run geolabel import")
        rasters = {r.id: r for r in registry.rasters(project_id)}
        tiles = registry.tiles(project_id=project_id)
    return ProjectTiles(project_id, rasters, tiles)
