"""``geolabel predict``: a model version over a whole project or raster, stored per tile for exports.

The full prediction of a territory is its own job, not part of a round (a round scores its candidate
pool only, :mod:`trainer.pool`). It is resumable: each tile's probabilities are stored atomically as
they are computed (:class:`~trainer.predictions.PredictionStore`), and a rerun predicts only the tiles
still missing. The tiles are fanned out over the configured engine (:mod:`geolabel.compute`).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from geolabel.compute import Engine, open_engine
from geolabel.config import Config
from geolabel.progress import Progress, SilentProgress
from georef.registry import RasterRecord, TileRecord, TileRegistry, TileStatus
from trainer.errors import TrainerError
from trainer.inference import feeding_tiles
from trainer.predictions import PredictionStore
from trainer.versions import ModelStore

#: Tiles a model predicts: those with an image (a tile with no valid pixel has no task and no prediction).
PREDICTABLE = (TileStatus.RENDERED, TileStatus.IMPORTED)


@dataclass
class PredictReport:
    """What a prediction job did.

    Attributes:
        version: the model version that predicted.
        tiles: tiles asked for (with an image).
        computed: tiles predicted by this run.
        already: tiles whose prediction was stored by an earlier run (not recomputed).
        problems: one per raster whose tiles cannot feed the model (left out).
        where: where the work ran (this process, a LocalCluster, a cluster's address).
    """

    version: str
    tiles: int = 0
    computed: int = 0
    already: int = 0
    problems: list[str] = field(default_factory=list)
    where: str = ""


def predict_project(
    config: Config,
    raster: Path | None = None,
    version: str | None = None,
    progress: Progress | None = None,
    announce: Callable[[str], None] | None = None,
) -> PredictReport:
    """Predict every tile of the configured project (or of one of its rasters) that is not stored yet.

    Raises:
        TrainerError: if the project has no tiles, the raster is not one of its rasters, or there is no
            model version (or ``version`` does not exist).
    """
    models = ModelStore(config.models_dir)
    name = version or models.active_name()
    if name is None:
        raise TrainerError("no model version yet: run geolabel train --now after labelling a few tiles")
    if name not in models.versions():
        raise TrainerError(f"no model version {name!r} in project {config.project.name!r}")
    with TileRegistry(config.registry_path) as registry:
        tiles = predictable_tiles(config, registry, raster)
        return predict_missing(config, registry, name, tiles, progress, announce)


def predict_missing(
    config: Config,
    registry: TileRegistry,
    version: str,
    tiles: Sequence[TileRecord],
    progress: Progress | None = None,
    announce: Callable[[str], None] | None = None,
    engine: Engine | None = None,
) -> PredictReport:
    """Predict and store the tiles of ``tiles`` that ``version`` has not predicted yet (resumable).

    Tiles whose raster cannot feed the model are left out, one problem per raster. The work runs on
    ``engine``, else on one opened for the job (:func:`geolabel.compute.open_engine`).
    """
    bar = progress or SilentProgress()
    manifest = ModelStore(config.models_dir).manifest(version)
    kept, problems = feeding_tiles(registry, tiles, manifest)
    store = PredictionStore(config.predictions_dir, version)
    missing = [t for t in kept if not store.has(t.id)]
    report = PredictReport(version, len(tiles), already=len(kept) - len(missing), problems=problems)
    if not missing:
        return report
    from trainer.batch import ModelJob, TileWork, map_tiles  # torch loads only when a model must run

    rasters: dict[int, RasterRecord] = {r: registry.raster(r) for r in {t.raster_id for t in missing}}
    work = [TileWork(t, rasters[t.raster_id]) for t in missing]
    job = ModelJob(config.models_dir, version, config.predictions_dir, config.trainer.uncertainty,
                   config.compute.device)  # fmt: skip
    with contextlib.ExitStack() as stack:
        if engine is None:
            engine = stack.enter_context(open_engine(config.compute, len(work), announce=announce))
        report.where = engine.description
        bar.start(f"predicting {len(work)} tiles with {version}", len(work))
        for _ in map_tiles(engine, job, work, config.compute.chunk, bar.advance):
            report.computed += 1
    return report


def predictable_tiles(config: Config, registry: TileRegistry, raster: Path | None = None) -> list[TileRecord]:
    """The configured project's tiles with an image, or those of ``raster`` (one of the project's).

    Raises:
        TrainerError: if the project has no tiles yet, or ``raster`` is not one of its rasters.
    """
    project_id = registry.project_id(config.project.name)
    if project_id is None:
        raise TrainerError(f"project {config.project.name!r} has no tiles yet; run geolabel import")
    rasters = {r.id for r in registry.rasters(project_id)}
    if raster is not None:
        record = registry.raster_by_path(str(raster.resolve()))
        if record is None or record.id not in rasters:
            raise TrainerError(
                f"{raster} is not a raster of project {config.project.name!r}; see geolabel tiles for its "
                "rasters, or give --project"
            )
        rasters = {record.id}
    return [t for t in registry.tiles() if t.raster_id in rasters and t.status in PREDICTABLE]
