"""Benchmark the prediction export on 10 000 tiles, side by side with ``gdal_translate -of COG``.

What is measured
----------------
A synthetic project of ``--tiles`` tiles (a square layout, ``--tile-size`` px with ``--overlap``)
on a Lambert-93 0.2 m grid, with a stored prediction per tile (background + one class, as
:class:`trainer.predictions.PredictionStore` keeps them; smooth probability fields with
blob-shaped "buildings", so they compress like model output, not like noise). The store is
built once and cached in ``bench/out/``. Then, each in its own child process (wall time and
the peak RSS of that process, from ``wait4``):

1. **mosaic**: ``exporters.mosaic.plan_blocks`` + ``exporters.rasters.write_mosaic``: every
   tile loaded from the store, blended with its neighbours (feathered overlaps) block by block
   on 2 threads, written to the tiled work GeoTIFFs (probabilities + mask, class ids);
   (peak RSS: the child's resident memory sampled every 20 ms);
2. **cog**: ``exporters.rasters.to_cog`` on both work files (GDAL's COG driver: DEFLATE,
   predictor 2, 512-px tiles, overviews), what ``geolabel export`` runs after the mosaic;
3. **gdal_translate**: Debian's ``gdal_translate -of COG`` with the same creation options on the
   same work mosaics: the reference for the COG step alone.

Each COG is checked with ``rio cogeo validate``. Results go to ``bench/out/bench_export.json``.

Usage::

    .venv/bin/python bench/bench_export.py                 # 10 000 tiles of 256 px
    .venv/bin/python bench/bench_export.py --tiles 400     # quick run
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import psutil

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
sys.path.insert(0, str(ROOT))

from affine import Affine  # noqa: E402
from rasterio.crs import CRS  # noqa: E402

from exporters.mosaic import MosaicTile, plan_blocks  # noqa: E402
from exporters.rasters import COG_OPTIONS, Band, to_cog, write_mosaic  # noqa: E402
from geolabel.compute import InProcess  # noqa: E402
from georef.grid import Grid  # noqa: E402
from georef.tiling import plan_tiles  # noqa: E402
from trainer.predictions import PredictionStore  # noqa: E402

ORIGIN = Affine(0.2, 0.0, 650000.0, 0.0, -0.2, 6860000.0)
BANDS = [Band(0, "background", "#000000"), Band(1, "building", "#e31a1c")]


def layout(tiles: int, size: int, overlap: int) -> tuple[Grid, list[MosaicTile]]:
    """A square raster grid holding ``tiles`` tiles, and its tile plan."""
    per_side = math.isqrt(tiles)
    side = size + (per_side - 1) * (size - overlap)
    grid = Grid(side, side, ORIGIN, CRS.from_epsg(2154))
    plans = plan_tiles(side, side, size, overlap)
    return grid, [
        MosaicTile(f"t{p.tile_row}_{p.tile_col}", grid.window_grid(p.window), overlap) for p in plans
    ]


def build_store(store: PredictionStore, tiles: list[MosaicTile], size: int) -> None:
    """Smooth synthetic building probabilities per tile (seeded by tile position)."""
    rows, cols = np.mgrid[0:size, 0:size].astype(np.float32)
    for index, tile in enumerate(tiles):
        if store.has(tile.tile_id):
            continue
        rng = np.random.default_rng(index)
        field = np.zeros((size, size), np.float32)
        for _ in range(int(rng.integers(0, 8))):
            row, col, radius = rng.uniform(0, size), rng.uniform(0, size), rng.uniform(6, 30)
            field += np.exp(-(((rows - row) ** 2 + (cols - col) ** 2) / (2 * radius**2)))
        building = np.clip(field, 0.0, 0.98) + 0.01
        store.save(tile.tile_id, np.stack([1.0 - building, building]), np.ones((size, size), bool))
        if index % 1000 == 0:
            print(f"  stored {index}/{len(tiles)} predictions", flush=True)


def phase_mosaic(args: argparse.Namespace, work: Path) -> dict[str, object]:
    grid, tiles = layout(args.tiles, args.tile_size, args.overlap)
    store = PredictionStore(OUT / "export_store", f"{args.tiles}x{args.tile_size}o{args.overlap}")
    blocks = plan_blocks(grid, tiles)
    files = write_mosaic(grid, blocks, store.load, BANDS, work, InProcess(2))  # 2 threads, as geolabel export
    return {"blocks": len(blocks), "valid_pixels": files.valid_pixels, "width": grid.width}


def phase_cog(work: Path) -> dict[str, object]:
    to_cog(work / "proba.tif", work / "predictions_proba.tif", "AVERAGE")
    to_cog(work / "argmax.tif", work / "predictions_argmax.tif", "NEAREST")
    return {}


def run_child(*args: str) -> tuple[float, float, int]:
    """Run a child process; its wall seconds, peak RSS in MB (sampled every 20 ms) and exit code."""
    start = time.perf_counter()
    process = subprocess.Popen(list(args))
    watched = psutil.Process(process.pid)
    peak = 0
    while process.poll() is None:
        try:
            peak = max(peak, watched.memory_info().rss)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    return time.perf_counter() - start, peak / 2**20, process.wait()


def validate(path: Path) -> bool:
    rio = Path(sys.executable).with_name("rio")
    result = subprocess.run([str(rio), "cogeo", "validate", str(path)], capture_output=True, text=True)
    return result.returncode == 0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiles", type=int, default=10_000)
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--phase", choices=["mosaic", "cog"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.phase:
        result = phase_mosaic(args, args.work) if args.phase == "mosaic" else phase_cog(args.work)
        (args.work / f"{args.phase}.json").write_text(json.dumps(result))
        return
    grid, tiles = layout(args.tiles, args.tile_size, args.overlap)
    store = PredictionStore(OUT / "export_store", f"{args.tiles}x{args.tile_size}o{args.overlap}")
    print(
        f"{len(tiles)} tiles of {args.tile_size} px, overlap {args.overlap}: "
        f"mosaic {grid.width} x {grid.height}"
    )
    build_store(store, tiles, args.tile_size)
    work = OUT / "export_work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    me = [sys.executable, __file__, "--tiles", str(args.tiles), "--tile-size", str(args.tile_size),
          "--overlap", str(args.overlap), "--work", str(work)]  # fmt: skip
    results: dict[str, object] = {"tiles": len(tiles), "tile_size": args.tile_size, "overlap": args.overlap,
                                  "mosaic_px": [grid.width, grid.height], "cpus": os.cpu_count()}  # fmt: skip
    for phase in ("mosaic", "cog"):
        wall, rss, code = run_child(*me, "--phase", phase)
        if code:
            raise SystemExit(f"phase {phase} failed with exit code {code}")
        results[phase] = {
            "seconds": round(wall, 1),
            "peak_rss_mb": round(rss),
            **json.loads((work / f"{phase}.json").read_text()),
        }
        print(f"{phase}: {wall:.1f} s, peak RSS {rss:.0f} MB", flush=True)
    options = [item for key, value in COG_OPTIONS.items() for item in ("-co", f"{key}={value}")]
    reference = {}
    for name, resampling in (("proba", "AVERAGE"), ("argmax", "NEAREST")):
        wall, rss, code = run_child("gdal_translate", "-q", "-of", "COG", *options, "-co", "NUM_THREADS=2",
                                    "-co", f"OVERVIEW_RESAMPLING={resampling}", str(work / f"{name}.tif"),
                                    str(work / f"gdal_{name}.tif"))  # fmt: skip
        reference[name] = {"seconds": round(wall, 1), "peak_rss_mb": round(rss), "exit": code}
        print(f"gdal_translate -of COG {name}: {wall:.1f} s, peak RSS {rss:.0f} MB", flush=True)
    results["gdal_translate"] = reference
    results["valid_cog"] = {
        p.name: validate(p) for p in sorted(work.glob("*.tif")) if p.stem.startswith(("predictions", "gdal"))
    }
    results["sizes_mb"] = {p.name: round(p.stat().st_size / 2**20, 1) for p in sorted(work.glob("*.tif"))}
    print(json.dumps(results, indent=2))
    (OUT / "bench_export.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
