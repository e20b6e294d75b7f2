"""Terminal summaries: rasters (``geolabel tiles``) and active-learning rounds (``geolabel status``)."""

from __future__ import annotations

from rich import box
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from geolabel.config import Config
from geolabel.errors import LabelStudioError
from geolabel.lsclient import LabelStudioClient
from georef.grid import crs_to_text
from georef.registry import RasterRecord, TileRegistry, TileStatus


def labelled_tiles(client: LabelStudioClient, project_ids: set[int]) -> set[str]:
    """Tile ids whose Label Studio task has at least one annotation."""
    labelled: set[str] = set()
    for project_id in project_ids:
        labelled.update(
            s.tile_id for s in client.tasks(project_id) if s.annotations > 0 and s.tile_id is not None
        )
    return labelled


def raster_table(config: Config, client: LabelStudioClient | None) -> tuple[Table, str | None]:
    """A table of imported rasters, and a warning when Label Studio could not be asked."""
    with TileRegistry(config.registry_path) as registry:
        rasters = registry.rasters()
        tile_status = {r.id: registry.status_counts(r.id) for r in rasters}
        tile_ids = {r.id: list(registry.iter_tile_ids(r.id)) for r in rasters}
    warning = None
    labelled: set[str] | None = None
    if client is None:
        warning = "labelled counts unavailable: no Label Studio API token (label_studio.token)"
    else:
        try:
            labelled = labelled_tiles(client, {r.project_id for r in rasters})
        except LabelStudioError as exc:
            warning = f"labelled counts unavailable: {exc}"
    table = Table(title=f"rasters in {config.registry_path}", box=box.SIMPLE_HEAD)
    for column in ("raster", "project", "CRS", "resolution", "size", "tiles", "tasks", "skipped", "labelled"):
        left = column in ("raster", "CRS", "resolution")
        table.add_column(column, justify="left" if left else "right")
    for raster in rasters:
        counts = tile_status[raster.id]
        done = "?" if labelled is None else str(sum(1 for t in tile_ids[raster.id] if t in labelled))
        table.add_row(
            raster.name + ("" if raster.status == "complete" else " (incomplete)"),
            str(raster.project_id),
            _crs_label(raster),
            _resolution(raster),
            f"{raster.grid.width}x{raster.grid.height}",
            str(sum(counts.values())),
            str(counts[TileStatus.IMPORTED]),
            str(counts[TileStatus.SKIPPED]),
            done,
        )
    return table, warning


def _crs_label(raster: RasterRecord) -> str:
    text = crs_to_text(raster.grid.crs)
    return text if text.startswith("EPSG:") else (raster.grid.crs.to_string()[:30] + "...")


def _resolution(raster: RasterRecord) -> str:
    x_res, y_res = raster.grid.resolution
    units = raster.grid.crs.linear_units if raster.grid.crs.is_projected else "deg"
    unit = {"metre": "m", "meter": "m"}.get(str(units), str(units))
    if abs(x_res - y_res) <= 1e-9 * max(x_res, y_res):
        return f"{x_res:.4g} {unit}"
    return f"{x_res:.4g} x {y_res:.4g} {unit}"


def rounds_table(config: Config) -> tuple[Table, list[str]]:
    """The project's rounds (newest last, numbered per project) and the dashboard's essentials under it."""
    from trainer.dashboard import collect, status_lines
    from trainer.legacy import adopt_legacy_stores

    adopt_legacy_stores(config)
    data = collect(config)
    table = Table(box=box.SIMPLE_HEAD, title=f"active-learning rounds of {config.project.name}")
    for column in (
        "round",
        "status",
        "started",
        "ended",
        "labelled tiles",
        "version",
        "val. tiles",
        "mIoU",
        "note",
    ):
        table.add_column(column, overflow="fold")  # a narrow terminal folds a cell, never cuts it
    errors = []
    for record in data.rounds:
        miou = record.metrics.get("miou")
        note = record.error or (f"{len(record.problems)} annotation problem(s)" if record.problems else "")
        score = "" if miou is None else f"{miou:.3f}"
        cells = (record.number, record.status, record.started, record.ended or "", record.labelled_tiles,
                 record.model_version or "", record.validation_tiles, score, note)  # fmt: skip
        table.add_row(*(Text(str(cell)) for cell in cells))  # Text: "[Errno 28]" is not markup to drop
        if record.error:
            line = f"Round {record.number} ({record.status}, {record.started}): {record.error}"
            errors.append(escape(line))
    return table, [*errors, *status_lines(data)]
