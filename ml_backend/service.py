"""The backend's work, independent of HTTP: health, setup, SAM clicks, pre-annotations, webhooks."""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image, UnidentifiedImageError

from geolabel.lsclient import ANNOTATION_ACTIONS
from geolabel.lsmodels import ProjectSchema, read_schema
from georef.errors import RegistryError
from georef.labelstudio import ImageSize
from georef.registry import AnnotationEvent, RasterRecord, TileRecord, TileRegistry
from ml_backend.embeddings import EmbeddingCache
from ml_backend.errors import (
    BadRequestError,
    ModelUnavailableError,
    SamUnavailableError,
    TileImageMissingError,
    TileInputError,
    UnknownTaskError,
)
from ml_backend.protocol import (
    Context,
    PredictRequest,
    SetupRequest,
    TaskIn,
    WebhookEvent,
    object_id,
    project_id,
    prompt_from_context,
)
from ml_backend.sam import Embedding, SamEngine, load_sam
from ml_backend.samhead import ActiveHead, LoadedHead
from trainer.errors import ModelInputError, ModelStoreError, TrainerError
from trainer.fit import probabilities
from trainer.inference import LoadedModel, load_version, read_input
from trainer.preannotations import mask_results, prediction
from trainer.predictions import PredictionStore, StoredPrediction, quantise
from trainer.scoring import UncertaintyMethod
from trainer.versions import ModelStore

log = logging.getLogger("geolabel.ml_backend")
DELETED = "ANNOTATIONS_DELETED"
MAX_REASONS = 5  # distinct reasons for ignored annotations given back in a webhook's answer
NO_MODEL = "no trained model yet: pre-annotations stay empty until the first training round promotes one"


@dataclass(frozen=True)
class BackendSettings:
    """What the backend reads from ``geolabel.toml`` (see :func:`ml_backend.app.settings_from_config`)."""

    data_dir: Path
    project_title: str
    cache_dir: Path
    models_dir: Path
    predictions_dir: Path
    sam_model_type: str
    sam_checkpoint: Path | None
    sam_device: str = "auto"
    memory_cache_items: int = 32
    uncertainty: UncertaintyMethod = "entropy"

    @property
    def registry_path(self) -> Path:
        """The tile registry database."""
        return self.data_dir / "registry.sqlite"


class Backend:
    """Serves one geolabel project.

    Args:
        settings: folders, project and SAM settings.
        sam: an already built SAM engine (tests and benches); by default it is loaded from
            ``settings.sam_checkpoint``, and a failure only turns SAM off (the reason is in ``health``).
    """

    def __init__(self, settings: BackendSettings, sam: SamEngine | None = None) -> None:
        self.settings = settings
        self.sam_error: str | None = None
        self.sam = sam if sam is not None else self._load_sam()
        self.cache = (
            EmbeddingCache(settings.cache_dir, self.sam.identity, settings.memory_cache_items)
            if self.sam is not None
            else None
        )
        self.models = ActiveModel(ModelStore(settings.models_dir))
        self.heads = ActiveHead(settings.models_dir, self.sam.identity if self.sam is not None else None)
        self._local = threading.local()

    def _load_sam(self) -> SamEngine | None:
        checkpoint = self.settings.sam_checkpoint
        if checkpoint is None:
            self.sam_error = (
                "no checkpoint configured: set sam.checkpoint in geolabel.toml to enable SAM clicks"
            )
            return None
        try:
            return load_sam(self.settings.sam_model_type, checkpoint, self.settings.sam_device)
        except SamUnavailableError as exc:
            self.sam_error = str(exc)
            return None

    @property
    def registry(self) -> TileRegistry:
        """This thread's registry connection (SQLite connections are not shared between threads)."""
        registry: TileRegistry | None = getattr(self._local, "registry", None)
        if registry is None:
            registry = self._local.registry = TileRegistry(self.settings.registry_path)
        return registry

    # health and setup ------------------------------------------------------------

    def health(self) -> dict[str, Any]:
        """Status of SAM, of the active model version and of the embedding cache."""
        return {
            "status": "UP",
            "model_class": "geolabel",
            "sam": self._sam_health(),
            "model": self._model_health(),
            "embedding_cache": self._cache_health(),
        }

    def _sam_health(self) -> dict[str, Any]:
        settings = self.settings
        info: dict[str, Any] = {
            "enabled": self.sam is not None,
            "model_type": self.sam.model_type if self.sam else settings.sam_model_type,
            "checkpoint": str(settings.sam_checkpoint) if settings.sam_checkpoint else None,
        }
        if self.sam is not None:
            info.update(device=str(self.sam.device), identity=self.sam.identity)
        else:
            info["reason"] = self.sam_error
        return info

    def _model_health(self) -> dict[str, Any]:
        try:
            loaded = self.models.current()
        except TrainerError as exc:
            return {"active_version": None, "reason": str(exc)}
        if loaded is None:
            return {"active_version": None, "reason": NO_MODEL}
        manifest = loaded.manifest
        return {
            "active_version": manifest.version,
            "classes": [c.name for c in manifest.classes],
            "bands": manifest.input.bands,
            "metrics": manifest.metrics,
        }

    def _cache_health(self) -> dict[str, Any] | None:
        if self.cache is None:
            return None
        stats = self.cache.stats()
        return {
            "folder": str(self.cache.folder),
            "files": stats.files,
            "bytes": stats.bytes,
            "memory_items": self.settings.memory_cache_items,
            "memory_hits": stats.memory_hits,
            "disk_hits": stats.disk_hits,
            "computed": stats.computed,
            "hit_rate": stats.hit_rate,
        }

    def setup(self, request: SetupRequest) -> dict[str, Any]:
        """Check the project and its labelling config; answer the model version predictions carry.

        Raises:
            UnknownTaskError: if the project is not the one this backend serves.
            LabelConfigError: if the labelling config lacks the tags the backend needs.
        """
        self._check_project(project_id(request.project))
        if request.schema_ is not None:
            read_schema(request.schema_)
        return {"model_version": self.model_version()}

    def model_version(self) -> str:
        """The active version's name, which its predictions carry, else ``"none"`` (never used).

        A version whose SAM head won its round carries the same name for the head's pre-annotations:
        Label Studio shows only predictions of the project's model version, one name per version
        (which model served is in the version folder's ``winner.txt`` and the round record).
        """
        try:
            loaded = self.models.current()
        except TrainerError:
            return "none"
        return loaded.manifest.version if loaded is not None else "none"

    # predict ---------------------------------------------------------------------

    def predict(self, request: PredictRequest) -> dict[str, Any]:
        """A SAM mask for a click (a context is given), else pre-annotations of the active model.

        Raises:
            BackendError: a subclass naming what is wrong (unknown task, bad prompt, SAM off...).
        """
        served = self._check_project(project_id(request.project))
        if not request.label_config:
            raise BadRequestError("label_config is missing from the request")
        schema = read_schema(request.label_config)
        tiles = [self._tile(task, served) for task in request.tasks]
        context = request.params.context
        if context is not None and context.result:
            if len(tiles) != 1:
                raise BadRequestError("an interactive request carries exactly one task")
            return {"results": [self.click(tiles[0], context, schema)]}
        return {"results": self.pre_annotations(tiles, schema)}

    def click(self, tile: TileRecord, context: Context, schema: ProjectSchema) -> dict[str, Any]:
        """SAM's mask for the prompts of ``context`` on ``tile``, as brush (and polygon) regions.

        Raises:
            SamUnavailableError: if SAM is off.
        """
        sam, cache = self.sam, self.cache
        if sam is None or cache is None:
            raise SamUnavailableError(f"SAM is off: {self.sam_error}")
        size = ImageSize(tile.grid.width, tile.grid.height)
        request = prompt_from_context(context, schema, size)
        image = self.image_path(tile)
        key = cache.key(tile.id, image)
        embedding = cache.get(key)
        valid: npt.NDArray[np.bool_] | None = None  # None: every pixel holds data
        if embedding is None:
            rgb, valid = load_rgb(image)
            embedding = cache.get_or_compute(key, lambda: sam.embed(rgb))
        elif has_transparency(image):  # a warm click decodes the PNG only to mask out nodata
            _, valid = load_rgb(image)
        segmentation = sam.segment(embedding, request.prompt)
        mask = segmentation.mask if valid is None else segmentation.mask & valid
        return {
            "result": mask_results(mask, request.label, schema),
            "score": segmentation.score,
            "model_version": f"sam-{sam.identity}",
        }

    def pre_annotations(self, tiles: list[TileRecord], schema: ProjectSchema) -> list[dict[str, Any]]:
        """The active model's prediction of each tile: editable regions, score and model version.

        A prediction the last round stored for the active version is served as stored (no network
        run); others are computed. Both are built by :func:`trainer.preannotations.prediction`, so
        they carry the regions and ``score`` the round pushes. Returns an empty list when no model has
        been trained yet: the backend never invents labels.

        Raises:
            ModelUnavailableError: if the active version or a tile's source raster cannot be read.
        """
        try:
            loaded = self.models.current()
        except TrainerError as exc:
            raise ModelUnavailableError(str(exc)) from None
        if loaded is None:
            return []
        head = self.heads.get(loaded.manifest.version)
        return [self._pre_annotation(loaded, head, tile, schema) for tile in tiles]

    def _pre_annotation(
        self, loaded: LoadedModel, head: LoadedHead | None, tile: TileRecord, schema: ProjectSchema
    ) -> dict[str, Any]:
        """The tile's prediction by the active version.

        When the version's winner is its SAM head (``head``) and the tile's embedding is cached, the
        head predicts; else the version's U-Net: the prediction a round stored, else computed now.
        Both carry the version's name. A missing embedding is not computed here: that takes
        seconds of every core per tile (a click asks for it; a request for pre-annotations may
        name 100 tasks), so the U-Net answers until a click or ``geolabel embed`` caches it.
        """
        manifest = loaded.manifest
        version = manifest.version
        embedding = self._cached_embedding(tile) if head is not None else None
        if head is not None and embedding is not None:
            return prediction(
                self._head_prediction(head, embedding, tile), head.info.classes, schema,
                self.settings.uncertainty, version,
            )  # fmt: skip
        stored = self._stored_prediction(manifest.version, tile)
        if stored is None:
            raster = self.registry.raster(tile.raster_id)
            try:
                tile_input = read_input(raster, tile, manifest)
            except ModelInputError as exc:  # a raster that cannot provide the project's input: say so
                raise TileInputError(
                    f"no pre-annotation for task {tile.task_id} (tile {tile.id}): {exc}"
                ) from None
            except TrainerError as exc:
                raise ModelUnavailableError(str(exc)) from None
            (softmax,) = probabilities(loaded.network, [tile_input.pixels])
            stored = StoredPrediction(quantise(softmax.numpy()), tile_input.valid)
        return prediction(stored, manifest.classes, schema, self.settings.uncertainty, version)

    def _cached_embedding(self, tile: TileRecord) -> Embedding | None:
        """The tile's SAM embedding if the cache holds it (never computed here), of the tile's size.

        None also when the display image is gone: the U-Net reads the source raster, not the image.
        """
        if self.cache is None:
            return None
        try:
            embedding = self.cache.get(self.cache.key(tile.id, self.image_path(tile)))
        except (TileImageMissingError, FileNotFoundError):
            return None
        if embedding is None or embedding.original_size != (tile.grid.height, tile.grid.width):
            return None
        return embedding

    def _head_prediction(self, head: LoadedHead, embedding: Embedding, tile: TileRecord) -> StoredPrediction:
        """The head's quantised probabilities of the tile, nodata (transparent display pixels) not valid."""
        image = self.image_path(tile)
        opaque = not has_transparency(image)
        valid = np.ones(embedding.original_size, dtype=bool) if opaque else load_rgb(image)[1]
        return StoredPrediction(quantise(head.probabilities(embedding)), valid)

    def _stored_prediction(self, version: str, tile: TileRecord) -> StoredPrediction | None:
        """The prediction of ``tile`` a round stored for ``version``, or None (unreadable: logged)."""
        store = PredictionStore(self.settings.predictions_dir, version)
        if not store.has(tile.id):
            return None
        try:
            stored = store.load(tile.id)
        except ModelStoreError as exc:
            log.warning("computing the prediction again: %s", exc)
            return None
        if stored.valid.shape != (tile.grid.height, tile.grid.width):
            log.warning("stored prediction of tile %s has another size; computing it again", tile.id)
            return None
        return stored

    # webhook ---------------------------------------------------------------------

    def webhook(self, event: WebhookEvent) -> dict[str, Any]:
        """Record the annotations an event reports as changed, for the trainer's round threshold.

        Only what the registry vouches for is recorded: the event must name this backend's project and
        each annotation a task that is a tile of it (a deleted annotation: one recorded before); an
        annotation reported several times in one event is recorded once, and the threshold counts
        distinct annotations. Training never runs inside a request.

        Raises:
            BadRequestError: if the event names no project.
            UnknownTaskError: if it names another project, or this backend's project is not imported yet.
        """
        if event.action not in ANNOTATION_ACTIONS:
            return {"status": "ignored", "action": event.action}
        claimed = object_id((event.project or {}).get("id"))
        if claimed is None:
            raise BadRequestError("the event names no project (project.id); Label Studio's webhooks name one")
        served = self._check_project(claimed)
        accepted: dict[int, AnnotationEvent] = {}
        reasons: set[str] = set()
        ignored = 0
        for annotation in event.reported():
            annotation_id = object_id(annotation.get("id"))
            if annotation_id is not None and annotation_id in accepted:
                continue  # the same annotation again: counted once
            found = self._vouched(event, annotation, annotation_id, served)
            if isinstance(found, str):
                ignored += 1
                reasons.add(found)
            else:
                accepted[annotation_id or 0] = found
        recorded = self.registry.record_annotation_events(accepted.values())
        answer: dict[str, Any] = {"status": "recorded", "action": event.action, "events": recorded}
        if ignored:
            answer.update(ignored=ignored, reasons=sorted(reasons)[:MAX_REASONS])
        return answer

    def _vouched(
        self, event: WebhookEvent, annotation: dict[str, Any], annotation_id: int | None, served: int
    ) -> AnnotationEvent | str:
        """The event to record for one reported annotation, or why it is not recorded."""
        if annotation_id is None:
            return "an annotation without a valid id"
        if event.action == DELETED:  # Label Studio sends only the ids of deleted annotations
            task_id = self.registry.annotation_task(served, annotation_id)
            if task_id is None:
                return f"annotation {annotation_id} was never recorded for project {served}"
        else:
            task_id = object_id(annotation.get("task")) or event.single_task_id()
            if task_id is None:
                return f"annotation {annotation_id} names no task"
            try:
                self._tile(TaskIn(id=task_id), served)
            except UnknownTaskError as exc:
                return str(exc)
        return AnnotationEvent(served, task_id, annotation_id, event.action)

    # helpers ---------------------------------------------------------------------

    def _check_project(self, requested: int | None) -> int:
        served = self.registry.project_id(self.settings.project_title)
        if served is None:
            raise UnknownTaskError(
                f"no project {self.settings.project_title!r} in the registry yet; run `geolabel import` first"
            )
        if requested is not None and requested != served:
            raise UnknownTaskError(
                f"this backend serves project {served} ({self.settings.project_title!r}), "
                f"not project {requested}"
            )
        return served

    def _tile(self, task: TaskIn, served: int) -> TileRecord:
        if task.project is not None and task.project != served:
            raise UnknownTaskError(
                f"task {task.id} belongs to project {task.project}, this backend serves {served}"
            )
        try:
            tile = self.registry.tile_by_task(task.id)
        except RegistryError:
            raise UnknownTaskError(f"task {task.id} is not a geolabel tile of project {served}") from None
        claimed = _claimed_tile(task)
        if claimed is not None and claimed != tile.id:
            raise UnknownTaskError(
                f"task {task.id} shows tile {claimed} but the registry has {tile.id} for it"
            )
        raster: RasterRecord = self.registry.raster(tile.raster_id)
        if raster.project_id != served:
            raise UnknownTaskError(f"task {task.id} is a tile of project {raster.project_id}, not {served}")
        return tile

    def image_path(self, tile: TileRecord) -> Path:
        """The tile's display image on disk.

        Raises:
            TileImageMissingError: if the tile has no image or the file is gone.
        """
        if tile.image_path is None:
            raise TileImageMissingError(f"tile {tile.id} has no display image (it was skipped as nodata)")
        path = self.settings.data_dir / tile.image_path
        if not path.is_file():
            raise TileImageMissingError(
                f"display image of tile {tile.id} is missing ({tile.image_path}); "
                "run `geolabel import` again on its raster to re-render it"
            )
        return path


class ActiveModel:
    """The active model version, loaded once and reloaded when the trainer promotes another."""

    def __init__(self, store: ModelStore) -> None:
        self.store = store
        self._loaded: LoadedModel | None = None
        self._lock = threading.Lock()

    def current(self) -> LoadedModel | None:
        """The loaded active version, or None before the first promotion.

        Raises:
            TrainerError: if the active version cannot be read.
        """
        name = self.store.active_name()
        if name is None:
            return None
        with self._lock:
            if self._loaded is None or self._loaded.manifest.version != name:
                self._loaded = load_version(self.store, name)
            return self._loaded


def load_rgb(path: Path) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.bool_]]:
    """A display tile as ``(H, W, 3)`` RGB and its valid mask (transparent = nodata)."""
    try:
        with Image.open(path) as image:
            image.load()
            rgba = np.asarray(image.convert("RGBA"))
    except (OSError, UnidentifiedImageError) as exc:
        raise TileImageMissingError(f"display image {path.name} cannot be read ({exc})") from None
    valid = rgba[..., 3] > 0
    rgb = np.where(valid[..., None], rgba[..., :3], 0).astype(np.uint8)
    return rgb, valid


def has_transparency(path: Path) -> bool:
    """True if a display tile can hold transparent pixels (read from the PNG header, no decoding)."""
    try:
        with Image.open(path) as image:
            return image.mode in ("RGBA", "LA", "PA") or "transparency" in image.info
    except (OSError, UnidentifiedImageError) as exc:
        raise TileImageMissingError(f"display image {path.name} cannot be read ({exc})") from None


def _claimed_tile(task: TaskIn) -> str | None:
    geo = task.data.get("geo")
    if isinstance(geo, dict) and isinstance(geo.get("tile_id"), str):
        return str(geo["tile_id"])
    tile_id = task.data.get("tile_id")
    return tile_id if isinstance(tile_id, str) else None
