"""Benchmark ``predictions.gpkg`` (exporters.vectors) on the 10 000-tile export bench, beside GDAL.

What is measured
----------------
The synthetic project of ``bench/bench_export.py`` (same layout, same cached prediction store in
``bench/out/``; built there when missing). Each step runs in its own child process (wall time and
peak RSS sampled every 20 ms, :func:`bench_export.run_child`):

1. **mosaic** and **cog**: ``bench_export.py``'s own phases (the raster export that
   ``geolabel export`` runs before and after the vectorisation);
2. **vectors**: ``exporters.vectors.write_predictions_gpkg`` on the work GeoTIFFs, 2 threads
   (``InProcess(2)``, as ``geolabel export``), exact outlines (no min area, no simplification);
3. **vectors_shaped**: the same with ``--min-area`` / ``--simplify`` and ``building`` regularised;
4. **gdal_polygonize**: Debian's ``gdal_polygonize.py`` (4-connectivity, its default) on the same
   class-id COG ``predictions_argmax.tif`` to a GeoPackage: the reference. It has no block seams
   (GDAL's polygoniser streams the whole raster), writes background polygons too, and computes no
   attribute but the class id.

The exact run is checked against GDAL's: the same number of building polygons and the same total
building area, so merging across the 2048-px block seams neither splits nor joins a polygon.
Results go to ``bench/results/vectors.json`` (10 000 tiles) or ``bench/out/bench_vectors_<n>.json``.

Usage::

    nice .venv/bin/python bench/bench_vectors.py                # 10 000 tiles of 256 px
    .venv/bin/python bench/bench_vectors.py --tiles 400         # quick run
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from pathlib import Path

import pyogrio

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

import bench_export  # noqa: E402
from bench_export import BANDS, OUT, build_store, layout, run_child  # noqa: E402

from exporters.vectors import LAYER, VectorOptions, write_predictions_gpkg  # noqa: E402
from geolabel.compute import InProcess  # noqa: E402
from trainer.predictions import PredictionStore  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "vectors.json"


def phase_vectors(work: Path, options: VectorOptions, name: str) -> dict[str, object]:
    report = write_predictions_gpkg(work / "argmax.tif", work / "proba.tif", BANDS, work / f"{name}.gpkg",
                                    options, InProcess(2))  # fmt: skip
    return {"features": report.features, "per_class": report.per_class, "notes": report.notes}


def summary(path: Path, layer: str, class_field: str) -> dict[str, float]:
    """Building polygons in a layer: count and total area (class 1)."""
    frame = pyogrio.read_dataframe(path, layer=layer, columns=[class_field], where=f"{class_field} = 1")
    return {"building_polygons": len(frame), "building_area": round(float(frame.geometry.area.sum()), 2)}


def polygonize_command() -> list[str]:
    found = shutil.which("gdal_polygonize.py")
    if found:
        return [found]
    return ["/usr/bin/python3", "-m", "osgeo_utils.gdal_polygonize"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tiles", type=int, default=10_000)
    parser.add_argument("--tile-size", type=int, default=256)
    parser.add_argument("--overlap", type=int, default=32)
    parser.add_argument("--min-area", type=float, default=1.0, help="m2, for the shaped run")
    parser.add_argument("--simplify", type=float, default=0.3, help="m, for the shaped run")
    parser.add_argument("--phase", choices=["vectors", "vectors_shaped"], help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    shaped = VectorOptions(args.min_area, args.simplify, frozenset({"building"}))
    if args.phase:
        options = VectorOptions() if args.phase == "vectors" else shaped
        result = phase_vectors(args.work, options, args.phase)
        (args.work / f"{args.phase}.json").write_text(json.dumps(result))
        return
    grid, tiles = layout(args.tiles, args.tile_size, args.overlap)
    store = PredictionStore(OUT / "export_store", f"{args.tiles}x{args.tile_size}o{args.overlap}")
    print(
        f"{len(tiles)} tiles of {args.tile_size} px, overlap {args.overlap}: {grid.width} x {grid.height} px"
    )
    build_store(store, tiles, args.tile_size)
    work = OUT / "vectors_work"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    size = ["--tiles", str(args.tiles), "--tile-size", str(args.tile_size), "--overlap", str(args.overlap)]
    results: dict[str, object] = {"tiles": len(tiles), "tile_size": args.tile_size, "overlap": args.overlap,
                                  "mosaic_px": [grid.width, grid.height], "cpus": os.cpu_count(),
                                  "shaped_options": {"min_area": args.min_area, "simplify": args.simplify,
                                                     "regularize": ["building"]}}  # fmt: skip
    me = [sys.executable, __file__, *size, "--work", str(work)]
    export = [sys.executable, bench_export.__file__, *size, "--work", str(work)]
    shaping = ["--min-area", str(args.min_area), "--simplify", str(args.simplify)]
    polygonize = [*polygonize_command(), "-q", str(work / "predictions_argmax.tif"), "-f", "GPKG",
                  str(work / "gdal_polygonize.gpkg"), "polygons", "DN"]  # fmt: skip
    steps = [("mosaic", [*export, "--phase", "mosaic"]), ("cog", [*export, "--phase", "cog"]),
             ("vectors", [*me, "--phase", "vectors"]),
             ("vectors_shaped", [*me, *shaping, "--phase", "vectors_shaped"]),
             ("gdal_polygonize", polygonize)]  # fmt: skip
    for name, command in steps:
        wall, rss, code = run_child(*command)
        if code:
            raise SystemExit(f"step {name} failed with exit code {code}")
        produced = work / f"{name}.json"
        extra = json.loads(produced.read_text()) if produced.is_file() else {}
        results[name] = {"seconds": round(wall, 1), "peak_rss_mb": round(rss), **extra}
        print(f"{name}: {wall:.1f} s, peak RSS {rss:.0f} MB", flush=True)
    ours = summary(work / "vectors.gpkg", LAYER, "class_id")
    gdal = summary(work / "gdal_polygonize.gpkg", "polygons", "DN")
    area_gap = abs(ours["building_area"] - gdal["building_area"])
    results["check"] = {"vectors": ours, "gdal_polygonize": gdal,
                        "same_polygons": ours["building_polygons"] == gdal["building_polygons"],
                        "same_area": area_gap <= 1e-9 * gdal["building_area"]}  # fmt: skip
    results["sizes_mb"] = {p.name: round(p.stat().st_size / 2**20, 1) for p in sorted(work.glob("*.gpkg"))}
    text = json.dumps(results, indent=2) + "\n"
    print(text)
    target = RESULTS if args.tiles == 10_000 else OUT / f"bench_vectors_{args.tiles}.json"
    target.write_text(text)


if __name__ == "__main__":
    main()
