"""``predictions.gpkg``: the class-id raster vectorised per class, merged across block seams.

The work GeoTIFFs of :func:`exporters.rasters.write_mosaic` are read block by block
(:data:`exporters.mosaic.BLOCK`-px windows, never the whole raster). Each block is an independent
work item (:func:`vectorise_block`, run on a :class:`geolabel.compute.Engine`):

1. GDAL's polygoniser (``rasterio.features.shapes``, 4-connectivity) outlines the connected regions of
   each foreground class, in *global pixel coordinates* (``(col, row)`` integers: exact, and the same
   on both sides of a seam, whatever the grid's transform);
2. the outlines are burnt back (``rasterio.features.rasterize``, pixel centres) into a label image, so
   each region's pixel count and the sum of its class's 0-255 probabilities are counted over exactly
   the pixels the polygon covers (integer sums: means merge exactly across blocks);
3. regions touching an interior block edge are held; the others are final at once (with ``simplify``,
   a region is final when nothing it touches, transitively, touches an interior edge, so that its
   neighbours are simplified with it).

When a row of blocks is complete (:func:`settle`), the held regions of each class are united (their
shared seam edges are bit-identical integers), split into connected parts, and their counts and sums
added; the parts that reach the next row of blocks stay held, the others are final. Final regions
go through, in order: the ``min_area`` filter, simplification as a *coverage*
(``shapely.coverage_simplify`` over the group of touching regions, whatever their class, so that
adjacent polygons keep one shared edge: no gap, no overlap), the grid transform to world coordinates,
then right-angle regularisation for the classes named (:func:`right_angled`). Features are Polygons
(one per connected region; holes kept), appended to the layer ``predictions`` in chunks, in the
rasters' CRS, styled for QGIS by class like the other layers.
"""

from __future__ import annotations

import functools
import itertools
import math
import warnings
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt
import rasterio
import rasterio.errors
import rasterio.features
import shapely
import shapely.affinity
from affine import Affine
from rasterio.crs import CRS
from rasterio.errors import NotGeoreferencedWarning
from shapely.geometry import Polygon, shape

from exporters import gpkg, rasters, styles
from exporters.errors import ExportInputError
from exporters.mosaic import ARGMAX_NODATA, BLOCK
from geolabel.compute import Engine, InProcess
from georef.grid import PixelWindow

#: The GeoPackage layer written.
LAYER = "predictions"
#: Features written to the GeoPackage per append.
FEATURE_CHUNK = 2000
#: A regularised outline is kept only when its area is within this ratio of the outline it replaces.
MAX_AREA_CHANGE = 0.2
#: Attributes of a prediction polygon (see :func:`write_predictions_gpkg`).
PREDICTIONS_SCHEMA: gpkg.Schema = {"class_id": "int64", "class_name": "str", "mean_probability": "float64",
                                   "pixels": "int64", "area": "float64", "regularized": "bool"}  # fmt: skip


@dataclass(frozen=True)
class VectorOptions:
    """How prediction polygons are filtered and shaped (lengths in ground units of the rasters' CRS).

    Raises:
        ExportInputError: for a negative or non-finite ``min_area`` or ``simplify``.
    """

    min_area: float = 0.0  # ground units^2; smaller polygons are dropped (after merging across seams)
    simplify: float = 0.0  # tolerance in ground units; 0 = exact pixel-edge outlines
    regularize: frozenset[str] = frozenset()  # class names whose polygons get right angles

    def __post_init__(self) -> None:
        for name in ("min_area", "simplify"):
            value = getattr(self, name)
            if not math.isfinite(value) or value < 0:
                raise ExportInputError(
                    f"predictions {name} must be a finite number >= 0 (ground units of the rasters' CRS), "
                    f"got {value}; fix it in the [export] section or on the command line"
                )


@dataclass
class VectorReport:
    """What :func:`write_predictions_gpkg` wrote: features in all and per class name, and notes."""

    features: int
    per_class: dict[str, int]
    notes: list[str]


@dataclass(frozen=True)
class Region:
    """A connected region of one class in global pixel coordinates ``(col, row)`` of the rasters' grid."""

    class_id: int
    geometry: Polygon
    pixels: int
    proba_sum: int  # sum of the class's 0-255 probabilities over the region's pixels
    on_edge: bool = False  # touches an interior block edge: may continue in the next block


@dataclass(frozen=True)
class Feature:
    """A finished polygon in world coordinates, with its region's counts."""

    class_id: int
    geometry: Polygon
    pixels: int
    proba_sum: int
    regularized: bool


@dataclass
class BlockResult:
    """What one block gives: finished features, regions held for merging, and what was dropped."""

    features: list[Feature] = field(default_factory=list)
    held: list[Region] = field(default_factory=list)
    dropped: int = 0  # regions smaller than min_area
    kept_outline: int = 0  # regions of a regularised class whose regularisation fell back


@dataclass(frozen=True)
class VectorJob:
    """Everything a block needs (picklable: paths and values only, for Dask workers)."""

    argmax: Path
    proba: Path
    width: int
    height: int
    transform: Affine
    bands: tuple[tuple[int, int], ...]  # (class id, 1-based proba band) of the foreground classes
    options: VectorOptions
    regularize_ids: frozenset[int]

    @property
    def pixel_area(self) -> float:
        """Ground area of one pixel."""
        return abs(self.transform.determinant)


def vector_blocks(argmax: Path, block_size: int = BLOCK) -> int:
    """How many blocks :func:`write_predictions_gpkg` reads (one progress step each)."""
    with rasterio.open(argmax) as src:
        return len(block_windows(src.width, src.height, block_size))


def block_windows(width: int, height: int, block_size: int = BLOCK) -> list[PixelWindow]:
    """The windows of a ``width`` x ``height`` raster, row by row, ``block_size`` px square (less at ends)."""
    return [PixelWindow(col, row, min(block_size, width - col), min(block_size, height - row))
            for row in range(0, height, block_size) for col in range(0, width, block_size)]  # fmt: skip


def write_predictions_gpkg(
    argmax: Path,
    proba: Path,
    bands: Sequence[rasters.Band],
    target: Path,
    options: VectorOptions,
    engine: Engine | None = None,
    advance: Callable[[int], None] | None = None,
    block_size: int = BLOCK,
) -> VectorReport:
    """Vectorise the class-id raster ``argmax`` into the layer ``predictions`` of the GeoPackage ``target``.

    One Polygon per connected region (4-connectivity) of each foreground class, merged across block
    seams, with ``class_id``, ``class_name``, ``mean_probability`` (0..1, the mean over the region's
    pixels of its class's probability in ``proba``), ``pixels``, ``area`` (of the written geometry, in
    ground units^2) and ``regularized``; in the rasters' CRS; QGIS style by class as the layer's
    default. Background (class 0) and nodata are never features.

    Args:
        argmax: work GeoTIFF of class ids (nodata :data:`~exporters.mosaic.ARGMAX_NODATA`).
        proba: work GeoTIFF of 0-255 probabilities, band ``i + 1`` for ``bands[i]`` (background first).
        bands: the probability bands (class id, name, colour).
        target: the GeoPackage to write (replaced if it exists).
        options: minimum area, simplification, classes to regularise.
        engine: where blocks are computed (default: this process, one at a time).
        advance: told ``1`` after each block (:func:`vector_blocks` gives their number).
        block_size: side of the blocks read, in pixels.

    Raises:
        ExportInputError: for rasters that cannot be read or do not match ``bands``, or a class named in
            ``options.regularize`` that ``bands`` does not hold.
    """
    job, crs = _job(argmax, proba, bands, options)
    names = {b.class_id: b.name for b in bands}
    target.unlink(missing_ok=True)
    writer = _Writer(target, crs, names)
    held: list[Region] = []
    dropped = kept_outline = 0
    compute = functools.partial(vectorise_block, job)
    windows = block_windows(job.width, job.height, block_size)
    for window, result in zip(windows, (engine or InProcess()).map_ordered(compute, windows), strict=True):
        held += result.held
        settled = BlockResult()
        if window.col_end == job.width:  # a row of blocks is complete: what cannot grow any more is final
            settled, held = settle(held, window.row_end, job)
        for done in (result, settled):
            writer.add(done.features)
            dropped, kept_outline = dropped + done.dropped, kept_outline + done.kept_outline
        if advance is not None:
            advance(1)
    writer.close()
    categories = [styles.Category(str(b.class_id), b.name, b.color) for b in bands if b.class_id != 0]
    qml = styles.categorized_fill_qml("class_id", categories)
    gpkg.write_styles(target, [gpkg.LayerStyle(LAYER, "geolabel classes", qml)])
    notes = _notes(options, dropped, kept_outline)
    if crs.is_geographic and (options.min_area or options.simplify or options.regularize):
        notes.append(
            f"the predictions are in a geographic CRS ({crs.to_string()}): min_area and simplify were taken "
            "in degrees and right angles are right in degrees, not on the ground; export with a projected "
            "--crs to shape polygons in metres"
        )
    return VectorReport(writer.written, writer.per_class, notes)


def _job(
    argmax: Path, proba: Path, bands: Sequence[rasters.Band], options: VectorOptions
) -> tuple[VectorJob, CRS]:
    """Check the two rasters against each other and ``bands``; the block job and the rasters' CRS."""
    try:
        with rasterio.open(argmax) as ids, rasterio.open(proba) as probabilities:
            grid = (ids.width, ids.height, ids.transform, ids.crs)
            if grid != (
                probabilities.width,
                probabilities.height,
                probabilities.transform,
                probabilities.crs,
            ):
                raise ExportInputError(f"{argmax} and {proba} are not on the same grid; write them together")
            if probabilities.count != len(bands):
                raise ExportInputError(
                    f"{proba} has {probabilities.count} bands but {len(bands)} classes were given "
                    "(background first, then each class)"
                )
            if ids.crs is None:
                raise ExportInputError(f"{argmax} has no CRS; the polygons could not be placed")
    except rasterio.errors.RasterioIOError as exc:
        raise ExportInputError(f"cannot read the prediction rasters: {exc}") from None
    known = check_regularize(options, bands)
    foreground = tuple((b.class_id, index) for index, b in enumerate(bands, start=1) if b.class_id != 0)
    job = VectorJob(argmax, proba, grid[0], grid[1], grid[2], foreground, options,
                    frozenset(known[name] for name in options.regularize))  # fmt: skip
    return job, grid[3]


def check_regularize(options: VectorOptions, bands: Sequence[rasters.Band]) -> dict[str, int]:
    """The foreground classes by name; checks that every class of ``options.regularize`` is one of them.

    Raises:
        ExportInputError: naming the classes that are not.
    """
    known = {b.name: b.class_id for b in bands if b.class_id != 0}
    unknown = sorted(options.regularize - set(known))
    if unknown:
        raise ExportInputError(
            f"cannot regularise {', '.join(unknown)}: not a class of this model "
            f"(classes: {', '.join(sorted(known)) or 'none'})"
        )
    return known


def _notes(options: VectorOptions, dropped: int, kept_outline: int) -> list[str]:
    notes = []
    if dropped:
        notes.append(
            f"{dropped} prediction polygons smaller than min_area {options.min_area:g} were left out"
        )
    if kept_outline:
        notes.append(
            f"{kept_outline} polygons of a regularised class kept their outline (right angles would have "
            f"made it invalid or changed its area by more than {MAX_AREA_CHANGE:.0%})"
        )
    return notes


class _Writer:
    """Appends features to the layer in chunks of :data:`FEATURE_CHUNK`, counting them per class."""

    def __init__(self, target: Path, crs: CRS, names: dict[int, str]) -> None:
        self.target, self.crs, self.names = target, crs, names
        self.pending: list[Feature] = []
        self.written = 0
        self.per_class: dict[str, int] = {}
        gpkg.write_layer(target, LAYER, gpkg.frame([], [], PREDICTIONS_SCHEMA, crs), "Polygon", append=False)

    def add(self, features: Iterable[Feature]) -> None:
        self.pending += features
        if len(self.pending) >= FEATURE_CHUNK:
            self.flush()

    def close(self) -> None:
        self.flush()

    def flush(self) -> None:
        rows = [{"class_id": f.class_id, "class_name": self.names[f.class_id],
                 "mean_probability": f.proba_sum / (255.0 * f.pixels), "pixels": f.pixels,
                 "area": f.geometry.area, "regularized": f.regularized} for f in self.pending]  # fmt: skip
        frame = gpkg.frame(rows, [f.geometry for f in self.pending], PREDICTIONS_SCHEMA, self.crs)
        gpkg.write_layer(self.target, LAYER, frame, "Polygon", append=True)
        for row in rows:
            name = str(row["class_name"])
            self.per_class[name] = self.per_class.get(name, 0) + 1
        self.written += len(rows)
        self.pending = []


# --- one block ----------------------------------------------------------------------------------


def vectorise_block(job: VectorJob, window: PixelWindow) -> BlockResult:
    """The regions of one block: finished features, and the regions held until their neighbours are read."""
    with rasterio.open(job.argmax) as src:
        ids = src.read(1, window=window.to_rasterio())
    classes = [(class_id, band) for class_id, band in job.bands if (ids == class_id).any()]
    if not classes:
        return BlockResult()
    foreground = np.isin(ids, [class_id for class_id, _ in classes]) & (ids != ARGMAX_NODATA)
    offset = Affine.translation(window.col_off, window.row_off)  # global pixel coordinates: exact integers
    with warnings.catch_warnings():  # the first block's offset is the identity, which rasterio warns about
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        outlines = [
            (shape(g), int(v))
            for g, v in rasterio.features.shapes(ids, mask=foreground, connectivity=4, transform=offset)
        ]
        labels = rasterio.features.rasterize(
            ((g, index) for index, (g, _) in enumerate(outlines, start=1)),
            out_shape=ids.shape,
            transform=offset,
            fill=0,
            dtype="int32",
        )
    inside = np.flatnonzero(labels)  # the pixels of some region (flat indices)
    region = labels.ravel()[inside]
    pixels = np.bincount(region, minlength=len(outlines) + 1)
    own = _own_probability(job, window, ids.ravel()[inside], inside, classes)
    sums = np.bincount(region, weights=own, minlength=len(outlines) + 1)
    on_edge = _edge_labels(labels, window, job)
    regions = [Region(class_id, geometry, int(pixels[i]), round(float(sums[i])), i in on_edge)
               for i, (geometry, class_id) in enumerate(outlines, start=1)]  # fmt: skip
    final, held = _split_final(regions, job.options.simplify > 0)
    result = finish(final, job)
    result.held = held
    return result


def _own_probability(
    job: VectorJob,
    window: PixelWindow,
    ids: npt.NDArray[np.uint8],
    inside: npt.NDArray[np.intp],
    classes: Sequence[tuple[int, int]],
) -> npt.NDArray[np.float64]:
    """The 0-255 probability of the class each pixel was given, at the block's flat indices ``inside``.

    ``ids`` holds those pixels' class ids.
    """
    with rasterio.open(job.proba) as src:
        stack = src.read([band for _, band in classes], window=window.to_rasterio())
    own = np.zeros(len(inside), dtype=np.float64)
    for (class_id, _), values in zip(classes, stack, strict=True):
        chosen = ids == class_id
        own[chosen] = values.ravel()[inside[chosen]]
    return own


def _edge_labels(labels: npt.NDArray[np.int32], window: PixelWindow, job: VectorJob) -> set[int]:
    """Labels of the regions with pixels on an interior block edge (one another block also reads)."""
    lines = []
    if window.row_off > 0:
        lines.append(labels[0])
    if window.row_end < job.height:
        lines.append(labels[-1])
    if window.col_off > 0:
        lines.append(labels[:, 0])
    if window.col_end < job.width:
        lines.append(labels[:, -1])
    return {int(v) for line in lines for v in np.unique(line) if v}


def _split_final(regions: list[Region], with_neighbours: bool) -> tuple[list[Region], list[Region]]:
    """Regions final now, and regions held: on an edge or (``with_neighbours``) touching one, transitively."""
    if not with_neighbours:
        return [r for r in regions if not r.on_edge], [r for r in regions if r.on_edge]
    groups = touching_groups([r.geometry for r in regions])
    open_groups = {g for g, r in zip(groups, regions, strict=True) if r.on_edge}
    final = [r for g, r in zip(groups, regions, strict=True) if g not in open_groups]
    held = [r for g, r in zip(groups, regions, strict=True) if g in open_groups]
    return final, held


def touching_groups(geometries: Sequence[Polygon]) -> list[int]:
    """A group number per geometry: geometries that touch or overlap (transitively) share a number."""
    parent = list(range(len(geometries)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    tree = shapely.STRtree(geometries)
    left, right = tree.query(geometries, predicate="intersects")
    for a, b in zip(left.tolist(), right.tolist(), strict=True):
        parent[root(a)] = root(b)
    return [root(i) for i in range(len(geometries))]


# --- merging across seams -----------------------------------------------------------------------


def merge_regions(regions: Sequence[Region]) -> list[Region]:
    """Unite the held regions of each class that share an edge across a seam; counts and sums are added.

    Regions not on an edge pass unchanged. Pieces of one class meeting only at a corner stay apart
    (4-connectivity, as within a block).
    """
    merged = [r for r in regions if not r.on_edge]
    for class_id in sorted({r.class_id for r in regions if r.on_edge}):
        pieces = [r for r in regions if r.on_edge and r.class_id == class_id]
        parts = shapely.get_parts(shapely.union_all([p.geometry for p in pieces]))
        inside = shapely.point_on_surface([p.geometry for p in pieces])
        piece_index, part_index = shapely.STRtree(parts).query(inside, predicate="within")
        pixels = np.zeros(len(parts), dtype=np.int64)
        sums = np.zeros(len(parts), dtype=np.int64)
        np.add.at(pixels, part_index, [pieces[i].pixels for i in piece_index])
        np.add.at(sums, part_index, [pieces[i].proba_sum for i in piece_index])
        # simplify 0 drops the vertices a seam left on straight edges
        merged += [Region(class_id, shapely.simplify(part, 0.0), int(pixels[i]), int(sums[i]))
                   for i, part in enumerate(parts)]  # fmt: skip
    return merged


def settle(held: Sequence[Region], rows_done: int, job: VectorJob) -> tuple[BlockResult, list[Region]]:
    """Merge the held regions once every block above pixel row ``rows_done`` is read; finish the final ones.

    A merged region that reaches row ``rows_done`` (with ``simplify``: any region of its group of
    touching regions) may continue in the next row of blocks: it stays held, marked on an edge so the
    next merge unites it again. The others are final. So memory holds one row of blocks' seam regions,
    not the whole raster's.
    """
    merged = merge_regions(held)
    reaching = [rows_done < job.height and r.geometry.bounds[3] >= rows_done for r in merged]
    if job.options.simplify > 0 and merged:
        groups = touching_groups([r.geometry for r in merged])
        open_groups = {g for g, reach in zip(groups, reaching, strict=True) if reach}
        reaching = [g in open_groups for g in groups]
    final = [r for r, reach in zip(merged, reaching, strict=True) if not reach]
    still = [replace(r, on_edge=True) for r, reach in zip(merged, reaching, strict=True) if reach]
    return finish(final, job), still


# --- finishing: minimum area, simplification, world coordinates, right angles -------------------


def finish(regions: Sequence[Region], job: VectorJob) -> BlockResult:
    """Features of final regions: ``min_area`` filter, coverage simplification, to world, right angles."""
    options = job.options
    kept = [r for r in regions if r.pixels * job.pixel_area >= options.min_area]
    result = BlockResult(dropped=len(regions) - len(kept))
    geometries = [to_world(r.geometry, job.transform) for r in kept]
    if options.simplify > 0 and kept:
        geometries = _coverage_simplified([r.geometry for r in kept], geometries, job)
    for region, geometry in zip(kept, geometries, strict=True):
        regularized = False
        if region.class_id in job.regularize_ids:
            square = right_angled(geometry, _regularize_tolerance(job))
            regularized = square is not None
            geometry = square if square is not None else geometry
            result.kept_outline += not regularized
        geometry = shapely.orient_polygons(geometry)  # exterior counter-clockwise, holes clockwise
        result.features.append(
            Feature(region.class_id, geometry, region.pixels, region.proba_sum, regularized)
        )
    return result


def to_world(geometry: Polygon, transform: Affine) -> Polygon:
    """A geometry in pixel ``(col, row)`` coordinates placed as ``transform @ (col, row)`` places a point."""
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f

    def place(coords: npt.NDArray[np.float64]) -> npt.NDArray[np.float64]:
        cols, rows = coords[:, 0], coords[:, 1]
        return np.column_stack((cols * a + rows * b + c, cols * d + rows * e + f))

    placed: Polygon = shapely.transform(geometry, place)
    return placed


def _coverage_simplified(
    pixel_geometries: Sequence[Polygon], world: Sequence[Polygon], job: VectorJob
) -> list[Polygon]:
    """Simplify touching polygons as one coverage (shared edges stay shared); an invalid result is not kept.

    GEOS needs the shared edges to have the same vertices on both sides; polygoniser outlines only
    have vertices where their own outline turns, so every outline first gets a vertex at each pixel
    corner along it (exact: integer pixel coordinates).
    """
    dense = [
        shapely.set_precision(shapely.segmentize(g, 1.0), 1.0, mode="pointwise") for g in pixel_geometries
    ]
    simplified = shapely.coverage_simplify([to_world(g, job.transform) for g in dense], job.options.simplify)
    return [s if isinstance(s, Polygon) and not s.is_empty and s.is_valid else w
            for s, w in zip(simplified, world, strict=True)]  # fmt: skip


def _regularize_tolerance(job: VectorJob) -> float:
    """Outline noise ignored by :func:`right_angled`: the simplification, at least a pixel's diagonal."""
    column, row = math.hypot(job.transform.a, job.transform.d), math.hypot(job.transform.b, job.transform.e)
    return max(job.options.simplify, math.hypot(column, row))


def right_angled(polygon: Polygon, tolerance: float) -> Polygon | None:
    """``polygon`` with right angles only, along its dominant orientation; None when that fails.

    The outline is simplified (Douglas-Peucker, ``tolerance``), rotated so that its dominant edge
    direction (length-weighted mean of edge directions modulo 90 degrees) is horizontal; each edge is
    classed horizontal or vertical, consecutive edges of one class become one line at their
    length-weighted mean position, lines shorter than ``tolerance`` are merged into their neighbours,
    and consecutive lines are intersected; then rotated back. Holes get the same treatment (a hole that
    does not survive is kept as it was). None when the result is not a valid polygon or its area differs
    from ``polygon``'s by more than :data:`MAX_AREA_CHANGE`.
    """
    origin = polygon.centroid
    local = shapely.affinity.translate(polygon, -origin.x, -origin.y)  # rotation far from large coordinates
    rough = shapely.simplify(local, tolerance, preserve_topology=True)
    if not isinstance(rough, Polygon) or rough.is_empty:
        return None
    angle = _dominant_angle(np.asarray(rough.exterior.coords))
    shell = _square_ring(np.asarray(rough.exterior.coords), angle, tolerance)
    if shell is None:
        return None
    holes = []
    for ring, original in zip(rough.interiors, local.interiors, strict=True):
        squared = _square_ring(np.asarray(ring.coords), angle, tolerance)
        holes.append(squared if squared is not None else np.asarray(original.coords))
    result = shapely.affinity.translate(Polygon(shell, holes), origin.x, origin.y)
    if (
        not result.is_valid
        or result.is_empty
        or abs(result.area - polygon.area) > MAX_AREA_CHANGE * polygon.area
    ):
        return None
    return result


def _dominant_angle(coords: npt.NDArray[np.float64]) -> float:
    """Length-weighted circular mean of the edge directions modulo 90 degrees, in radians."""
    vectors = np.diff(coords, axis=0)
    lengths = np.hypot(vectors[:, 0], vectors[:, 1])
    directions = np.arctan2(vectors[:, 1], vectors[:, 0])
    return float(
        np.arctan2((lengths * np.sin(4 * directions)).sum(), (lengths * np.cos(4 * directions)).sum()) / 4
    )


def _square_ring(
    coords: npt.NDArray[np.float64], angle: float, tolerance: float
) -> npt.NDArray[np.float64] | None:
    """A closed ring's vertices with right angles in the frame rotated by ``angle``; None under 4 sides."""
    cos, sin = math.cos(angle), math.sin(angle)
    rotated = coords @ np.array([[cos, -sin], [sin, cos]])  # rows (x, y) -> frame where ``angle`` is 0
    lines = _merged_lines(list(_lines(rotated)), tolerance)
    if lines is None:
        return None
    corners = []
    for index, (horizontal, position, _) in enumerate(lines):
        _, following, _ = lines[(index + 1) % len(lines)]
        corners.append((following, position) if horizontal else (position, following))
    square = np.array([*corners, corners[0]], dtype=np.float64)
    back: npt.NDArray[np.float64] = square @ np.array([[cos, sin], [-sin, cos]])
    return back


def _lines(coords: npt.NDArray[np.float64]) -> Iterator[tuple[bool, float, float]]:
    """Each edge as ``(horizontal, position, length)``: position is y for horizontal edges, x otherwise."""
    for (x0, y0), (x1, y1) in itertools.pairwise(coords):
        length = math.hypot(x1 - x0, y1 - y0)
        if length == 0:
            continue
        horizontal = abs(x1 - x0) >= abs(y1 - y0)
        yield horizontal, (y0 + y1) / 2 if horizontal else (x0 + x1) / 2, length


def _merged_lines(
    lines: list[tuple[bool, float, float]], tolerance: float
) -> list[tuple[bool, float, float]] | None:
    """Alternating horizontal and vertical lines: runs of one kind joined, lines under ``tolerance`` gone."""
    lines = _joined(lines)
    while len(lines) > 4:
        shortest = min(range(len(lines)), key=lambda i: lines[i][2])
        if lines[shortest][2] >= tolerance:
            break
        del lines[shortest]  # its neighbours are now consecutive lines of one kind
        lines = _joined(lines[shortest:] + lines[:shortest])
    return lines if len(lines) >= 4 and len(lines) % 2 == 0 else None


def _joined(lines: list[tuple[bool, float, float]]) -> list[tuple[bool, float, float]]:
    """Consecutive lines of one kind (cyclically) as one, at their length-weighted mean position."""
    joined: list[tuple[bool, float, float]] = []
    for line in lines:
        if joined and joined[-1][0] == line[0]:
            joined[-1] = _weighted(joined[-1], line)
        else:
            joined.append(line)
    while len(joined) > 1 and joined[0][0] == joined[-1][0]:
        joined[0] = _weighted(joined.pop(), joined[0])
    return joined


def _weighted(a: tuple[bool, float, float], b: tuple[bool, float, float]) -> tuple[bool, float, float]:
    length = a[2] + b[2]
    return a[0], (a[1] * a[2] + b[1] * b[2]) / length, length
