"""The coordinators' dashboard: rounds, learning curve, class scores, annotators, a map of the tiles.

Read-only. :func:`collect` reads the registry, the rounds record and the model
store (never Label Studio, so the page stays fast whatever Label Studio is
doing); the ``*_png`` functions draw one plot each with matplotlib;
:func:`dashboard_blueprint` serves them under ``/dashboard`` in the ML backend's
Flask app, behind its HTTP basic auth.
"""

from __future__ import annotations

import io
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
from flask import Blueprint, Response, abort
from markupsafe import escape

from geolabel.config import Config
from georef.registry import TileRegistry, TileStatus
from trainer.rounds import RoundRecord, RoundStatus, RoundStore
from trainer.versions import ModelManifest, ModelStore

if TYPE_CHECKING:
    from matplotlib.figure import Figure

#: Map colours of the tile states; unlabelled tiles are coloured by uncertainty instead.
STATE_COLOURS = {"labelled": "#1b9e77", "skipped": "#9e9e9e", "nodata": "#e0e0e0", "annotated": "#66c2a5"}
METRICS = ("iou", "f1", "precision", "recall")


@dataclass(frozen=True)
class MapTile:
    """A tile on the map: outline in its raster's CRS, state, uncertainty, whether it is in the next batch."""

    tile_id: str
    crs: str
    corners: npt.NDArray[np.float64]  # (4, 2) world coordinates, clockwise from top-left
    state: str  # labelled, annotated (since the last round), skipped, nodata, unlabelled
    uncertainty: float | None
    next_batch: bool


@dataclass(frozen=True)
class Dashboard:
    """Everything the page shows, read in one go."""

    project: str
    rounds: list[RoundRecord]
    active: ModelManifest | None
    tiles: list[MapTile]
    pending_changes: int
    threshold: int

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
        tiles = _map_tiles(registry, store, project_id, rounds)
        pending = registry.count_changed_annotations(project_id, store.harvested_upto(project_id))
    return Dashboard(config.project.name, rounds, active, tiles, pending, config.trainer.threshold)


def _map_tiles(
    registry: TileRegistry, store: RoundStore, project_id: int, rounds: list[RoundRecord]
) -> list[MapTile]:
    """The project's tiles as the newest promoted round left them, updated by annotations since."""
    promoted = [r for r in rounds if r.status == RoundStatus.PROMOTED]
    states = store.tile_states(promoted[-1].id) if promoted else {}
    batch = {e.tile_id for e in store.queue(promoted[-1].id)} if promoted else set()
    events = registry.annotation_events(project_id, store.harvested_upto(project_id))
    annotated = {e.task_id for e in events}
    rasters = {r.id for r in registry.rasters() if r.project_id == project_id}
    tiles = []
    for tile in (t for t in registry.tiles() if t.raster_id in rasters):
        known = states.get(tile.id)
        state = known.state if known else "unlabelled"
        if tile.status == TileStatus.SKIPPED:
            state = "nodata"
        elif tile.task_id in annotated and state != "labelled":
            state = "annotated"
        uncertainty = known.uncertainty if known and state == "unlabelled" else None
        corners = tile.grid.corners_world().astype(np.float64)
        tiles.append(MapTile(tile.id, tile.crs_text, corners, state, uncertainty, tile.id in batch))
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
    axes.set_title(f"Annotations per annotator (round {harvested[-1].id})")
    axes.grid(axis="x", alpha=0.3)
    return _png(figure)


def tile_map_png(data: Dashboard) -> bytes:
    """Tile footprints by state, unlabelled ones coloured by uncertainty; the next batch outlined."""
    from matplotlib import colormaps
    from matplotlib.cm import ScalarMappable
    from matplotlib.collections import PolyCollection
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch

    figure = _figure(8.0, 6.0)
    if not data.tiles:
        return _nothing(figure, "no tile imported yet")
    crs = max({t.crs for t in data.tiles}, key=lambda c: sum(t.crs == c for t in data.tiles))
    tiles = [t for t in data.tiles if t.crs == crs]  # one map per CRS would need reprojection: the main one
    axes = figure.add_subplot()
    scale, cmap = Normalize(0, 1), colormaps["magma_r"]
    colours = [
        cmap(scale(t.uncertainty)) if t.uncertainty is not None else STATE_COLOURS.get(t.state, "#ffffff")
        for t in tiles
    ]
    axes.add_collection(PolyCollection([t.corners for t in tiles], facecolors=colours, edgecolors="#ffffff",
                                       linewidths=0.3))  # fmt: skip
    batch = [t.corners for t in tiles if t.next_batch]
    if batch:
        axes.add_collection(PolyCollection(batch, facecolors="none", edgecolors="#00bfff", linewidths=1.8))
    axes.autoscale_view()
    axes.set_aspect("equal")
    axes.set_title(f"Tiles ({crs}): colour = uncertainty of unlabelled tiles; blue outline = next batch")
    axes.tick_params(labelsize=7)
    axes.ticklabel_format(useOffset=False, style="plain")
    figure.colorbar(ScalarMappable(norm=scale, cmap=cmap), ax=axes, label="uncertainty", shrink=0.7)
    handles = [Patch(facecolor=colour, label=state) for state, colour in STATE_COLOURS.items()]
    axes.legend(handles=handles, loc="upper left", bbox_to_anchor=(0, -0.08), ncols=4, fontsize=8)
    return _png(figure)


PLOTS: dict[str, Callable[[Dashboard], bytes]] = {
    "learning-curve": learning_curve_png,
    "class-metrics": class_metrics_png,
    "annotators": annotators_png,
    "tiles": tile_map_png,
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
    return [
        *lines,
        f"Tiles: {summary}",
        f"Annotation changes since the last round: {data.pending_changes} "
        f"(a round starts at {data.threshold})",
        f"Next batch: {sum(t.next_batch for t in data.tiles)} tiles"
        + (f" (round {last.id})" if last else ""),
    ]


def page_html(data: Dashboard) -> str:
    """The dashboard page: status lines, the rounds table and the plots (served as PNG routes)."""
    plots = "".join(
        f'<figure><img src="dashboard/{name}.png" alt="{escape(name)}"></figure>' for name in PLOTS
    )
    return _PAGE.format(
        project=escape(data.project),
        lines="".join(f"<li>{escape(line)}</li>" for line in status_lines(data)),
        rounds=_rounds_table(data.rounds),
        plots=plots,
    )


def _rounds_table(rounds: list[RoundRecord]) -> str:
    if not rounds:
        return "<p>No round yet.</p>"
    head = ("round", "trigger", "status", "started", "ended", "labelled tiles", "version", "val. tiles",
            "mIoU", "previous mIoU", "problems", "error")  # fmt: skip
    rows = []
    for r in reversed(rounds):
        cells = (r.id, r.trigger, r.status, r.started, r.ended or "", r.labelled_tiles, r.model_version or "",
                 r.validation_tiles, _score(r.metrics.get("miou")), _score(r.previous_metrics.get("miou")),
                 len(r.problems), r.error or "")  # fmt: skip
        row = "".join(f"<td>{escape(str(c))}</td>" for c in cells)
        rows.append(f'<tr class="{escape(str(r.status))}">{row}</tr>')
    header = "".join(f"<th>{h}</th>" for h in head)
    body = "".join(rows)
    return f'<table id="rounds"><thead><tr>{header}</tr></thead><tbody>{body}</tbody></table>'


def _score(value: float | None) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.3f}"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>geolabel: {project}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 1.5em; color: #222; }}
table {{ border-collapse: collapse; font-size: 0.85em; }}
th, td {{ border-bottom: 1px solid #ddd; padding: 0.3em 0.6em; text-align: left; }}
tr.promoted td:nth-child(3) {{ color: #1b9e77; }} tr.kept td:nth-child(3) {{ color: #d95f02; }}
tr.failed td:nth-child(3), tr.failed td:last-child {{ color: #c62828; }}
.plots {{ display: flex; flex-wrap: wrap; gap: 1em; }} figure {{ margin: 0; }}
</style></head>
<body><h1>Active learning: {project}</h1>
<ul id="status">{lines}</ul>
<h2>Rounds</h2>{rounds}
<h2>Plots</h2><div class="plots">{plots}</div>
</body></html>"""


# Flask ------------------------------------------------------------------------------------------


def dashboard_blueprint(config: Config) -> Blueprint:
    """``GET /dashboard`` (the page) and ``GET /dashboard/<plot>.png``; the app's auth covers both."""
    blueprint = Blueprint("dashboard", __name__)

    @blueprint.get("/dashboard")
    def page() -> Response:
        return Response(page_html(collect(config)), mimetype="text/html")

    @blueprint.get("/dashboard/<name>.png")
    def plot(name: str) -> Response:
        draw = PLOTS.get(name)
        if draw is None:
            abort(404)
        response = Response(draw(collect(config)), mimetype="image/png")
        response.headers["Cache-Control"] = "no-store"
        return response

    return blueprint
