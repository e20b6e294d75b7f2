"""Model and prediction stores from before projects were separated: adopted by their one project.

Until stores were kept per project, a data folder had one ``<data_dir>/models`` and one
``<data_dir>/predictions`` shared by every project. A data folder with exactly one project gives
them to that project (renamed into ``<data_dir>/projects/<slug>/``); with several projects nobody
can tell whose they are, so they are left where they are with a warning saying how to move them.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from geolabel.config import Config
from georef.registry import TileRegistry
from trainer.versions import ModelStore

logger = logging.getLogger(__name__)
LEGACY_FOLDERS = ("models", "predictions")


def adopt_legacy_stores(config: Config) -> list[str]:
    """Move the data folder's shared ``models``/``predictions`` into the project when it is the only one.

    Safe to call from several processes at once (a rename either happens once or finds nothing).
    Returns what it did or why it did not, in words (also logged); empty when there was nothing to do.
    """
    legacy = [config.data_dir / name for name in LEGACY_FOLDERS if (config.data_dir / name).is_dir()]
    if not legacy or not config.registry_path.is_file():
        return []
    with TileRegistry(config.registry_path) as registry:
        projects = {r.project_id for r in registry.rasters()}
        own = registry.project_id(config.project.name)
    if own is None or projects != {own}:
        note = (
            f"{', '.join(str(p) for p in legacy)} predate per-project stores and this data folder holds "
            f"{len(projects)} projects, so they are left alone; move each into "
            f"{config.data_dir / 'projects'}/<project>/ of the project it belongs to"
        )
        logger.warning(note)
        return [note]
    return [note for folder in legacy if (note := _adopt(folder, config.project_dir / folder.name))]


def _adopt(folder: Path, target: Path) -> str:
    if target.exists():
        note = f"{folder} predates per-project stores but {target} exists already; left alone"
        logger.warning(note)
        return note
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(folder, target)
    except FileNotFoundError:  # another process adopted it first
        return ""
    note = f"moved {folder} to {target} (stores are per project now)"
    logger.info(note)
    return note


def active_model_bands(config: Config, title: str) -> list[int] | None:
    """The input bands of project ``title``'s active model version, None without one.

    A project from before model inputs were recorded at import takes its input from the model it
    already trained (see :mod:`importers.inputs`).
    """
    store = ModelStore(config.for_project(title).models_dir)
    name = store.active_name()
    return list(store.manifest(name).input.bands) if name is not None else None
