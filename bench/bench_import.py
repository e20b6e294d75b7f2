"""Benchmark geolabel's raster tiler against ``gdal_retile.py -of PNG``, side by side in one run.

What is measured
----------------
Both tools cut the same raster into lossless PNG display tiles of the same size and
overlap, one after the other, on a warm page cache:

- **geolabel**: the import pipeline without Label Studio, i.e. what ``geolabel import``
  does before it talks to the server: ``inspect_raster`` + ``content_hash``, then
  ``importers.pipeline._register`` (``choose_bands``, ``compute_stretch``, ``plan_tiles``,
  ``TileRegistry.add_raster``), then ``importers.pipeline._render_pending``
  (``importers.render.render_tiles`` over ``--workers`` threads plus
  ``TileRegistry.mark_rendered`` per chunk). The registry and the tiles go to a fresh
  temporary folder under ``bench/out/``.
- **gdal_retile**: ``gdal_retile.py -of PNG -ps T T -overlap O -targetDir DIR RASTER``
  (Debian's gdal-bin), run as a child process.

For each tool: wall time (tiles/s = tiles written / wall time), CPU seconds of the tool's
processes (user + system, from getrusage; CPU s / wall s shows how many cores it really
got, which reveals contention from other load on the machine), the **peak RSS of the
whole process tree** (the sum of the RSS of the root process and all its descendants,
sampled with psutil every 50 ms in a background thread; for geolabel the root is this
very process, so its own baseline counts) and the largest RSS of any single process,
and the size of the PNGs written. Summed RSS counts shared pages (libraries, the
interpreter) once per process, so it overstates real memory use; it is the conservative
figure the targets are checked against. The peak summed PSS (shared pages split between
the processes that map them, read every 0.5 s because it costs more) is shown beside it.

The source raster is an RGB uint8 GeoTIFF (EPSG:2154, 0.2 m pixels, 512 x 512 blocks,
DEFLATE with horizontal predictor) built once per size and cached in ``bench/out/``: each
512 x 512 block is a random window of the bundled 1024 x 1024 aerial orthophoto, flipped
and/or transposed, with a small brightness change, so it compresses like real imagery
(neither noise nor flat colour). It is written block row by block row in a child
process: the whole raster is never in memory.

Afterwards a few geolabel tiles (first, last and random ones) are decoded with Pillow and
compared with the raster window read by rasterio: uint8 data with stretch ``none`` must
come back identical. A single-process stage breakdown (read, encode, write per tile)
shows where the render time goes.

Results are printed as a table and written to ``bench/out/bench_import.json``.
Targets from the issue: geolabel at least 5x gdal_retile's tiles/s, and a peak RSS
under 500 MB on a 20000 x 20000 raster.

Usage::

    .venv/bin/python bench/bench_import.py                # 20000 x 20000, takes minutes
    .venv/bin/python bench/bench_import.py --size 4000    # quick run
    .venv/bin/python bench/bench_import.py --skip-gdal --keep
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

import numpy as np
import numpy.typing as npt
import psutil
import rasterio
from affine import Affine
from rasterio.crs import CRS
from rasterio.windows import Window

REPO = Path(__file__).resolve().parent.parent
OUT_DIR = REPO / "bench" / "out"
SAMPLE = REPO / "geolabel" / "samples" / "orthophoto_cogeo.tif"
RESULTS_NAME = "bench_import.json"

SOURCE_VERSION = 1  # bump when the generated content changes, to rebuild cached rasters
SOURCE_BLOCK = 512
SOURCE_CRS = "EPSG:2154"
SOURCE_PIXEL_M = 0.2
SOURCE_ORIGIN = (650_000.0, 6_865_000.0)  # upper-left corner, Lambert-93 (Paris area)
BRIGHTNESS_RANGE = (0.9, 1.1)
GENERATOR_CACHE_MB = 128

SAMPLE_PERIOD_S = 0.05
PSS_EVERY = 10  # PSS every 0.5 s
MB = 1024 * 1024
TARGET_RATIO = 5.0
TARGET_RSS_MB = 500.0
BENCH_PROJECT_ID = 1


# --------------------------------------------------------------------------- memory sampling


class TreeRssSampler:
    """Samples, in a background thread, the summed RSS of a process and all its descendants.

    RSS is read every ``period_s`` (cheap: /proc/PID/statm). PSS, which splits shared
    pages (libraries) between the processes mapping them, costs a few ms per process
    (/proc/PID/smaps), so it is read only every ``pss_every`` samples.
    """

    def __init__(self, pid: int, period_s: float = SAMPLE_PERIOD_S, pss_every: int = PSS_EVERY) -> None:
        self.root = psutil.Process(pid)
        self.period_s = period_s
        self.pss_every = pss_every
        self.peak_tree = 0
        self.peak_single = 0
        self.peak_pss_tree = 0
        self.samples = 0
        self.peak_by_pid: dict[int, int] = {}
        self.role_by_pid: dict[int, str] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def __enter__(self) -> TreeRssSampler:
        self.sample()
        self._thread.start()
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(self.period_s):
            self.sample()

    def sample(self) -> None:
        """Take one sample (the thread calls this every period)."""
        try:
            processes = [self.root, *self.root.children(recursive=True)]
        except psutil.NoSuchProcess:
            return
        with_pss = self.samples % self.pss_every == 0
        total = pss_total = 0
        for process in processes:
            try:
                rss = process.memory_info().rss
                pss_total += process.memory_full_info().pss if with_pss else 0
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
            total += rss
            self.peak_single = max(self.peak_single, rss)
            self.peak_by_pid[process.pid] = max(self.peak_by_pid.get(process.pid, 0), rss)
            if process.pid not in self.role_by_pid:
                self.role_by_pid[process.pid] = self._role(process)
        self.peak_tree = max(self.peak_tree, total)
        self.peak_pss_tree = max(self.peak_pss_tree, pss_total)
        self.samples += 1

    def _role(self, process: psutil.Process) -> str:
        if process.pid == self.root.pid:
            return "root"
        try:
            command = " ".join(process.cmdline())
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return "child"
        if "resource_tracker" in command:
            return "resource_tracker"
        return "worker" if "spawn_main" in command else "child"

    def peaks_by_role(self) -> list[str]:
        """Peak RSS of each process seen, labelled by its role (root, worker, ...), in MB."""
        return [
            f"{self.role_by_pid.get(pid, '?')} {peak / MB:.0f}"
            for pid, peak in sorted(self.peak_by_pid.items(), key=lambda item: -item[1])
        ]


def cpu_seconds() -> float:
    """User + system CPU time of this process and of its reaped children so far."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    children = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def rss_mb(pid: int | None = None) -> float:
    """Current RSS of one process, in MB."""
    return psutil.Process(pid).memory_info().rss / MB


# --------------------------------------------------------------------------- source raster


def source_path(out_dir: Path, size: int) -> Path:
    """Where the generated raster of ``size`` x ``size`` pixels is cached."""
    return out_dir / f"ortho_{size}px_v{SOURCE_VERSION}.tif"


def ensure_source(out_dir: Path, size: int, seed: int) -> dict[str, Any]:
    """Generate the source raster unless a complete cached copy exists; describe it."""
    path = source_path(out_dir, size)
    generated_s: float | None = None
    peak_mb: float | None = None
    if not path.is_file():
        out_dir.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(path.name + ".partial")
        start = time.perf_counter()
        # A child process: its memory never mixes with the measurements made here.
        context = multiprocessing.get_context("spawn")
        result = context.Queue()
        child = context.Process(target=_generate_child, args=(str(partial), size, seed, result))
        child.start()
        child.join()  # the child only puts one float on the queue: joining first cannot deadlock
        if child.exitcode != 0:
            raise SystemExit(f"generating {path} failed (exit code {child.exitcode})")
        peak_mb = float(result.get(timeout=10))
        partial.replace(path)
        generated_s = time.perf_counter() - start
    with rasterio.open(path) as src:
        uncompressed = src.width * src.height * src.count
        return {
            "path": str(path),
            "width": src.width,
            "height": src.height,
            "bands": src.count,
            "dtype": src.dtypes[0],
            "crs": str(src.crs),
            "pixel_m": src.res[0],
            "block": list(src.block_shapes[0]),
            "compress": src.compression.value if src.compression else None,
            "file_mb": round(path.stat().st_size / MB, 1),
            "uncompressed_mb": round(uncompressed / MB, 1),
            "generated_now": generated_s is not None,
            "generation_s": None if generated_s is None else round(generated_s, 1),
            "generator_peak_rss_mb": None if peak_mb is None else round(peak_mb, 1),
        }


def _generate_child(path: str, size: int, seed: int, result: Any) -> None:
    peak = write_source(Path(path), size, seed)
    result.put(peak)


def write_source(path: Path, size: int, seed: int) -> float:
    """Write the synthetic orthophoto block row by block row; return this process's peak RSS in MB."""
    with rasterio.open(SAMPLE) as sample_src:
        sample = sample_src.read()
    rng = np.random.default_rng(seed)
    profile = {
        "driver": "GTiff",
        "width": size,
        "height": size,
        "count": 3,
        "dtype": "uint8",
        "crs": CRS.from_string(SOURCE_CRS),
        "transform": Affine(SOURCE_PIXEL_M, 0.0, SOURCE_ORIGIN[0], 0.0, -SOURCE_PIXEL_M, SOURCE_ORIGIN[1]),
        "tiled": True,
        "blockxsize": SOURCE_BLOCK,
        "blockysize": SOURCE_BLOCK,
        "compress": "deflate",
        "predictor": 2,
        "interleave": "pixel",
        "photometric": "RGB",
        "num_threads": "ALL_CPUS",
        "bigtiff": "IF_SAFER",
    }
    peak = 0.0
    with rasterio.Env(GDAL_CACHEMAX=GENERATOR_CACHE_MB), rasterio.open(path, "w", **profile) as dst:
        for row_off in range(0, size, SOURCE_BLOCK):
            height = min(SOURCE_BLOCK, size - row_off)
            dst.write(_block_row(sample, rng, size, height), window=Window(0, row_off, size, height))
            peak = max(peak, rss_mb())
    return peak


def _block_row(
    sample: npt.NDArray[np.uint8], rng: np.random.Generator, width: int, height: int
) -> npt.NDArray[np.uint8]:
    """One strip ``(3, height, width)`` made of transformed windows of the sample orthophoto."""
    strip = np.empty((3, height, width), dtype=np.uint8)
    for col_off in range(0, width, SOURCE_BLOCK):
        block_width = min(SOURCE_BLOCK, width - col_off)
        block = _sample_block(sample, rng)
        strip[:, :, col_off : col_off + block_width] = block[:, :height, :block_width]
    return strip


def _sample_block(sample: npt.NDArray[np.uint8], rng: np.random.Generator) -> npt.NDArray[np.uint8]:
    """A random ``SOURCE_BLOCK`` window of the sample, flipped/transposed, slightly brighter or darker."""
    _, rows, cols = sample.shape
    top = int(rng.integers(0, rows - SOURCE_BLOCK + 1))
    left = int(rng.integers(0, cols - SOURCE_BLOCK + 1))
    block = sample[:, top : top + SOURCE_BLOCK, left : left + SOURCE_BLOCK]
    if rng.random() < 0.5:
        block = block[:, ::-1, :]
    if rng.random() < 0.5:
        block = block[:, :, ::-1]
    if rng.random() < 0.5:
        block = block.transpose(0, 2, 1)
    gain = np.float32(rng.uniform(*BRIGHTNESS_RANGE))
    return np.clip(block.astype(np.float32) * gain + np.float32(0.5), 0, 255).astype(np.uint8)


def warm_page_cache(path: Path, chunk: int = 8 * MB) -> None:
    """Read the file once so both tools start from the same (warm) page cache."""
    with open(path, "rb") as handle:
        while handle.read(chunk):
            pass


# --------------------------------------------------------------------------- results


@dataclass
class ToolResult:
    """What one tool did and what it cost."""

    tool: str
    tiles: int
    seconds: float
    cpu_seconds: float
    peak_rss_tree_mb: float
    peak_rss_single_mb: float
    peak_pss_tree_mb: float
    processes: list[str]
    output_mb: float
    phases_s: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def tiles_per_s(self) -> float:
        """Tiles written per second of wall time."""
        return self.tiles / self.seconds if self.seconds > 0 else 0.0


@dataclass
class Verification:
    """Outcome of the pixel-exact comparison of a few display tiles with the raster."""

    checked: int
    identical: int
    failures: list[str]

    @property
    def lossless(self) -> bool:
        """True when every checked tile is pixel-identical to its raster window."""
        return self.checked > 0 and self.identical == self.checked


def png_stats(root: Path) -> tuple[int, float]:
    """Number of PNG files under ``root`` and their total size in MB."""
    count, size = 0, 0
    for path in root.rglob("*.png"):
        count += 1
        size += path.stat().st_size
    return count, size / MB


# --------------------------------------------------------------------------- geolabel


class _QuietProgress:
    def start(self, description: str, total: int) -> None:
        pass

    def advance(self, units: int) -> None:
        pass


def geolabel_options(work: Path, args: argparse.Namespace) -> Any:
    """Import options pointing the data folder and document root at ``work``."""
    from importers.pipeline import ImportOptions

    return ImportOptions(
        project="bench",
        classes=(),
        data_dir=work,
        document_root=work,
        tile_size=args.tile,
        overlap=args.overlap,
        stretch="auto",
        workers=args.workers,
    )


def run_geolabel(raster: Path, work: Path, args: argparse.Namespace) -> ToolResult:
    """Run geolabel's import up to (not including) Label Studio, measuring time and memory."""
    # Imported here so the baseline RSS below includes what a real import loads.
    from georef.registry import TileRegistry, TileStatus
    from importers.pipeline import _register, _render_pending
    from importers.raster import content_hash, inspect_raster

    options = geolabel_options(work, args)
    baseline = rss_mb()
    cpu_start = cpu_seconds()
    with TreeRssSampler(os.getpid()) as sampler:
        start = time.perf_counter()
        info = inspect_raster(raster)
        digest = content_hash(info.path)
        hashed = time.perf_counter()
        with TileRegistry(work / "registry.sqlite") as registry:
            registry.record_project(BENCH_PROJECT_ID, "bench")
            record = _register(info, digest, BENCH_PROJECT_ID, options, registry)
            registered = time.perf_counter()
            rendered = _render_pending(record, options, registry, _QuietProgress())
            done = time.perf_counter()
            counts = registry.status_counts(record.id)
    cpu = cpu_seconds() - cpu_start
    pngs, size_mb = png_stats(work)
    notes = [
        f"stretch {list(record.stretch)}, bands {list(record.display_bands)}",
        f"registry: {counts[TileStatus.RENDERED]} rendered, {counts[TileStatus.SKIPPED]} skipped",
        f"process RSS before the run {baseline:.0f} MB (imports: rasterio, and label-studio-sdk, "
        "which imports pandas and pyarrow, through importers.pipeline)",
    ]
    if rendered != pngs:
        notes.append(f"rendered {rendered} tiles but found {pngs} PNG files")
    return tool_result(
        "geolabel",
        pngs,
        done - start,
        cpu,
        sampler,
        size_mb,
        phases_s={
            "inspect+hash": hashed - start,
            "register (stretch, plan, add_raster)": registered - hashed,
            "render + mark_rendered": done - registered,
        },
        notes=notes,
    )


def verify_lossless(raster: Path, work: Path, count: int, seed: int) -> Verification:
    """Decode the first, last and ``count`` random tiles and compare them with the raster."""
    from PIL import Image

    from georef.registry import TileRegistry

    with TileRegistry(work / "registry.sqlite") as registry:
        tiles = [t for t in registry.tiles() if t.image_path is not None]
        if not tiles:
            return Verification(0, 0, ["no rendered tile"])
        bands = list(registry.raster(tiles[0].raster_id).display_bands)
    chosen = {tiles[0].id: tiles[0], tiles[-1].id: tiles[-1]}
    for tile in random.Random(seed).sample(tiles, min(count, len(tiles))):
        chosen[tile.id] = tile
    identical, failures = 0, []
    with rasterio.open(raster) as src:
        for tile in chosen.values():
            expected = src.read(bands, window=tile.window.to_rasterio()).transpose(1, 2, 0)
            with Image.open(work / str(tile.image_path)) as image:
                mode = image.mode
                actual = np.asarray(image)
            if mode == "RGB" and actual.shape == expected.shape and np.array_equal(actual, expected):
                identical += 1
            else:
                failures.append(f"{tile.id}: mode {mode}, shape {actual.shape} vs {expected.shape}")
    return Verification(len(chosen), identical, failures)


def stage_breakdown(raster: Path, work: Path, count: int, seed: int) -> dict[str, float]:
    """Mean milliseconds per tile of each render stage, in this process, over ``count`` tiles."""
    from georef.registry import TileRegistry
    from importers.display import encode_png, read_display
    from importers.render import GDAL_CACHE_MB

    with TileRegistry(work / "registry.sqlite") as registry:
        tiles = [t for t in registry.tiles() if t.image_path is not None]
        record = registry.raster(tiles[0].raster_id)
    chosen = sorted(
        random.Random(seed).sample(tiles, min(count, len(tiles))),
        key=lambda t: (t.window.row_off, t.window.col_off),
    )
    scratch = work / "breakdown"
    scratch.mkdir(exist_ok=True)
    totals = {"read_display": 0.0, "encode_png": 0.0, "write": 0.0}
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), rasterio.open(raster) as src:
        for i, tile in enumerate(chosen):
            t0 = time.perf_counter()
            image, valid = read_display(src, tile.window.to_rasterio(), record.display_bands, record.stretch)
            t1 = time.perf_counter()
            data = encode_png(image, valid)
            t2 = time.perf_counter()
            (scratch / f"{i}.png").write_bytes(data)
            t3 = time.perf_counter()
            totals["read_display"] += t1 - t0
            totals["encode_png"] += t2 - t1
            totals["write"] += t3 - t2
    shutil.rmtree(scratch)
    return {stage: 1000 * seconds / max(1, len(chosen)) for stage, seconds in totals.items()}


# --------------------------------------------------------------------------- gdal_retile


def run_gdal_retile(raster: Path, work: Path, args: argparse.Namespace) -> ToolResult:
    """Run ``gdal_retile.py -of PNG`` in a child process, measuring time and its tree's memory."""
    tiles_dir = work / "tiles"
    tiles_dir.mkdir(parents=True)
    command = [
        "gdal_retile.py",
        "-of",
        "PNG",
        "-ps",
        str(args.tile),
        str(args.tile),
        "-overlap",
        str(args.overlap),
        "-targetDir",
        str(tiles_dir),
        str(raster),
    ]
    log_path = work / "gdal_retile.log"
    with open(log_path, "wb") as log:
        cpu_start = cpu_seconds()
        start = time.perf_counter()
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
        with TreeRssSampler(process.pid) as sampler:
            code = process.wait()
        seconds = time.perf_counter() - start
        cpu = cpu_seconds() - cpu_start
    if code != 0:
        raise SystemExit(f"gdal_retile.py failed ({code}): {log_path.read_text()[-2000:]}")
    pngs, size_mb = png_stats(tiles_dir)
    side_files = sum(1 for p in tiles_dir.iterdir() if p.suffix != ".png")
    notes = [" ".join(command)]
    if side_files:
        notes.append(f"{side_files} non-PNG side files (.aux.xml) not counted in the output size")
    return tool_result("gdal_retile", pngs, seconds, cpu, sampler, size_mb, notes=notes)


def tool_result(
    tool: str,
    tiles: int,
    seconds: float,
    cpu: float,
    sampler: TreeRssSampler,
    output_mb: float,
    **extra: Any,
) -> ToolResult:
    """One tool's measurements, with the memory peaks its sampler saw."""
    return ToolResult(
        tool=tool,
        tiles=tiles,
        seconds=seconds,
        cpu_seconds=cpu,
        peak_rss_tree_mb=sampler.peak_tree / MB,
        peak_rss_single_mb=sampler.peak_single / MB,
        peak_pss_tree_mb=sampler.peak_pss_tree / MB,
        processes=sampler.peaks_by_role(),
        output_mb=output_mb,
        **extra,
    )


def gdal_cli_version() -> str:
    """Version line of the command-line GDAL that runs gdal_retile.py."""
    done = subprocess.run(["gdalinfo", "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip()


# --------------------------------------------------------------------------- report


def table(results: Sequence[ToolResult]) -> str:
    """The results as an aligned text table."""
    header = (
        "tool",
        "tiles",
        "seconds",
        "tiles/s",
        "CPU s",
        "peak RSS tree MB",
        "max single MB",
        "PSS tree MB",
        "procs",
        "output MB",
    )
    rows = [
        (
            r.tool,
            str(r.tiles),
            f"{r.seconds:.1f}",
            f"{r.tiles_per_s:.1f}",
            f"{r.cpu_seconds:.1f}",
            f"{r.peak_rss_tree_mb:.0f}",
            f"{r.peak_rss_single_mb:.0f}",
            f"{r.peak_pss_tree_mb:.0f}",
            str(len(r.processes)),
            f"{r.output_mb:.0f}",
        )
        for r in results
    ]
    widths = [max(len(line[i]) for line in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.rjust(w) if i else cell.ljust(w)
            for i, (cell, w) in enumerate(zip(line, widths, strict=True))
        )
        for line in (header, *rows)
    ]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def targets(geolabel: ToolResult, gdal: ToolResult | None, verification: Verification) -> dict[str, Any]:
    """The issue's targets and whether this run meets them."""
    ratio = geolabel.tiles_per_s / gdal.tiles_per_s if gdal and gdal.tiles_per_s else None
    return {
        "speed_ratio": None if ratio is None else round(ratio, 2),
        "ratio_target": TARGET_RATIO,
        "ratio_met": None if ratio is None else ratio >= TARGET_RATIO,
        "rss_target_mb": TARGET_RSS_MB,
        "rss_met": geolabel.peak_rss_tree_mb < TARGET_RSS_MB,
        "lossless": verification.lossless,
    }


def print_report(
    source: dict[str, Any],
    results: Sequence[ToolResult],
    verdict: dict[str, Any],
    verification: Verification,
    breakdown: dict[str, float],
) -> None:
    """Print the source raster, the table, the phases, the verification and the targets."""
    print(
        f"\nsource: {source['width']} x {source['height']} x {source['bands']} {source['dtype']}, "
        f"{source['crs']} {source['pixel_m']} m, blocks {source['block']}, {source['compress']}, "
        f"{source['file_mb']} MB on disk ({source['uncompressed_mb']} MB uncompressed)"
    )
    print()
    print(table(results))
    for result in results:
        for name, seconds in result.phases_s.items():
            print(f"  {result.tool} {name}: {seconds:.2f} s")
        print(f"  {result.tool} peak RSS MB per process: {', '.join(result.processes)}")
        for note in result.notes:
            print(f"  {result.tool}: {note}")
    if breakdown:
        stages = ", ".join(f"{k} {v:.1f}" for k, v in breakdown.items())
        print(f"  geolabel stage breakdown, ms/tile in one process: {stages}")
    print(
        f"\nlossless check: {verification.identical}/{verification.checked} tiles identical to the raster"
        + ("" if not verification.failures else f"; failures: {verification.failures}")
    )
    if verdict["speed_ratio"] is not None:
        print(
            f"speed ratio geolabel / gdal_retile: {verdict['speed_ratio']:.2f}x "
            f"(target >= {TARGET_RATIO:g}x: {'MET' if verdict['ratio_met'] else 'NOT MET'})"
        )
    print(
        f"geolabel peak RSS (tree): {results[0].peak_rss_tree_mb:.0f} MB "
        f"(target < {TARGET_RSS_MB:g} MB: {'MET' if verdict['rss_met'] else 'NOT MET'})"
    )


def host_info() -> dict[str, Any]:
    """Machine facts that matter for reading the numbers."""
    return {
        "cpus": os.cpu_count(),
        "memory_gb": round(psutil.virtual_memory().total / 1024**3, 1),
        "load_avg": [round(x, 2) for x in os.getloadavg()],
        "python": platform.python_version(),
        "rasterio": rasterio.__version__,
        "rasterio_gdal": rasterio.__gdal_version__,
        "gdal_cli": gdal_cli_version(),
    }


# --------------------------------------------------------------------------- main


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size", type=int, default=20000, help="raster width and height in pixels")
    parser.add_argument("--tile", type=int, default=512, help="tile size in pixels (both tools)")
    parser.add_argument("--overlap", type=int, default=0, help="tile overlap in pixels (both tools)")
    parser.add_argument("--workers", type=int, default=2, help="geolabel render threads")
    parser.add_argument("--skip-gdal", action="store_true", help="run only geolabel")
    parser.add_argument("--keep", action="store_true", help="keep the tiles written under bench/out/")
    parser.add_argument("--verify", type=int, default=8, help="random tiles to check pixel by pixel")
    parser.add_argument("--breakdown", type=int, default=64, help="tiles for the stage breakdown (0: off)")
    parser.add_argument("--seed", type=int, default=2154)
    parser.add_argument("--out-dir", type=Path, default=OUT_DIR)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    out_dir: Path = args.out_dir.resolve()
    host_before = host_info()
    print(f"load average before: {host_before['load_avg']} on {host_before['cpus']} CPUs", flush=True)
    source = ensure_source(out_dir, args.size, args.seed)
    raster = Path(source["path"])
    if source["generated_now"]:
        print(
            f"generated {raster.name} in {source['generation_s']} s "
            f"(generator peak RSS {source['generator_peak_rss_mb']} MB)",
            flush=True,
        )
    warm_page_cache(raster)
    geo_work = Path(tempfile.mkdtemp(prefix="geolabel-", dir=out_dir))
    gdal_work = None if args.skip_gdal else Path(tempfile.mkdtemp(prefix="gdal_retile-", dir=out_dir))
    try:
        print("running geolabel ...", flush=True)
        results = [run_geolabel(raster, geo_work, args)]
        if gdal_work is not None:
            print("running gdal_retile.py ...", flush=True)
            results.append(run_gdal_retile(raster, gdal_work, args))
        verification = verify_lossless(raster, geo_work, args.verify, args.seed)
        breakdown = stage_breakdown(raster, geo_work, args.breakdown, args.seed) if args.breakdown else {}
    finally:
        for work in (geo_work, gdal_work):
            if work is not None and not args.keep:
                shutil.rmtree(work, ignore_errors=True)
    verdict = targets(results[0], results[1] if len(results) > 1 else None, verification)
    print_report(source, results, verdict, verification, breakdown)
    report = {
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "host_before": host_before,
        "load_avg_after": [round(x, 2) for x in os.getloadavg()],
        "source": source,
        "results": [{**asdict(r), "tiles_per_s": round(r.tiles_per_s, 2)} for r in results],
        "verification": asdict(verification),
        "stage_ms_per_tile": breakdown,
        "targets": verdict,
        "kept": [str(w) for w in (geo_work, gdal_work) if w is not None] if args.keep else [],
    }
    (out_dir / RESULTS_NAME).write_text(json.dumps(report, indent=2) + "\n")
    print(f"\nresults written to {out_dir / RESULTS_NAME}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
