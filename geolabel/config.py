"""The project configuration file, ``geolabel.toml``.

Relative paths in the file are relative to the file's own folder.
"""

from __future__ import annotations

import hashlib
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)

from geolabel.classes import LabelClass
from geolabel.credentials import BasicAuth, ml_backend_auth
from geolabel.errors import ConfigError

CONFIG_NAME = "geolabel.toml"
TOKEN_ENV = "GEOLABEL_LABEL_STUDIO_TOKEN"  # noqa: S105 (a variable name, not a secret)
ML_PASSWORD_ENV = "GEOLABEL_ML_BACKEND_PASSWORD"  # noqa: S105 (a variable name, not a secret)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ProjectSection(_Section):
    """``[project]``."""

    name: str = Field(default="geolabel", min_length=3, max_length=50)


class TilingSection(_Section):
    """``[tiling]``."""

    size: int = Field(default=512, ge=64, le=4096)
    overlap: int = Field(default=64, ge=0)

    @model_validator(mode="after")
    def _overlap_below_size(self) -> TilingSection:
        if self.overlap >= self.size:
            raise ValueError(f"overlap ({self.overlap}) must be smaller than size ({self.size})")
        return self


class DisplaySection(_Section):
    """``[display]``."""

    bands: list[Annotated[int, Field(ge=1)]] = Field(default_factory=list)
    stretch: Literal["auto", "none", "percentile"] = "auto"
    percentiles: tuple[float, float] = (2.0, 98.0)

    @field_validator("bands")
    @classmethod
    def _one_or_three(cls, bands: list[int]) -> list[int]:
        if len(bands) not in (0, 1, 3):
            raise ValueError("give no band (automatic), 1 band (grey) or 3 bands (RGB)")
        return bands

    @field_validator("percentiles")
    @classmethod
    def _ordered(cls, pair: tuple[float, float]) -> tuple[float, float]:
        if not 0.0 <= pair[0] < pair[1] <= 100.0:
            raise ValueError("percentiles must be [low, high] with 0 <= low < high <= 100")
        return pair


class LabelStudioSection(_Section):
    """``[label_studio]``."""

    url: str = Field(default="http://127.0.0.1:8080", pattern=r"^https?://[^/\s]+")
    token: SecretStr = SecretStr("")
    username: str = Field(default="admin@geolabel.local", pattern=r"^[^@\s]+@[^@\s]+$")
    document_root: str = ""
    public_url: str = Field(default="", pattern=r"^(https?://[^/\s]+\S*|/)?$")

    @property
    def browser_url(self) -> str:
        """Label Studio as people's browsers reach it: ``public_url``, else ``url``."""
        return self.public_url or self.url


class MLBackendSection(_Section):
    """``[ml_backend]``."""

    url: str = Field(default="http://127.0.0.1:9090", pattern=r"^https?://[^/\s]+")
    username: str = Field(default="geolabel", min_length=1, pattern=r"^[^:\s]+$")
    password: SecretStr = SecretStr("")
    workers: int = Field(default=1, ge=1, le=32)
    threads: int = Field(default=4, ge=1, le=64)


class SamSection(_Section):
    """``[sam]``."""

    model_type: Literal["vit_b", "vit_l", "vit_h"] = "vit_b"
    checkpoint: str = ""
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")
    cache_dir: str = ""
    memory_cache: int = Field(default=32, ge=1, le=4096)
    precompute: int = Field(default=16, ge=0, le=10000)
    precompute_interval: float = Field(default=30.0, gt=0)
    round_embeddings: int = Field(default=16, ge=0, le=10000)


class TrainerSection(_Section):
    """``[trainer]``."""

    schedule: bool = True
    threshold: int = Field(default=20, ge=1)
    check_interval: float = Field(default=300.0, gt=0)
    epochs: int = Field(default=10, ge=1, le=1000)
    batch_size: int = Field(default=8, ge=1, le=256)
    learning_rate: float = Field(default=2e-3, gt=0, lt=1)
    crop: int = Field(default=256, ge=32, le=4096, multiple_of=32)
    validation_share: float = Field(default=0.2, gt=0, lt=1)
    block_tiles: int = Field(default=4, ge=1, le=1000)
    uncertainty: Literal["entropy", "margin"] = "entropy"
    diversity: float = Field(default=1.0, ge=0, le=10)
    batch: int = Field(default=16, ge=1, le=10000)
    seed: int = 0
    labelling: Literal["exhaustive", "sparse"] = "exhaustive"
    pool: int = Field(default=2000, ge=0)


class ModelSection(_Section):
    """``[model]``: what a project's first model starts from, instead of random weights."""

    init_from: str = ""
    encoder_weights: str = ""


class ComputeSection(_Section):
    """``[compute]``: where tile-parallel work runs (see :mod:`geolabel.compute`)."""

    scheduler: str = Field(default="local", pattern=r"^(local|none|(tcp|tls)://[^/\s]+)$")
    workers: int = Field(default=0, ge=0, le=512)
    threads_per_worker: int = Field(default=1, ge=1, le=64)
    memory_limit: str = Field(default="auto", pattern=r"^(auto|[0-9]+(\.[0-9]+)? ?([kMGT]i?B|B)?)$")
    dashboard_address: str = Field(default="127.0.0.1:8787", pattern=r"^([^\s:]*:[0-9]{1,5})?$")
    in_process_below: int = Field(default=200, ge=0)
    chunk: int = Field(default=16, ge=1, le=1024)
    device: str = Field(default="auto", pattern=r"^(auto|cpu|cuda(:\d+)?)$")


class PathsSection(_Section):
    """``[paths]``."""

    data_dir: str = "geolabel-data"


class ImportSection(_Section):
    """``[import]``."""

    workers: int = Field(default=2, ge=1, le=64)


class ExportSection(_Section):
    """``[export]``: how ``predictions.gpkg`` shapes its polygons (ground units of the export's CRS)."""

    min_area: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    simplify: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    regularize: list[str] = []


class Config(_Section):
    """The whole ``geolabel.toml``."""

    project: ProjectSection = ProjectSection()
    classes: list[LabelClass] = Field(min_length=1)
    tiling: TilingSection = TilingSection()
    display: DisplaySection = DisplaySection()
    label_studio: LabelStudioSection = LabelStudioSection()
    ml_backend: MLBackendSection = MLBackendSection()
    sam: SamSection = SamSection()
    trainer: TrainerSection = TrainerSection()
    model: ModelSection = ModelSection()
    compute: ComputeSection = ComputeSection()
    paths: PathsSection = PathsSection()
    import_: ImportSection = Field(default=ImportSection(), alias="import")
    export: ExportSection = ExportSection()
    base_dir: Path = Field(default=Path("."), exclude=True)

    @field_validator("classes")
    @classmethod
    def _unique(cls, classes: list[LabelClass]) -> list[LabelClass]:
        for attr in ("id", "name"):
            values = [getattr(c, attr) for c in classes]
            duplicates = sorted({str(v) for v in values if values.count(v) > 1})
            if duplicates:
                raise ValueError(f"class {attr}s must be unique; repeated: {', '.join(duplicates)}")
        return classes

    @property
    def data_dir(self) -> Path:
        """Folder holding the registry, display tiles and the local Label Studio data."""
        return (self.base_dir / self.paths.data_dir).resolve()

    @property
    def registry_path(self) -> Path:
        """The tile registry database."""
        return self.data_dir / "registry.sqlite"

    @property
    def document_root(self) -> Path:
        """Label Studio's ``LOCAL_FILES_DOCUMENT_ROOT``: display tile URLs are relative to it."""
        root = self.label_studio.document_root
        return (self.base_dir / root).resolve() if root else self.data_dir

    def for_project(self, name: str | None) -> Config:
        """This config for project ``name`` (None or empty: unchanged); every per-project path follows.

        Raises:
            ConfigError: if ``name`` is not a valid project name.
        """
        if not name or name == self.project.name:
            return self
        try:
            section = ProjectSection.model_validate({**self.project.model_dump(), "name": name})
        except ValidationError as exc:
            raise ConfigError(f"--project {name!r}: {_describe(exc, 'project name')}") from None
        return self.model_copy(update={"project": section})

    def with_scheduler(self, scheduler: str | None) -> Config:
        """This config with ``compute.scheduler`` replaced (a ``--scheduler`` option; None: unchanged).

        Raises:
            ConfigError: if ``scheduler`` is not ``local``, ``none`` or a ``tcp://`` / ``tls://`` address.
        """
        if not scheduler:
            return self
        try:
            section = ComputeSection.model_validate({**self.compute.model_dump(), "scheduler": scheduler})
        except ValidationError as exc:
            raise ConfigError(f"--scheduler {scheduler!r}: {_describe(exc, 'scheduler')}") from None
        return self.model_copy(update={"compute": section})

    @property
    def project_dir(self) -> Path:
        """Everything the project owns: ``<data_dir>/projects/<slug of project.name>``."""
        return self.data_dir / "projects" / project_slug(self.project.name)

    @property
    def models_dir(self) -> Path:
        """The project's model versions, written by the trainer and served by the ML backend."""
        return self.project_dir / "models"

    @property
    def predictions_dir(self) -> Path:
        """The project's per-tile probabilities of each model version, kept for exports."""
        return self.project_dir / "predictions"

    @property
    def trainer_dir(self) -> Path:
        """The project's round lock, scheduler lock and scheduler job store."""
        return self.project_dir / "trainer"

    @property
    def embedding_cache_dir(self) -> Path:
        """SAM embedding cache (``sam.cache_dir``, default ``<data_dir>/embeddings``)."""
        folder = self.sam.cache_dir
        return (self.base_dir / folder).resolve() if folder else self.data_dir / "embeddings"

    @property
    def sam_checkpoint(self) -> Path | None:
        """The SAM checkpoint file, or None when ``sam.checkpoint`` is empty (SAM off)."""
        return (self.base_dir / self.sam.checkpoint).resolve() if self.sam.checkpoint else None

    @property
    def encoder_weights(self) -> Path | None:
        """The pretrained encoder weights file (``model.encoder_weights``), or None when empty."""
        weights = self.model.encoder_weights
        return (self.base_dir / weights).resolve() if weights else None

    def ml_backend_auth(self) -> BasicAuth:
        """The ML backend's basic-auth login.

        The password comes from the file, else ``$GEOLABEL_ML_BACKEND_PASSWORD``, else it is generated
        once and kept in ``<data_dir>/ml-backend/credentials.json`` (mode 0600).
        """
        password = self.ml_backend.password.get_secret_value() or os.environ.get(ML_PASSWORD_ENV, "")
        return ml_backend_auth(self.data_dir / "ml-backend", self.ml_backend.username, password)

    def token(self) -> str:
        """The API token from the file, else ``$GEOLABEL_LABEL_STUDIO_TOKEN``; empty if neither is set."""
        return self.label_studio.token.get_secret_value() or os.environ.get(TOKEN_ENV, "")


def project_slug(name: str) -> str:
    """A folder name for project ``name``: lower-case letters, digits and dashes.

    A name that is not already such a slug gets a short hash of the exact name appended, so that two
    names differing only in case or punctuation never share a folder.
    """
    slug = re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-")[:40] or "project"
    if slug == name:
        return slug
    return f"{slug}-{hashlib.sha256(name.encode('utf-8')).hexdigest()[:8]}"


def load_config(path: str | Path) -> Config:
    """Read and validate ``geolabel.toml``.

    Raises:
        ConfigError: if the file is missing, is not TOML, or a key is invalid.
    """
    file = Path(path)
    if not file.is_file():
        raise ConfigError(f"{file}: no such config file; create one with: geolabel init")
    try:
        data = tomllib.loads(file.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{file}: not valid TOML ({exc})") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{file}: not UTF-8 text; save it as UTF-8") from None
    except OSError as exc:
        raise ConfigError(f"{file}: cannot read it ({exc.strerror or exc})") from None
    return parse_config(data, base_dir=file.resolve().parent, source=str(file))


def parse_config(data: dict[str, object], base_dir: Path, source: str = CONFIG_NAME) -> Config:
    """Validate a config mapping.

    Raises:
        ConfigError: naming the first invalid key and what is allowed.
    """
    try:
        return Config.model_validate({**data, "base_dir": base_dir})
    except ValidationError as exc:
        raise ConfigError(_describe(exc, source)) from None


def _describe(exc: ValidationError, source: str) -> str:
    lines = []
    for error in exc.errors():
        key = ".".join(str(part) for part in error["loc"] if part != "base_dir") or "(top level)"
        message = str(error["msg"]).removeprefix("Value error, ")
        if error["type"] == "extra_forbidden":
            message = "unknown key (check its spelling; see README 'Configuration')"
        elif error["type"] == "missing":
            message = "required key is missing"
        lines.append(f"{source}: {key}: {message}")
    return "\n".join(lines)


DEFAULT_CONFIG = """\
# geolabel project configuration. Relative paths are relative to this file's folder.
# Every key is described in the README, section "Configuration".

[project]
# Title of the Label Studio project the tiles are imported into.
name = "geolabel"

# The class catalogue: id (value in class masks, 1-255), name (shown in Label Studio), colour, and an
# optional description (default "") shown in the annotators' instructions and as the label's hover hint.
# "background" (pixels nobody drew) and "unsure" (pixels left out of training) are reserved names.
[[classes]]
id = 1
name = "building"
color = "#e31a1c"
description = "roofs of buildings, sheds and greenhouses included; not their shadows"

[[classes]]
id = 2
name = "road"
color = "#636363"
description = "paved and unpaved roads, tracks and car parks"

[[classes]]
id = 3
name = "vegetation"
color = "#33a02c"
description = "trees, hedges, crops and grass"

[[classes]]
id = 4
name = "water"
color = "#1f78b4"
description = "rivers, lakes, ponds and swimming pools"

[[classes]]
id = 5
name = "bare_soil"
color = "#b15928"
description = "bare earth, sand, gravel and ploughed fields"

[tiling]
# Display tile size in pixels and overlap between neighbouring tiles.
# Edge tiles are shifted inside the raster (never padded).
size = 512
overlap = 64

[display]
# Bands to display (1-based): [] = automatic (RGB colour interpretation, else bands 1-3, else 1),
# or 1 band (grey) or 3 bands, e.g. [4, 1, 2] for a near-infrared false-colour view.
bands = []
# "auto": 8-bit data as is, other types stretched by percentiles;
# "none": 8-bit data as is; "percentile": linear stretch between the percentiles below,
# computed once per raster so neighbouring tiles look alike.
stretch = "auto"
percentiles = [2.0, 98.0]

[label_studio]
url = "http://127.0.0.1:8080"
# API token. Empty: $GEOLABEL_LABEL_STUDIO_TOKEN, else the local server's (geolabel serve).
token = ""
# Admin login of the local server started by `geolabel serve` / `geolabel demo`.
username = "admin@geolabel.local"
# Label Studio's LOCAL_FILES_DOCUMENT_ROOT as seen from here; empty = paths.data_dir.
document_root = ""
# Label Studio as annotators' browsers reach it (the dashboard's links to tasks), when it differs from
# url (a deployment behind a proxy: https://labels.example.org; "/" = the dashboard's own origin, when
# one proxy serves both); empty = url.
public_url = ""

[ml_backend]
# Where Label Studio reaches the ML backend (SAM clicks, pre-annotations); `geolabel serve` listens here.
url = "http://127.0.0.1:9090"
# HTTP basic auth of the backend. Empty password: $GEOLABEL_ML_BACKEND_PASSWORD, else one generated
# on first use and kept in <data_dir>/ml-backend/credentials.json.
username = "geolabel"
password = ""
# gunicorn worker processes (each loads SAM: about 0.4 GB for vit_b) and threads per worker.
workers = 1
threads = 4

[sam]
# Segment Anything for click-to-mask. The checkpoint is not downloaded for you: get
# sam_vit_b_01ec64.pth (or vit_l / vit_h) from the segment-anything releases. Empty = SAM off.
model_type = "vit_b"
checkpoint = ""
# "auto" (CUDA when available, else CPU), "cpu" or "cuda:0".
device = "auto"
# Embedding cache folder, shared by all backend workers; empty = <data_dir>/embeddings.
cache_dir = ""
# Embeddings kept in memory per worker (about 2 MB each).
memory_cache = 32
# Tiles next in the annotation queue whose embeddings are computed in the background (0 = off),
# and seconds between two looks at the queue.
precompute = 16
precompute_interval = 30.0
# SAM embeddings a round may compute for labelled tiles not cached yet, to train the SAM-feature
# head beside the U-Net (about 20 s each for vit_b on a 2-core CPU; they stay cached for clicks).
round_embeddings = 16

[trainer]
# A new active-learning round starts when this many annotations were created, updated or deleted
# since the last one; the scheduler looks every check_interval seconds. `geolabel serve` starts the
# scheduler when schedule is true (else run `geolabel train --schedule` or `geolabel train --now`).
schedule = true
threshold = 20
check_interval = 300.0
# Training: epochs per round (warm start from the active version), tiles per batch, AdamW
# learning rate, and the random crop side in pixels (multiple of 32) tiles are trained on.
epochs = 10
batch_size = 8
learning_rate = 0.002
crop = 256
# Validation: this share of the labelled tiles, taken as whole spatial blocks of block_tiles x
# block_tiles tiles so that neighbours of training tiles do not leak into validation.
validation_share = 0.2
block_tiles = 4
# Ranking of unlabelled tiles: "entropy" or "margin", and the diversity weight of the next
# batch (0 = plain uncertainty; 1 = uncertainty x distance to the labelled and picked tiles).
uncertainty = "entropy"
diversity = 1.0
# Tiles in the next batch frozen in the round's record and served first by Label Studio.
batch = 16
# Seed of everything random in a round: initial weights, split, batch order, augmentation.
seed = 0
# What a submitted annotation says about the pixels nobody drew. "exhaustive": every class
# present was drawn, so undrawn pixels are background (train the model where there is nothing);
# "sparse": scribble-style labelling, undrawn pixels are unknown and left out of training.
# In both, pixels drawn with the "unsure" label and nodata pixels are never trained on.
labelling = "exhaustive"
# Candidate pool of a round: the unlabelled tiles it scores (and pushes predictions for), so a
# round's cost follows the labels, not the territory: the previous round's most uncertain tiles,
# the neighbours of newly labelled tiles, and a spatially stratified sample of the rest.
# 0 = score every unlabelled tile. `geolabel predict` predicts everything, as its own job.
pool = 2000

[model]
# What a project's first round starts from instead of random weights (weights are never
# downloaded: name files on disk). init_from: a model version of this project, another
# project's name (its active version) or the path of a version folder; classes are matched by
# name, new classes get new outputs. `geolabel train --now --init-from` does it for any round.
init_from = ""
# A torchvision or timm ResNet state dict (.pth) for the U-Net's encoder, e.g. ImageNet weights
# of resnet18, used when a model starts without a prior.
encoder_weights = ""

[compute]
# Where tile-parallel work runs (round scoring, geolabel predict, the export's mosaic):
# "local" = a Dask LocalCluster on this machine; "tcp://host:8786" (or "tls://...") = an existing
# Dask scheduler whose workers see the same data folder and rasters at the same paths;
# "none" = in this process. Every such command also takes --scheduler.
scheduler = "local"
# The LocalCluster: worker processes (0 = one per CPU core), threads per worker (torch threads),
# memory limit per worker ("auto" = the machine's memory shared out, or e.g. "4GiB"), and the address of
# its dashboard ("" = none; the link is printed).
workers = 0
threads_per_worker = 1
memory_limit = "auto"
dashboard_address = "127.0.0.1:8787"
# Jobs with fewer tiles than this run in this process (a cluster takes seconds to start).
in_process_below = 200
# Tiles per Dask task (one model batch).
chunk = 16
# Where models train and predict: "auto" (CUDA when available, else CPU), "cpu" or "cuda:0".
device = "auto"

[paths]
# Registry, display tiles and the local Label Studio's data live here.
data_dir = "geolabel-data"

[import]
# Threads reading and encoding display tiles.
workers = 2

[export]
# predictions.gpkg (the class-id raster vectorised): polygons under min_area (ground units^2 of the
# export's CRS, e.g. m^2) are left out; simplify is a tolerance in ground units (0 = exact pixel
# edges; neighbours keep their shared edges); classes named in regularize (e.g. ["building"]) get
# right angles. For 20 cm imagery in metres, e.g. min_area = 1.0, simplify = 0.3.
min_area = 0.0
simplify = 0.0
regularize = []
"""
