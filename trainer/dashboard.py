"""The coordinators' dashboard: rounds, learning curve, class scores, annotators, a map of the tiles.

Read-only. :func:`collect` reads the registry, the rounds record and the model
store (never Label Studio, so the page stays fast whatever Label Studio is
doing); the ``*_png`` functions draw one plot each with matplotlib; the map
(:mod:`trainer.dashboard_map`) shows every raster of the project over its own
imagery, rendered as web-mercator tiles by :mod:`importers.maptiles`.
:func:`dashboard_blueprint` serves it all under ``/dashboard`` in the ML
backend's Flask app, behind its HTTP basic auth; the page refreshes itself from
``/dashboard/data.json``. Every asset (Leaflet included) is served by the app.
"""

from __future__ import annotations

import importlib.util
import io
import math
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from flask import Blueprint, Response, abort, jsonify, send_from_directory
from markupsafe import escape

from geolabel.config import Config
from georef.registry import RasterRecord, TileRegistry, TileStatus
from importers.errors import RasterNotFoundError, RasterReadError
from importers.maptiles import empty_tile_png, render_map_tile
from trainer.agreement import StoredAgreement, TileAgreement, load_agreement, summarise
from trainer.contender import UNET
from trainer.dashboard_map import (
    STATE_COLOURS,
    UNCERTAINTY_STOPS,
    MapTile,
    TileLinks,
    map_source,
    raster_json,
    tiles_json,
)
from trainer.dashboard_throughput import AnnotatorDay, load_throughput
from trainer.rounds import LabelState, RoundRecord, RoundStatus, RoundStore, now
from trainer.versions import ModelManifest, ModelStore

if TYPE_CHECKING:
    from matplotlib.figure import Figure

METRICS = ("iou", "f1", "precision", "recall")
REFRESH_SECONDS = 30
THROUGHPUT_DAYS = 14
#: Tiles of lowest agreement the page lists.
LOWEST_SHOWN = 10
STATIC_DIR = Path(__file__).with_name("dashboard_static")
_PLOT_LOCK = threading.Lock()
__all__ = ["STATE_COLOURS", "Dashboard", "MapTile", "collect", "dashboard_blueprint"]


@dataclass(frozen=True)
class Dashboard:
    """Everything the page shows, read in one go."""

    project: str
    rounds: list[RoundRecord]
    active: ModelManifest | None
    tiles: list[MapTile]
    pending_changes: int
    threshold: int
    project_id: int | None = None  # Label Studio's id of the project (None before the first import)
    rasters: list[RasterRecord] = field(default_factory=list)
    label_studio_url: str = ""
    throughput: list[AnnotatorDay] = field(default_factory=list)  # as of the newest harvest
    agreement: StoredAgreement = field(default_factory=lambda: StoredAgreement("", []))  # as last measured

    @property
    def last_scored(self) -> RoundRecord | None:
        """The newest promoted round (the one whose scores and next batch are current)."""
        promoted = [r for r in self.rounds if r.status == RoundStatus.PROMOTED]
        return promoted[-1] if promoted else None


def collect(config: Config) -> Dashboard:
    """Read the dashboard's data for the configured project (empty lists before any import or round)."""
    models = ModelStore(config.models_dir)
    active_name = models.active_name() if config.models_dir.is_dir() else None
    active = models.manifest(active_name) if active_name else None
    empty = Dashboard(config.project.name, [], active, [], 0, config.trainer.threshold)
    if not config.registry_path.is_file():
        return empty
    with TileRegistry(config.registry_path) as registry, RoundStore(config.registry_path) as store:
        project_id = registry.project_id(config.project.name)
        if project_id is None:
            return empty
        rounds = store.rounds(project_id)
        rasters = registry.rasters(project_id)
        tiles = _map_tiles(registry, store, project_id, rounds, rasters)
        pending = registry.count_changed_annotations(project_id, store.harvested_upto(project_id))
    throughput = load_throughput(config.registry_path, project_id)
    agreement = load_agreement(config.registry_path, project_id)
    return Dashboard(config.project.name, rounds, active, tiles, pending, config.trainer.threshold,
                     project_id, rasters, config.label_studio.browser_url, throughput, agreement)  # fmt: skip


def _map_tiles(
    registry: TileRegistry,
    store: RoundStore,
    project_id: int,
    rounds: list[RoundRecord],
    rasters: list[RasterRecord],
) -> list[MapTile]:
    """The project's tiles as the newest promoted round left them, updated by annotations since."""
    promoted = [r for r in rounds if r.status == RoundStatus.PROMOTED]
    states = store.tile_states(promoted[-1].id) if promoted else {}
    batch = {e.tile_id for e in store.queue(promoted[-1].id)} if promoted else set()
    events = registry.annotation_events(project_id, store.harvested_upto(project_id))
    annotated = {e.task_id for e in events}
    raster_ids = {r.id for r in rasters}
    tiles = []
    for tile in (t for t in registry.tiles() if t.raster_id in raster_ids):
        known = states.get(tile.id)
        state = known.state if known else LabelState.UNLABELLED
        if tile.status == TileStatus.SKIPPED:
            state = LabelState.NO_DATA
        elif tile.task_id in annotated and state != LabelState.LABELLED:
            state = LabelState.ANNOTATED
        uncertainty = known.uncertainty if known and state == LabelState.UNLABELLED else None
        corners = tile.grid.corners_world().astype(np.float64)
        tiles.append(MapTile(tile.id, tile.raster_id, tile.task_id, tile.crs_text, corners, state,
                             uncertainty, tile.id in batch))  # fmt: skip
    return tiles


# plots ------------------------------------------------------------------------------------------


def _figure(width: float = 6.4, height: float = 4.0) -> Figure:
    from matplotlib.figure import Figure  # not pyplot: no global state, safe in server threads

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def _png(figure: Figure) -> bytes:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png")
    return buffer.getvalue()


def _nothing(figure: Figure, text: str) -> bytes:
    axes = figure.add_subplot()
    axes.axis("off")
    axes.text(0.5, 0.5, text, ha="center", va="center", fontsize=12, color="#555555", wrap=True)
    return _png(figure)


def learning_curve_png(data: Dashboard) -> bytes:
    """Validation mIoU of each finished round against its labelled tiles; promoted and kept marked."""
    from matplotlib.ticker import MaxNLocator

    figure = _figure()
    done = [r for r in data.rounds if r.status in (RoundStatus.PROMOTED, RoundStatus.KEPT)]
    points = [(r.labelled_tiles, r.metrics["miou"], r.status) for r in done if "miou" in r.metrics]
    if not points:
        return _nothing(figure, "no validated round yet")
    axes = figure.add_subplot()
    axes.plot([p[0] for p in points], [p[1] for p in points], color="#444444", linewidth=1, zorder=1)
    for status, marker, colour in (
        (RoundStatus.PROMOTED, "o", "#1b9e77"),
        (RoundStatus.KEPT, "x", "#d95f02"),
    ):
        chosen = [p for p in points if p[2] == status]
        if chosen:
            axes.scatter([p[0] for p in chosen], [p[1] for p in chosen], marker=marker, color=colour,
                         s=50, zorder=2, label=f"{status} ({len(chosen)})")  # fmt: skip
    axes.set(xlabel="labelled tiles", ylabel="validation mIoU (classes, no background)", ylim=(0, 1))
    axes.set_title("Learning curve (each round on its own spatial hold-out)")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_xlim(left=0)
    axes.grid(alpha=0.3)
    axes.legend(loc="lower right")
    return _png(figure)


def class_metrics_png(data: Dashboard) -> bytes:
    """IoU, F1, precision and recall of each class for the active version."""
    figure = _figure()
    if data.active is None or not data.active.metrics:
        return _nothing(figure, "no active model version yet")
    names = [c.name for c in data.active.classes]
    axes = figure.add_subplot()
    width = 0.8 / len(METRICS)
    for k, metric in enumerate(METRICS):
        values = [data.active.metrics.get(f"{name}_{metric}", math.nan) for name in names]
        axes.bar(np.arange(len(names)) + (k - 1.5) * width, values, width, label=metric)
    axes.set_xticks(range(len(names)), names)
    axes.set(ylim=(0, 1), ylabel="validation score")
    axes.set_title(f"Active version {data.active.version}")
    axes.grid(axis="y", alpha=0.3)
    axes.legend(loc="upper left", bbox_to_anchor=(1.0, 1.0), fontsize=8)
    return _png(figure)


def annotators_png(data: Dashboard) -> bytes:
    """Labelled tiles per annotator (Label Studio user id), as of the newest harvest."""
    figure = _figure(6.4, 3.0)
    harvested = [r for r in data.rounds if r.annotators]
    if not harvested:
        return _nothing(figure, "no annotation harvested yet")
    from matplotlib.ticker import MaxNLocator

    counts = sorted(harvested[-1].annotators.items(), key=lambda item: -item[1])[:30]
    axes = figure.add_subplot()
    axes.barh([f"user {who}" for who, _ in counts][::-1], [n for _, n in counts][::-1], color="#7570b3")
    axes.set_xlabel("labelled tiles")
    axes.xaxis.set_major_locator(MaxNLocator(integer=True))
    axes.set_title(f"Annotations per annotator (round {harvested[-1].number or harvested[-1].id})")
    axes.grid(axis="x", alpha=0.3)
    return _png(figure)


PLOTS: dict[str, Callable[[Dashboard], bytes]] = {
    "learning-curve": learning_curve_png,
    "class-metrics": class_metrics_png,
    "annotators": annotators_png,
}


# page -------------------------------------------------------------------------------------------


def status_lines(data: Dashboard) -> list[str]:
    """The essentials in plain text: active version and its class IoU, tiles by state, what is waiting."""
    last = data.last_scored
    active = data.active.version if data.active else "none yet (run: geolabel train --now)"
    counts: dict[str, int] = {}
    for tile in data.tiles:
        counts[tile.state] = counts.get(tile.state, 0) + 1
    summary = ", ".join(f"{n} {state}" for state, n in sorted(counts.items())) or "no tile yet"
    lines = [f"Active model version: {active}"]
    if data.active is not None and data.active.metrics:
        scores = (
            f"{c.name} {data.active.metrics.get(f'{c.name}_iou', math.nan):.3f}" for c in data.active.classes
        )
        lines.append("Validation IoU of the active version: " + ", ".join(scores))
    served = next(
        (r for r in reversed(data.rounds) if data.active and r.model_version == data.active.version), None
    )
    if served is not None and served.contenders:
        lines.append(f"Pre-annotations from: {winner_text(served)}")
    return [
        *lines,
        agreement_line(data.agreement),
        f"Tiles: {summary}",
        f"Annotation changes since the last round: {data.pending_changes} "
        f"(a round starts at {data.threshold})",
        f"Next batch: {sum(t.next_batch for t in data.tiles)} tiles"
        + (f" (round {last.number or last.id})" if last else ""),
    ]


def agreement_line(stored: StoredAgreement) -> str:
    """Agreement between annotators in one line: tiles compared, their mean, the lowest, when measured."""
    summary = summarise(stored.tiles, lowest=1)
    if not stored.measured_at:
        return "Agreement between annotators: not measured yet (run geolabel review)"
    if not summary.compared:
        return f"Agreement between annotators: no tile labelled by two annotators yet ({stored.measured_at})"
    lowest = summary.lowest[0]
    where = f"task {lowest.task_id}, tile {lowest.tile_id}"
    return (
        f"Agreement between annotators: {summary.compared} tiles compared, mean "
        f"{summary.mean_agreement:.3f}, lowest {lowest.agreement:.3f} ({where}); as of {stored.measured_at}"
    )


def agreement_section(data: Dashboard) -> str:
    """The agreement section: mean IoU per class over tiles with two annotators or more, lowest tiles."""
    summary = summarise(data.agreement.tiles, lowest=LOWEST_SHOWN)
    if not summary.compared:
        return f"<p>{escape(agreement_line(data.agreement))}.</p>"
    names = list(summary.class_iou)
    intro = (
        f"<p>{summary.compared} tiles labelled by two annotators or more; mean agreement "
        f"{summary.mean_agreement:.3f} (mean IoU over the classes drawn, background left out); "
        f"as of {escape(data.agreement.measured_at)}.</p>"
    )
    head = "".join(f"<th>{escape(n)}</th>" for n in names)
    means = "".join(f"<td>{_score(summary.class_iou[n])}</td>" for n in names)
    classes = (
        f'<table id="agreement-classes"><thead><tr><th></th>{head}</tr></thead>'
        f"<tbody><tr><th>mean IoU</th>{means}</tr></tbody></table>"
    )
    links = TileLinks(data.label_studio_url, data.project_id)
    rows = "".join(_lowest_row(t, names, links) for t in summary.lowest)
    lowest_head = "".join(
        f"<th>{escape(h)}</th>" for h in ("task", "tile", "agreement", *names, "annotators")
    )
    lowest = (
        f'<table id="agreement-lowest"><thead><tr>{lowest_head}</tr></thead><tbody>{rows}</tbody></table>'
    )
    return f"{intro}{classes}<h3>Lowest agreement</h3>{lowest}"


def _lowest_row(tile: TileAgreement, names: list[str], links: TileLinks) -> str:
    url = links.task_url(tile.task_id)
    task = f'<a href="{escape(url)}">{tile.task_id}</a>' if url else str(tile.task_id)
    cells = [escape(tile.tile_id), _score(tile.agreement), *(_score(tile.class_iou.get(n)) for n in names),
             escape(", ".join(tile.annotators))]  # fmt: skip
    return f"<tr><td>{task}</td>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>"


def page_html(data: Dashboard) -> str:
    """The dashboard page: status lines, the map, the rounds table, throughput and the plots.

    The page fills itself again from ``dashboard/data.json`` every :data:`REFRESH_SECONDS`
    (the map keeps its pan and zoom); every asset comes from this app.
    """
    plots = "".join(
        f'<figure><img src="dashboard/{name}.png" alt="{escape(name)}"></figure>' for name in PLOTS
    )
    sections = page_sections(data)
    return _PAGE.format(
        project=escape(data.project),
        refresh=REFRESH_SECONDS,
        plots=plots,
        legend=_legend(),
        **sections,
    )


def page_sections(data: Dashboard) -> dict[str, str]:
    """The page's parts that change, as HTML: what ``data.json`` carries for the page to swap in."""
    return {
        "status": "".join(f"<li>{escape(line)}</li>" for line in status_lines(data)),
        "rasters": _rasters_table(data),
        "rounds": _rounds_table(data.rounds),
        "throughput": throughput_table(data.throughput),
        "agreement": agreement_section(data),
    }


def map_json(data: Dashboard) -> dict[str, Any]:
    """What the page refreshes from: the changing sections (HTML) and the map's rasters and tiles."""
    counts: dict[int, int] = {}
    for tile in data.tiles:
        counts[tile.raster_id] = counts.get(tile.raster_id, 0) + 1
    links = TileLinks(data.label_studio_url, data.project_id)
    return {
        "project": data.project,
        "generated": now(),
        "sections": page_sections(data),
        "rasters": [raster_json(r, counts.get(r.id, 0)) for r in data.rasters],
        "tiles": tiles_json(data.tiles, links),
    }


def _rasters_table(data: Dashboard) -> str:
    if not data.rasters:
        return "<p>No raster imported yet: run geolabel import.</p>"
    counts: dict[int, int] = {}
    for tile in data.tiles:
        counts[tile.raster_id] = counts.get(tile.raster_id, 0) + 1
    rows = []
    for raster in data.rasters:
        entry = raster_json(raster, counts.get(raster.id, 0))
        note = entry["problem"] or "on the map"
        cells = (raster.name, entry["crs"], entry["tiles"], raster.path, note)
        row = "".join(f"<td>{escape(str(c))}</td>" for c in cells)
        shown = "problem" if entry["problem"] else "shown"
        rows.append(f'<tr class="{shown}" data-raster="{raster.id}" title="click: zoom to it">{row}</tr>')
    head = "".join(f"<th>{h}</th>" for h in ("raster", "CRS", "tiles", "file", "map"))
    return f'<table id="raster-list"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def throughput_table(days: list[AnnotatorDay], columns: int = THROUGHPUT_DAYS) -> str:
    """Tiles per annotator per day (UTC), the newest ``columns`` days with annotations, and totals."""
    if not days:
        return "<p>No annotation harvested yet: the counts come with each round's harvest.</p>"
    shown = sorted({d.day for d in days}, reverse=True)[:columns]
    counts = {(d.annotator, d.day): d.tiles for d in days}
    totals: dict[str, int] = {}
    for entry in days:
        totals[entry.annotator] = totals.get(entry.annotator, 0) + entry.tiles
    head = "".join(f"<th>{escape(h)}</th>" for h in ("annotator", *shown, "all days"))
    rows = []
    for who in sorted(totals, key=lambda name: (-totals[name], name)):
        cells = (who, *(counts.get((who, day), "") for day in shown), totals[who])
        rows.append("<tr>" + "".join(f"<td>{escape(str(c))}</td>" for c in cells) + "</tr>")
    return f'<table id="throughput"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'


def _legend() -> str:
    states = "".join(
        f'<span class="swatch" style="border-color:{c};background:{c}66"></span>{escape(s)} '
        for s, c in STATE_COLOURS.items()
        if s != LabelState.UNLABELLED
    )
    ramp = ", ".join(UNCERTAINTY_STOPS)
    return (
        f"{states}<span>unlabelled, by uncertainty: low</span>"
        f'<span class="ramp" style="background:linear-gradient(to right, {ramp})"></span><span>high</span>'
        '<span class="swatch next"></span>next batch (dashed); click a tile to open its task'
    )


def _rounds_table(rounds: list[RoundRecord]) -> str:
    if not rounds:
        return "<p>No round yet.</p>"
    head = ("round", "trigger", "status", "started", "ended", "labelled tiles", "version", "started from",
            "val. tiles", "mIoU", "previous mIoU", "winner", "problems", "error")  # fmt: skip
    rows = []
    for r in reversed(rounds):
        cells = (r.number or r.id, r.trigger, r.status, r.started, r.ended or "", r.labelled_tiles,
                 r.model_version or "", r.origin or "", r.validation_tiles, _score(r.metrics.get("miou")),
                 _score(r.previous_metrics.get("miou")), winner_text(r), len(r.problems),
                 r.error or "")  # fmt: skip
        row = "".join(f"<td>{escape(str(c))}</td>" for c in cells)
        rows.append(f'<tr class="{escape(str(r.status))}">{row}</tr>')
    header = "".join(f"<th>{h}</th>" for h in head)
    body = "".join(rows)
    return f'<table id="rounds"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>'


def winner_text(record: RoundRecord) -> str:
    """Which model validated best in the round, with every contender's mean IoU (empty: none competed).

    For example ``sam_head (sam_head 0.612, unet 0.540)``.
    """
    if not record.contenders:
        return ""
    scores = {name: result.get("miou") for name, result in record.contenders.items()}
    scores[UNET] = record.metrics.get("miou")
    shown = ", ".join(
        f"{name} {_score(v if isinstance(v, float) else None) or 'n/a'}" for name, v in scores.items()
    )
    return f"{record.winner or UNET} ({shown})"


def _score(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.3f}"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>geolabel: {project}</title>
<link rel="icon" href="data:,">
<link rel="stylesheet" href="dashboard/static/leaflet/leaflet.css">
<link rel="stylesheet" href="dashboard/static/dashboard.css">
</head>
<body data-refresh="{refresh}">
<header><h1>Active learning: {project}</h1><p id="updated" role="status"></p></header>
<ul id="status">{status}</ul>
<h2>Map</h2>
<div id="map" aria-label="map of the project's tiles over their imagery"></div>
<p id="legend">{legend}</p>
<div id="rasters">{rasters}</div>
<h2>Rounds</h2><div id="rounds-section">{rounds}</div>
<h2>Annotator throughput (tiles per annotator per day, UTC; as of the newest round's harvest)</h2>
<div id="throughput-section">{throughput}</div>
<h2>Agreement between annotators (per-class IoU of tiles labelled twice or more)</h2>
<div id="agreement">{agreement}</div>
<h2>Plots</h2><div class="plots">{plots}</div>
<script src="dashboard/static/leaflet/leaflet.js"></script>
<script src="dashboard/static/dashboard.js"></script>
</body></html>"""


# Flask ------------------------------------------------------------------------------------------


def dashboard_blueprint(config: Config) -> Blueprint:
    """The dashboard's routes; the app's basic auth covers every one of them.

    ``GET /dashboard`` (the page), ``/dashboard/data.json`` (what it refreshes from),
    ``/dashboard/<plot>.png``, ``/dashboard/tiles/<raster>/<z>/<x>/<y>.png`` (the imagery) and
    ``/dashboard/static/...`` (the page's script and style, and Leaflet's).
    """
    blueprint = Blueprint("dashboard", __name__)

    @blueprint.get("/dashboard")
    def page() -> Response:
        return _no_store(Response(page_html(collect(config)), mimetype="text/html"))

    @blueprint.get("/dashboard/data.json")
    def data() -> Response:
        return _no_store(jsonify(map_json(collect(config))))

    @blueprint.get("/dashboard/<name>.png")
    def plot(name: str) -> Response:
        draw = PLOTS.get(name)
        if draw is None:
            abort(404, f"no plot {name!r}; the plots are {', '.join(PLOTS)}")
        data = collect(config)
        with _PLOT_LOCK:  # matplotlib's first import is not thread-safe; drawing one plot at a time is
            png = draw(data)
        return _no_store(Response(png, mimetype="image/png"))

    @blueprint.get("/dashboard/tiles/<int:raster_id>/<int:z>/<int:x>/<int:y>.png")
    def map_tile(raster_id: int, z: int, x: int, y: int) -> Response:
        response = Response(map_tile_png(config, raster_id, z, x, y), mimetype="image/png")
        response.headers["Cache-Control"] = "private, max-age=300"
        return response

    @blueprint.get("/dashboard/static/leaflet/<path:filename>")
    def leaflet(filename: str) -> Response:
        return send_from_directory(leaflet_dir(), filename, max_age=3600)

    @blueprint.get("/dashboard/static/<path:filename>")
    def static(filename: str) -> Response:
        return send_from_directory(STATIC_DIR, filename, max_age=60)

    return blueprint


def map_tile_png(config: Config, raster_id: int, z: int, x: int, y: int) -> bytes:
    """Web-mercator tile ``z/x/y`` of raster ``raster_id`` of the configured project (transparent outside it).

    Raises:
        NotFound: (HTTP 404) for a raster of another project, an unknown one, a file that is gone
            or a tile that does not exist at that zoom.
        InternalServerError: (HTTP 500) when GDAL cannot read the file, with the reason.
    """
    if not config.registry_path.is_file():
        abort(404, "no raster imported yet")
    with TileRegistry(config.registry_path) as registry:
        project_id = registry.project_id(config.project.name)
        raster = next((r for r in registry.rasters() if r.id == raster_id), None)
    if raster is None or project_id is None or raster.project_id != project_id:
        abort(404, f"no raster {raster_id} in project {config.project.name!r}")
    try:
        png = render_map_tile(map_source(raster), x, y, z)
    except ValueError as exc:
        abort(404, str(exc))
    except RasterNotFoundError as exc:
        abort(404, str(exc))
    except RasterReadError as exc:
        abort(500, str(exc))
    return png if png is not None else empty_tile_png()


def leaflet_dir() -> Path:
    """The folder of Leaflet's script, style and images, from the ``django-js-lib-leaflet`` package.

    Raises:
        InternalServerError: (HTTP 500) when the package is not installed, saying how to install it.
    """
    spec = importlib.util.find_spec("js_lib_leaflet")
    if spec is None or not spec.submodule_search_locations:
        abort(500, "the map library is missing: pip install django-js-lib-leaflet (a geolabel dependency)")
    return Path(next(iter(spec.submodule_search_locations))) / "static" / "js_lib_leaflet"


def _no_store(response: Response) -> Response:
    response.headers["Cache-Control"] = "no-store"
    return response
