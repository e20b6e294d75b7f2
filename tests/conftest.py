"""Shared fixtures: real GeoTIFFs written with rasterio, and one real Label Studio per test run."""

from __future__ import annotations

import itertools
import os
import shutil
import socket
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import pytest
import rasterio
from affine import Affine
from hypothesis import settings
from rasterio.crs import CRS
from rasterio.enums import ColorInterp

from geolabel.classes import LabelClass
from geolabel.config import Config, parse_config
from geolabel.credentials import load_or_create_credentials
from geolabel.lsclient import LabelStudioClient
from geolabel.stack import LocalLabelStudio
from georef.registry import TileRecord, TileRegistry
from importers.pipeline import ImportOptions, ImportReport, import_raster

# Tests never depend on timing: no per-example deadline.
settings.register_profile("geolabel", deadline=None, max_examples=100)
settings.load_profile("geolabel")

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
LAMBERT93_20CM = Affine(0.2, 0.0, 650000.0, 0.0, -0.2, 6860000.0)
CLASSES = [
    LabelClass(id=1, name="building", color="#e31a1c"),
    LabelClass(id=2, name="water", color="#1f78b4"),
]


def missing_judge(reason: str) -> NoReturn:
    """Skip a test whose outside judge (chromium, gdal-bin, data, PostgreSQL) is missing; under CI=true, fail.

    CI must never turn green because a judge silently went away.
    """
    if os.environ.get("CI", "").lower() == "true":
        pytest.fail(f"CI=true and {reason}", pytrace=False)
    pytest.skip(reason)


def chromium_path() -> str:
    """Debian's chromium for the page tests (missing: skip, or fail under CI)."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        missing_judge("Debian chromium is not installed (make browser, or apt-get install chromium)")
    return found


def require_gdal_tools() -> None:
    """Debian's gdal-bin command-line tools, the exports' outside judges (missing: skip, or fail under CI)."""
    if shutil.which("ogrinfo") is None or shutil.which("gdalinfo") is None:
        missing_judge("Debian's gdal-bin is not installed (make judges, or apt-get install gdal-bin)")


@pytest.fixture
def shared_data() -> Path:
    """The real sample rasters beside the project (skip when absent; fail under CI)."""
    if not SHARED_DATA.is_dir():
        missing_judge(f"real sample data not found at {SHARED_DATA}")
    return SHARED_DATA


GeoTiffFactory = Callable[..., Path]


@pytest.fixture
def make_geotiff(tmp_path: Path) -> GeoTiffFactory:
    """Build a real GeoTIFF: ``make_geotiff(name, data=..., crs=..., transform=..., nodata=...)``."""
    counter = iter(range(1_000_000))

    def factory(
        name: str | None = None,
        *,
        data: np.ndarray | None = None,
        width: int = 300,
        height: int = 200,
        count: int = 3,
        dtype: str = "uint8",
        crs: str | CRS | None = "EPSG:2154",
        transform: Affine | None = LAMBERT93_20CM,
        nodata: float | None = None,
        colorinterp: Sequence[ColorInterp] | None = None,
        mask: np.ndarray | None = None,
        folder: Path | None = None,
        **profile: Any,
    ) -> Path:
        if data is None:
            data = synthetic(count, height, width, dtype, seed=next(counter))
        count, height, width = data.shape
        path = (folder or tmp_path) / (name or f"raster_{next(counter)}.tif")
        path.parent.mkdir(parents=True, exist_ok=True)
        meta: dict[str, Any] = {
            "driver": "GTiff",
            "width": width,
            "height": height,
            "count": count,
            "dtype": data.dtype.name,
            "nodata": nodata,
            **profile,
        }
        if crs is not None:
            meta["crs"] = crs
        if transform is not None:
            meta["transform"] = transform
        with rasterio.open(path, "w", **meta) as dst:
            dst.write(data)
            if colorinterp is not None:
                dst.colorinterp = list(colorinterp)
            if mask is not None:
                dst.write_mask(mask.astype(np.uint8) * 255)
        return path

    return factory


def synthetic(count: int, height: int, width: int, dtype: str, seed: int = 0) -> np.ndarray:
    """Smooth, seeded, non-constant imagery so every pixel position is distinguishable."""
    rng = np.random.default_rng(seed)
    rows, cols = np.mgrid[0:height, 0:width]
    bands = []
    for band in range(count):
        base = (np.sin(cols / (17 + 5 * band)) + np.cos(rows / (23 + 3 * band))) * 0.25 + 0.5
        bands.append(base + rng.normal(0, 0.02, size=base.shape))
    stack = np.clip(np.stack(bands), 0, 1)
    if np.dtype(dtype).kind == "f":
        return (stack * 1000).astype(dtype)
    info = np.iinfo(dtype)
    top = min(info.max, 4000) if dtype != "uint8" else 255
    return np.clip(stack * top, max(info.min, 1), top).astype(dtype)


# --- Label Studio -------------------------------------------------------------


def free_port() -> int:
    """A free TCP port on loopback."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class LabelStudioServer:
    """The test run's Label Studio: URL, token and the document root tiles must live under."""

    url: str
    token: str
    document_root: Path
    state_dir: Path

    def client(self) -> LabelStudioClient:
        return LabelStudioClient(self.url, self.token)


@pytest.fixture(scope="session")
def label_studio(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LabelStudioServer]:
    """A real Label Studio (SQLite) on a free loopback port, started once per test run."""
    root = tmp_path_factory.mktemp("label-studio")
    document_root = root / "data"
    state_dir = document_root / "label-studio"
    creds = load_or_create_credentials(state_dir, "admin@geolabel.test")
    url = f"http://127.0.0.1:{free_port()}"
    server = LocalLabelStudio(url, state_dir, document_root, creds)
    server.start()
    try:
        yield LabelStudioServer(url, creds.token, document_root, state_dir)
    finally:
        server.stop()


@pytest.fixture
def ls_data_dir(label_studio: LabelStudioServer, request: pytest.FixtureRequest) -> Path:
    """A fresh geolabel data folder inside the server's document root, one per test."""
    path = label_studio.document_root / "projects" / request.node.name.replace("[", "_").replace("]", "")
    path.mkdir(parents=True)
    return path


_titles = itertools.count()


@pytest.fixture
def options(label_studio: LabelStudioServer, ls_data_dir: Path) -> ImportOptions:
    """Import settings for a fresh project whose data folder is inside the server's document root."""
    return ImportOptions(
        project=f"test project {next(_titles)}",
        classes=CLASSES,
        data_dir=ls_data_dir,
        document_root=label_studio.document_root,
        tile_size=256,
        overlap=32,
        workers=1,
    )


@pytest.fixture
def registry(ls_data_dir: Path) -> TileRegistry:
    """The test's tile registry."""
    return TileRegistry(ls_data_dir / "registry.sqlite")


@pytest.fixture
def client(label_studio: LabelStudioServer) -> LabelStudioClient:
    """A client of the test run's Label Studio."""
    return label_studio.client()


@dataclass(frozen=True)
class ImportedScene:
    """A raster imported as a Label Studio project: its config, import report and tiles (by task id)."""

    config: Config
    report: ImportReport
    tiles: list[TileRecord]


def import_scene(
    label_studio: LabelStudioServer,
    raster: Path,
    image: np.ndarray,
    title: str,
    overlap: int,
    crs: str = "EPSG:2154",
    transform: Affine = LAMBERT93_20CM,
    nodata: float | None = None,
    **sections: dict[str, object],
) -> ImportedScene:
    """Write ``image`` as a GeoTIFF at ``raster`` (Lambert-93 20 cm and no nodata value unless told),
    import it as project ``title`` (256 px tiles), and build its config (``sections`` add to the project,
    classes, Label Studio and paths)."""
    count, height, width = image.shape
    profile = {"driver": "GTiff", "width": width, "height": height, "count": count, "nodata": nodata}
    with rasterio.open(raster, "w", dtype=image.dtype.name, crs=crs, transform=transform, **profile) as dst:
        dst.write(image)
    return import_existing(label_studio, raster, title, overlap, **sections)


def import_existing(
    label_studio: LabelStudioServer, raster: Path, title: str, overlap: int, **sections: dict[str, object]
) -> ImportedScene:
    """Import the raster file ``raster`` as project ``title`` (256 px tiles) and build its config."""
    data_dir = label_studio.document_root / "projects" / title.replace(" ", "_")
    options = ImportOptions(
        title, CLASSES, data_dir, label_studio.document_root, tile_size=256, overlap=overlap, workers=1
    )
    with TileRegistry(data_dir / "registry.sqlite") as registry:
        report = import_raster(raster, options, registry, label_studio.client())
        tiles = sorted(registry.tiles(), key=lambda t: t.task_id or 0)
    config = parse_config(
        {
            "project": {"name": title},
            "classes": [{"id": c.id, "name": c.name, "color": c.color} for c in CLASSES],
            "label_studio": {"url": label_studio.url},
            "paths": {"data_dir": str(data_dir)},
            **sections,
        },
        base_dir=data_dir,
    )
    return ImportedScene(config, report, tiles)


def config_toml(config: Config, folder: Path, extra: str = "") -> Path:
    """``config``'s project, classes, Label Studio URL and data folder as ``folder/geolabel.toml``,
    followed by ``extra`` TOML sections."""
    classes = "".join(
        f'[[classes]]\nid = {c.id}\nname = "{c.name}"\ncolor = "{c.color}"\n\n' for c in config.classes
    )
    path = folder / "geolabel.toml"
    path.write_text(
        f'[project]\nname = "{config.project.name}"\n\n{classes}'
        f'[label_studio]\nurl = "{config.label_studio.url}"\n\n{extra}'
        f'[paths]\ndata_dir = "{config.data_dir}"\n'
    )
    return path


# --- the deployment's topology (PostgreSQL, SAM) -----------------------------------


def require_postgres() -> None:
    """PostgreSQL at 127.0.0.1:5432 (user postgres, trust auth) for throw-away databases (missing: skip,
    or fail under CI)."""
    from geolabel.topology import postgres_problem

    problem = postgres_problem()
    if problem is not None:
        missing_judge(f"{problem}; start it (pg_ctlcluster 15 main start) to run the topology tests")


@pytest.fixture(scope="session")
def random_sam_vit_b(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A SAM vit_b checkpoint file with random weights (seeded): the real architecture, as a user's file."""
    import torch
    from segment_anything import sam_model_registry

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("sam_random") / "sam_vit_b_random.pth"
    torch.save(sam_model_registry["vit_b"](checkpoint=None).state_dict(), path)
    return path


def keypoint(x: float, y: float, positive: bool = True, label: str = "building") -> dict[str, object]:
    """A SAM click at percent ``(x, y)`` of a 256-px tile, as Label Studio's smart tool sends it."""
    return {
        "type": "keypointlabels",
        "from_name": "sam_point",
        "to_name": "image",
        "original_width": 256,
        "original_height": 256,
        "image_rotation": 0,
        "is_positive": positive,
        "value": {"x": x, "y": y, "width": 0.5, "keypointlabels": [label]},
    }
