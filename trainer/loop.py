"""One active-learning round of a project: harvest, train, validate, save, score, push, promote, record.

A round reads and writes only its project's tiles and stores (``config.for_project``).
Only one round of a project runs at a time (a file lock in the project's folder). The new
version is saved (not active), scores the project's unlabelled tiles, and its predictions go
to Label Studio; only then is it promoted: Label Studio's ``model_version`` is set and
``ACTIVE`` replaced, the last steps of a round that succeeded. A failure at any step leaves
``ACTIVE`` (so the backend and the dashboard) and Label Studio's ``model_version`` as they
were (the latter is set back if it had already been changed), the round marked failed, and the
version it saved (with its stored predictions) removed. A round records each step it reaches; one
whose process died is closed by the next process that takes the lock
(:func:`trainer.rounds.recover_interrupted`). Label Studio calls retry transient failures
(:class:`geolabel.lsclient.Retry`, about 30 s by default) before the round fails.
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import rasterio.errors

from geolabel.classes import LabelClass
from geolabel.compute import open_engine
from geolabel.config import Config
from geolabel.errors import LabelStudioUnreachableError
from geolabel.locks import exclusive_lock
from geolabel.lsclient import LabelStudioClient, Retry
from geolabel.lsmodels import LabelledTask, read_schema
from geolabel.progress import Progress, SilentProgress
from georef.registry import TileRecord, TileRegistry, TileStatus
from importers.inputs import project_input
from trainer.agreement import measure_project
from trainer.batch import ModelJob, TileWork, map_tiles
from trainer.contender import UNET, Contender, Contest, contest, winner_files
from trainer.dashboard_throughput import ThroughputTally, save_throughput
from trainer.device import resolve_device
from trainer.errors import HarvestError, LabelStudioDownError, RoundBusyError, TrainerError
from trainer.fit import Sample, TrainSettings, evaluate, seed_torch, train
from trainer.harvest import Harvest, LabelledTile, Labelling, class_pixels, harvest
from trainer.inference import LoadedModel, feeding_tiles, load_version, read_input
from trainer.legacy import adopt_legacy_stores
from trainer.metrics import IGNORE, Metrics
from trainer.metrics import not_worse as _not_worse  # a name tests replace to force a promotion
from trainer.pool import candidate_pool
from trainer.rounds import (
    ROUND_LOCK,
    LabelState,
    QueueEntry,
    RoundRecord,
    RoundStatus,
    RoundStep,
    RoundStore,
    TileState,
    discard_unpromoted,
    now,
    recover_interrupted,
)
from trainer.selection import score_tiles, select_next
from trainer.serving import keep_queue_view, serving_scores
from trainer.splits import Footprint, Split, spatial_split
from trainer.start import compatible, initial_network, prior_if_better
from trainer.transfer import Prior, resolve_prior
from trainer.versions import InputSpec, ModelManifest, ModelStore, new_version_name

logger = logging.getLogger(__name__)
__all__ = ["ROUND_RETRY", "Retry", "Start", "Watch", "run_round"]
#: How a round's Label Studio calls retry transient failures: 5 attempts over about 30 s.
ROUND_RETRY = Retry()


@dataclass(frozen=True)
class Watch:
    """Who follows a round: a progress bar (training epochs, tiles scored) and where its tile work runs."""

    progress: Progress = field(default_factory=SilentProgress)
    announce: Callable[[str], None] = logger.info


@dataclass(frozen=True)
class Start:
    """What a round starts from besides the active version, and what competes with its U-Net.

    Attributes:
        init_from: a prior (version, project or path, :func:`trainer.transfer.resolve_prior`) the
            network starts from instead of the active version; empty: ``[model] init_from`` for a
            project's first round, else the active version (warm start).
        contenders: models trained beside the U-Net on the same tiles (:mod:`trainer.contender`).
    """

    init_from: str = ""
    contenders: Sequence[Contender] = ()


def run_round(
    config: Config,
    client: LabelStudioClient,
    trigger: str = "manual",
    retry: Retry = ROUND_RETRY,
    watch: Watch | None = None,
    start: Start | None = None,
) -> RoundRecord:
    """Run one round for the configured project (``config.project.name``) and return its record.

    First closes the rounds a dead process left running (:func:`trainer.rounds.recover_interrupted`).
    Every Label Studio call of the round is retried as ``retry`` says; ``watch`` is shown its progress;
    ``start`` says what the network starts from and what competes with it.

    Raises:
        RoundBusyError: if another round holds the lock.
        LabelStudioDownError: if Label Studio stayed unreachable (a TrainerError and a
            LabelStudioUnreachableError; :class:`~trainer.errors.HarvestError` while harvesting).
        TrainerError: if the round failed otherwise (it is recorded as failed with the reason).
    """
    client = client.with_retry(retry)
    start = start or Start()
    given = resolve_prior(config, start.init_from) if start.init_from else None  # a typo records no round
    lock = config.trainer_dir / ROUND_LOCK
    with (
        exclusive_lock(lock, lambda: RoundBusyError("a training round is already running")),
        TileRegistry(config.registry_path) as registry,
        RoundStore(config.registry_path) as store,
    ):
        project_id = registry.project_id(config.project.name)
        if project_id is None:
            raise TrainerError(
                f"project {config.project.name!r} has no tiles yet; run `geolabel import` first"
            )
        adopt_legacy_stores(config)
        models = ModelStore(config.models_dir)
        recover_interrupted(store, project_id, models, config.predictions_dir, client)
        round_id = store.start(project_id, trigger)
        try:
            _round(config, client, registry, store, round_id, watch or Watch(), start, given)
        except BaseException as exc:
            _fail(config, store, project_id, round_id, exc)
            if isinstance(exc, TrainerError) or not isinstance(exc, Exception):
                raise
            if isinstance(exc, LabelStudioUnreachableError):
                raise LabelStudioDownError(str(exc)) from exc
            raise TrainerError(f"round {round_id} failed: {type(exc).__name__}: {exc}") from exc
        return store.get(round_id)


def _fail(config: Config, store: RoundStore, project_id: int, round_id: int, exc: BaseException) -> None:
    """Record the round failed with its reason, and remove the version it saved (never promoted)."""
    record = store.get(round_id)
    if isinstance(exc, Exception):
        error = f"{type(exc).__name__}: {exc}"
    else:  # Ctrl-C, or SIGTERM turned into KeyboardInterrupt
        step = record.step or "its start"
        error = f"interrupted: the process running it was stopped ({type(exc).__name__}) at {step}"
    store.finish(round_id, RoundStatus.FAILED, error=error)
    if record.model_version is None:
        return
    try:
        discard_unpromoted(store, project_id, ModelStore(config.models_dir), config.predictions_dir,
                           record.model_version)  # fmt: skip
    except Exception as cleanup:  # the round's own error matters more
        logger.error("could not remove version %s of failed round %d: %s", record.model_version,
                     record.number, cleanup)  # fmt: skip


def _round(
    config: Config,
    client: LabelStudioClient,
    registry: TileRegistry,
    store: RoundStore,
    round_id: int,
    watch: Watch,
    start: Start,
    given: Prior | None,
) -> None:
    project_id = store.get(round_id).project_id
    events_upto = max((e.id for e in registry.annotation_events(project_id)), default=0)
    classes = list(config.classes)
    tiles = {t.task_id: t for t in _project_tiles(registry, project_id) if t.task_id is not None}
    found, tally, tasks = _harvest(client, project_id, tiles, classes, config.trainer.labelling)
    save_throughput(config.registry_path, project_id, tally.counts())  # the dashboard's tiles per day
    _refresh_agreement(config, client, tasks)
    names = ["background", *(c.name for c in classes)]
    store.update(
        round_id,
        events_upto=events_upto,
        labelled_tiles=len(found.tiles),
        class_pixels=found.class_pixels(names),
        annotators=_annotators(found.tiles),
        problems=[str(p) for p in found.problems],
    )
    if not found.tiles:
        raise TrainerError("no annotated tile yet: label a few tiles in Label Studio first")
    store.set_step(round_id, RoundStep.PREPARING)
    models = ModelStore(config.models_dir)
    active = _active(models)
    manifest = _manifest(registry, found.tiles, classes, active)
    found, left_out = _feeding(registry, found, list(tiles.values()), manifest)  # they stop nothing
    if left_out:
        store.update(
            round_id, labelled_tiles=len(found.tiles), problems=[str(p) for p in found.problems] + left_out
        )
    samples = [_sample(registry, labelled, manifest) for labelled in found.tiles]
    store.update(round_id, class_pixels=class_pixels([s.target for s in samples], names))  # nodata out
    split = spatial_split(
        [_footprint(t.tile) for t in found.tiles],
        config.trainer.validation_share,
        config.trainer.block_tiles,
        config.trainer.seed,
    )
    seed_torch(config.trainer.seed)  # the same labels and seed give the same initial weights
    network, manifest, from_prior = initial_network(config, manifest, active, given)
    network = network.to(resolve_device(config.compute.device))
    store.update(round_id, origin=manifest.origin)
    initial = {k: v.detach().clone() for k, v in network.state_dict().items()} if from_prior else None
    settings = TrainSettings(
        config.trainer.epochs, config.trainer.batch_size, config.trainer.learning_rate, config.trainer.seed,
        config.trainer.crop,
    )  # fmt: skip
    store.set_step(round_id, RoundStep.TRAINING)
    watch.progress.start(f"round {store.get(round_id).number}: training", settings.epochs)
    train(network, [samples[i] for i in split.train] or samples, settings, _log_epoch(round_id, watch))
    store.set_step(round_id, RoundStep.VALIDATING)
    validation = [samples[i] for i in split.validation]
    new = evaluate(network, validation, manifest.outputs).flat(names) if validation else {}
    if initial is not None and validation:
        new, manifest = prior_if_better(network, initial, validation, manifest, new, names, len(split.train))
        store.update(round_id, origin=manifest.origin)
    old = _previous_metrics(active, manifest, validation, names)
    promote = active is None or not validation or _not_worse(new, old)
    winner = _contest(start.contenders, found.tiles, samples, split, classes, config.trainer.seed, store,
                      round_id).winner(new)  # fmt: skip
    version = manifest.model_copy(update={"metrics": new})
    store.update(round_id, step=RoundStep.SAVING, model_version=version.version)  # before it exists
    models.save(version, network.state_dict(), winner_files(winner))
    store.update(round_id, model_version=version.version, metrics=new, previous_metrics=old,
                 validation_tiles=len(validation), winner=winner.name if winner else UNET)  # fmt: skip
    if not promote:
        store.finish(round_id, RoundStatus.KEPT)
        return
    store.set_step(round_id, RoundStep.SCORING)
    loaded = LoadedModel(version, network.eval())
    labelled_ids = {t.tile.id for t in found.tiles}
    labelled = [t.tile for t in found.tiles]
    queue, uncertainty = _score_and_push(config, client, registry, store, round_id, loaded, labelled, samples,
                                         watch)  # fmt: skip
    skipped = {tiles[t].id for t in found.skipped_tasks if t in tiles} - labelled_ids
    states = (
        [TileState(t, LabelState.LABELLED) for t in sorted(labelled_ids)]
        + [TileState(t, LabelState.SKIPPED) for t in sorted(skipped)]
        + [TileState(t, LabelState.UNLABELLED, u) for t, u in uncertainty.items() if t not in skipped]
    )
    if not uncertainty:  # every tile labelled: no prediction carries the new version in Label Studio
        store.add_problem(round_id, NOTHING_PUSHED)
    _promote(client, models, store, project_id, round_id, version.version, queue, states, bool(uncertainty))


NOTHING_PUSHED = (
    "every tile of the project is labelled: no prediction to push, so Label Studio keeps its model version "
    "(the backend serves the new active version; import more rasters to label more)"
)


def _promote(
    client: LabelStudioClient,
    models: ModelStore,
    store: RoundStore,
    project_id: int,
    round_id: int,
    version: str,
    queue: list[QueueEntry],
    states: list[TileState],
    pushed: bool = True,
) -> None:
    """The last steps of a round that succeeded: Label Studio's model version, the record, ``ACTIVE``.

    ``pushed``: predictions of ``version`` reached Label Studio. Without any, Label Studio refuses it
    as the project's model version ("doesn't exist either as live model or as static predictions"),
    and there is no task left for it to rank: its model version is left as it is.

    On any failure the previous ``ACTIVE`` and Label Studio model version are put back before the
    error goes on (the round is then recorded as failed by the caller).
    """
    previous_active = models.active_name()
    previous_ls = str(client.project(project_id).get("model_version") or "")
    store.set_step(round_id, RoundStep.PROMOTING)
    try:
        if pushed:
            client.set_model_version(project_id, version)
        store.set_queue(round_id, queue)
        store.set_tile_states(round_id, states)
        models.activate(version)
        store.finish(round_id, RoundStatus.PROMOTED)
    except BaseException:
        _roll_back(client, models, project_id, previous_active, previous_ls)
        raise


def _roll_back(
    client: LabelStudioClient, models: ModelStore, project_id: int, active: str | None, ls_version: str
) -> None:
    """Put back the active version and Label Studio's model version as they were before a promotion."""
    try:
        models.restore_active(active)
    except Exception as exc:  # the original error matters more; say what could not be undone
        logger.error("could not restore the active version %s: %s", active, exc)
    try:
        client.set_model_version(project_id, ls_version)
    except Exception as exc:
        logger.error(
            "could not set Label Studio project %d's model version back to %r: %s; set it in the "
            "project's settings (Machine Learning) or run geolabel train --now again",
            project_id,
            ls_version,
            exc,
        )


def _project_tiles(
    registry: TileRegistry, project_id: int, status: TileStatus | None = None
) -> list[TileRecord]:
    """The tiles of the project's rasters only (a data folder may hold several projects)."""
    return registry.tiles(status=status, project_id=project_id)


def _harvest(
    client: LabelStudioClient,
    project_id: int,
    tiles: dict[int, TileRecord],
    classes: list[LabelClass],
    labelling: Labelling = "exhaustive",
) -> tuple[Harvest, ThroughputTally, list[LabelledTask]]:
    """Annotations from Label Studio (its client retries while it is unreachable), and the tasks read.

    Also counts each annotator's tiles per day on the way (:mod:`trainer.dashboard_throughput`).

    Raises:
        HarvestError: if Label Studio stayed unreachable.
    """
    tally = ThroughputTally(tiles)
    try:
        tasks = client.labelled_tasks(project_id)
    except LabelStudioUnreachableError as exc:
        raise HarvestError(f"no annotations harvested: {exc}") from None
    return harvest(tally.watch(tasks), tiles, classes, labelling), tally, tasks


def _refresh_agreement(config: Config, client: LabelStudioClient, tasks: Sequence[LabelledTask]) -> None:
    """Measure the agreement between annotators from the tasks just read, for the dashboard and status.

    A measure that fails (a raster gone, the registry busy) is logged and never fails the round: the
    previous measure stays, with its time.
    """
    try:
        measure_project(config, client, tasks)
    except (TrainerError, OSError, sqlite3.Error, rasterio.errors.RasterioError) as exc:
        logger.warning("agreement between annotators not measured this round: %s", exc)


def _annotators(tiles: Sequence[LabelledTile]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for tile in tiles:
        for who in tile.annotators:
            counts[who] = counts.get(who, 0) + 1
    return counts


def _active(models: ModelStore) -> LoadedModel | None:
    name = models.active_name()
    return load_version(models, name) if name else None


def _manifest(
    registry: TileRegistry,
    tiles: Sequence[LabelledTile],
    classes: list[LabelClass],
    active: LoadedModel | None,
) -> ModelManifest:
    """The new version's manifest: the active one's input when the classes are the same, else fresh.

    A fresh manifest reads the project's input (fixed at its first import); each raster feeds it
    with its own recorded bands. Its normalisation comes from labelled tiles whose raster can.

    Raises:
        TrainerError: if no labelled tile's raster can provide the project's input.
    """
    if active is not None and active.manifest.classes == classes:
        return active.manifest.model_copy(update={"version": new_version_name(), "metrics": {}, "origin": ""})
    bands = list(_project_bands(registry, tiles, active))
    placeholder = InputSpec(bands=bands, mean=[0.0] * len(bands), std=[1.0] * len(bands))
    draft = ModelManifest(version=new_version_name(), created="", classes=classes, input=placeholder)
    feeding, problems = feeding_tiles(registry, [t.tile for t in tiles], draft)
    if not feeding:
        raise TrainerError(f"no labelled tile can feed the model: {'; '.join(problems)}")
    pixels = np.concatenate(
        [
            read_input(registry.raster(t.raster_id), t, draft).pixels.reshape(len(bands), -1)
            for t in feeding[:64]
        ],
        axis=1,
    )
    spec = InputSpec(bands=bands, mean=pixels.mean(axis=1).tolist(), std=(pixels.std(axis=1) + 1e-6).tolist())
    return draft.model_copy(update={"input": spec, "created": now()})


def _project_bands(
    registry: TileRegistry, tiles: Sequence[LabelledTile], active: LoadedModel | None
) -> tuple[int, ...]:
    """The project's input bands (recorded now for a project from before inputs were recorded)."""
    raster = registry.raster(tiles[0].tile.raster_id)
    title = registry.project_title(raster.project_id) or ""
    model_bands = active.manifest.input.bands if active is not None else None
    recorded = project_input(registry, title, raster.project_id, model_bands)
    return recorded.source_bands if recorded is not None else tuple(range(1, raster.band_count + 1))


def _feeding(
    registry: TileRegistry, found: Harvest, tiles: Sequence[TileRecord], manifest: ModelManifest
) -> tuple[Harvest, list[str]]:
    """The harvest without tiles whose raster cannot provide the model's input, and why.

    One problem per such raster of the project (``tiles``: every tile with a task), labelled or not:
    scoring leaves their tiles out too.
    """
    _, problems = feeding_tiles(registry, tiles, manifest)
    kept, _ = feeding_tiles(registry, [t.tile for t in found.tiles], manifest)
    kept_ids = {t.id for t in kept}
    labelled = [t for t in found.tiles if t.tile.id in kept_ids]
    return Harvest(labelled, found.problems, found.skipped_tasks), problems


def _contest(
    contenders: Sequence[Contender],
    tiles: Sequence[LabelledTile],
    samples: Sequence[Sample],
    split: Split,
    classes: list[LabelClass],
    seed: int,
    store: RoundStore,
    round_id: int,
) -> Contest:
    """The contenders trained on the round's split (nodata ignored), their scores and failures recorded."""
    fed = [replace(t, target=s.target) for t, s in zip(tiles, samples, strict=True)]
    found = contest(contenders, [fed[i] for i in split.train] or fed, [fed[i] for i in split.validation],
                    classes, seed)  # fmt: skip
    for problem in found.problems:
        store.add_problem(round_id, problem)
    if found.scores:
        store.update(round_id, contenders=found.scores)
    return found


def _sample(registry: TileRegistry, labelled: LabelledTile, manifest: ModelManifest) -> Sample:
    """A labelled tile's model input and target; nodata pixels are IGNORE (never trained on)."""
    tile_input = read_input(registry.raster(labelled.tile.raster_id), labelled.tile, manifest)
    target = np.where(tile_input.valid, labelled.target, IGNORE).astype(np.uint8)
    return Sample(tile_input.pixels, target)


def _footprint(tile: TileRecord) -> Footprint:
    """The tile's centre and side on the ground, from its grid's corners (exact for rotated rasters)."""
    x, y = tile.grid.centre_world()
    return Footprint(tile.crs_text, x, y, max(tile.grid.side_lengths()))


def _log_epoch(round_id: int, watch: Watch) -> Callable[[int, float], None]:
    def log(epoch: int, loss: float) -> None:
        logger.info("round %d: epoch %d, loss %.4f", round_id, epoch, loss)
        watch.progress.advance(1)

    return log


def _previous_metrics(
    active: LoadedModel | None, manifest: ModelManifest, validation: list[Sample], names: list[str]
) -> dict[str, float]:
    """The active version's scores on this round's validation tiles (a fair comparison)."""
    if active is None or not validation or not compatible(active.manifest, manifest):
        return {}
    result: Metrics = evaluate(active.network, validation, manifest.outputs)
    return result.flat(names)


def _score_and_push(
    config: Config,
    client: LabelStudioClient,
    registry: TileRegistry,
    store: RoundStore,
    round_id: int,
    loaded: LoadedModel,
    labelled: Sequence[TileRecord],
    samples: list[Sample],
    watch: Watch,
) -> tuple[list[QueueEntry], dict[str, float]]:
    """Score the round's candidate pool of unlabelled tiles, pick the next batch, store and push predictions.

    The pool (:func:`_pool`) is scored on the configured engine (:mod:`geolabel.compute`): each
    chunk of tiles is predicted, stored and turned into its Label Studio prediction (regions, score)
    from the probabilities as stored, by the same function as the backend's pre-annotations
    (:func:`trainer.preannotations.prediction`), so the backend serving the stored prediction later gives
    the same regions. The batch (:func:`trainer.selection.select_next`) is picked before the push, and
    its predictions carry serving scores (:func:`trainer.serving.serving_scores`) so that Label Studio
    serves it first, in pick order; the other predictions carry their confidence. The project's
    "Next to label" Data Manager tab is kept (:func:`trainer.serving.keep_queue_view`).

    Returns the next batch (with each tile's true uncertainty and confidence) and the uncertainty of every
    tile scored.
    """
    project_id = store.get(round_id).project_id
    schema = read_schema(client.project(project_id)["label_config"])
    labelled_ids = {t.id for t in labelled}
    unlabelled = [
        t
        for t in _project_tiles(registry, project_id, TileStatus.IMPORTED)
        if t.id not in labelled_ids and t.task_id is not None
    ]
    unlabelled, _ = feeding_tiles(registry, unlabelled, loaded.manifest)  # the round reported the others
    pool = _pool(config, store, round_id, unlabelled, labelled)
    logger.info("round %d: scoring %d of %d unlabelled tiles", round_id, len(pool), len(unlabelled))
    manifest = loaded.manifest
    rasters = {r: registry.raster(r) for r in {t.raster_id for t in pool}}
    job = ModelJob(config.models_dir, manifest.version, config.predictions_dir, config.trainer.uncertainty,
                   config.compute.device, schema)  # fmt: skip
    with open_engine(config.compute, len(pool), announce=watch.announce) as engine:
        watch.progress.start(f"round {store.get(round_id).number}: scoring {len(pool)} tiles", len(pool))
        work = [TileWork(t, rasters[t.raster_id]) for t in pool]
        outcomes = list(map_tiles(engine, job, work, config.compute.chunk, watch.progress.advance))
    uncertainty = {o.tile_id: o.uncertainty for o in outcomes}
    if not pool:
        return [], uncertainty
    scored = score_tiles(
        loaded.network, [s.image for s in samples], [s.target != IGNORE for s in samples], "entropy"
    )
    labelled_features = np.stack([s.features for s in scored])
    picks = select_next(outcomes, labelled_features, config.trainer.batch, config.trainer.diversity)
    served = serving_scores([min(max(o.confidence, 0.0), 1.0) for o in outcomes], picks)  # float rounding
    predictions = [
        {"task": t.task_id, **(o.prediction or {}), "score": score}
        for t, o, score in zip(pool, outcomes, served, strict=True)
    ]
    client.import_predictions(project_id, predictions)  # the model version is set when it is promoted
    problem = keep_queue_view(client, project_id)
    if problem:
        store.add_problem(round_id, problem)
    queue = [
        QueueEntry(
            rank, pool[i].id, int(pool[i].task_id or 0), outcomes[i].uncertainty, outcomes[i].confidence
        )
        for rank, i in enumerate(picks)
    ]
    return queue, uncertainty


def _pool(
    config: Config,
    store: RoundStore,
    round_id: int,
    unlabelled: Sequence[TileRecord],
    labelled: Sequence[TileRecord],
) -> list[TileRecord]:
    """The unlabelled tiles this round scores: at most ``[trainer] pool`` (:mod:`trainer.pool`).

    Built from the previous promoted round's most uncertain tiles, the neighbours of the tiles labelled
    since it, and a stratified sample seeded by the trainer's seed and the round's number.
    """
    size = config.trainer.pool
    if size == 0 or size >= len(unlabelled):
        return list(unlabelled)
    record = store.get(round_id)
    promoted = [r for r in store.rounds(record.project_id) if r.status == RoundStatus.PROMOTED]
    states = store.tile_states(promoted[-1].id) if promoted else {}
    scored = [s for s in states.values() if s.state == LabelState.UNLABELLED and s.uncertainty is not None]
    uncertain = [s.tile_id for s in sorted(scored, key=lambda s: -(s.uncertainty or 0.0))]
    known = {t for t, s in states.items() if s.state == LabelState.LABELLED}
    new_labels = [_footprint(t) for t in labelled if t.id not in known]
    ids = candidate_pool([(t.id, _footprint(t)) for t in unlabelled], size, uncertain, new_labels,
                         config.trainer.seed + record.number)  # fmt: skip
    by_id = {t.id: t for t in unlabelled}
    return [by_id[t] for t in ids]
