"""The ``geolabel`` commands that exchange data with GIS teams.

``export``, ``import-labels``, ``import-predictions``, and ``review`` (agreement between annotators).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import click

from geolabel.clikit import (
    announce,
    console,
    err_console,
    handle_errors,
    has_registry,
    ls_client,
    progress_bar,
    project_config,
    project_option,
    scheduler_option,
)
from geolabel.config import Config
from georef.errors import GeorefError

if TYPE_CHECKING:  # heavy modules are imported by the commands that need them
    from exporters.vectors import VectorOptions
    from trainer.agreement import ReviewReport


@click.command(name="import-labels")
@click.argument("file", type=click.Path(path_type=Path))
@click.option("--layer", help="Layer to read (required when the file has several).")
@click.option("--class-field", help="Attribute holding each feature's class (a catalogue name or id).")
@click.option("--class-name", help="The class of every feature, when the file has no class field.")
@click.option(
    "--as",
    "as_",
    type=click.Choice(["predictions", "annotations"]),
    default="predictions",
    show_default=True,
    help="Pre-annotations to correct, or annotations to review.",
)
@click.option("--model-version", help="Model version name of the predictions (default import-labels:<file>).")
@click.option("--crs", "file_crs", help="CRS of a file that records none, e.g. EPSG:2154.")
@project_option
@click.pass_context
@handle_errors
def import_labels_command(
    ctx: click.Context,
    file: Path,
    layer: str | None,
    class_field: str | None,
    class_name: str | None,
    as_: str,
    model_version: str | None,
    file_crs: str | None,
    project: str | None,
) -> None:
    """Put existing vector labels (GeoPackage, GeoJSON, Shapefile) on the project's tasks, placed exactly."""
    from importers.existing_labels import LabelImportOptions, import_labels

    config = project_config(ctx, project)
    options = LabelImportOptions(file, layer, class_field, class_name, as_annotations=as_ == "annotations",
                                 model_version=model_version, crs=file_crs)  # fmt: skip
    with progress_bar() as bar:
        report = import_labels(config, ls_client(config), options, bar)
    for line in report.lines():
        console.print(line, highlight=False)


@click.command(name="import-predictions")
@click.argument("raster", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--classes",
    help="Class of each band, in band order, comma-separated (background allowed; names not in the "
    "project's classes are summed into background). Default: the band descriptions.",
)
@click.option("--version", "version", help="Name its predictions carry (default: import-<file stem>).")
@project_option
@scheduler_option
@click.pass_context
@handle_errors
def import_predictions(
    ctx: click.Context,
    raster: Path,
    classes: str | None,
    version: str | None,
    project: str | None,
    scheduler: str | None,
) -> None:
    """Import a probability raster (one band per class) as pre-annotations and the queue's order.

    Resumable: after an interruption run it again; a rerun replaces its predictions in Label Studio.
    """
    from trainer.external import ProbabilityImport, import_probabilities, split_class_names

    config = project_config(ctx, project, scheduler)
    if not has_registry(config):
        return
    options = ProbabilityImport(raster, split_class_names(classes) if classes else (), version)
    with progress_bar() as bar:
        report = import_probabilities(config, ls_client(config), options, bar)
    console.print(
        f"{config.project.name}: {report.version}: {report.resampled} tiles resampled, {report.already} "
        f"already stored, {report.uncovered} not covered, of {report.tiles}; {report.pushed} predictions "
        f"pushed ({report.replaced} replaced)",
        highlight=False,
    )
    if report.queue_taken:
        head = ", ".join(
            f"task {q.task_id} ({q.score:.3f})" if q.score is not None else f"task {q.task_id}"
            for q in report.queue_head
        )
        console.print(f"Label Studio now serves the least confident tile first: {head}", highlight=False)
    for note in report.notes:
        err_console.print(f"[yellow]note:[/] {note}", highlight=False)


@click.command()
@click.option(
    "--lowest", "count", type=click.IntRange(min=1), help="Send the N tiles of lowest agreement (default 20)."
)
@click.option("--below", type=click.FloatRange(0, 1), help="Send the tiles whose agreement is below this.")
@click.option(
    "--csv", "csv_path", type=click.Path(dir_okay=False, path_type=Path), help="Write the review list as CSV."
)
@click.option("--dry-run", is_flag=True, help="Measure and list the tiles; change nothing in Label Studio.")
@project_option
@click.pass_context
@handle_errors
def review(
    ctx: click.Context,
    count: int | None,
    below: float | None,
    csv_path: Path | None,
    dry_run: bool,
    project: str | None,
) -> None:
    """Measure agreement between annotators; send the tiles of lowest agreement back for another annotator."""
    from trainer.agreement import review as review_tiles
    from trainer.agreement import write_review_csv

    config = project_config(ctx, project)
    if not has_registry(config):
        return
    if count is None and below is None:
        count = 20
    report = review_tiles(config, ls_client(config), count, below, send=not dry_run)
    print_review(report)
    if csv_path is not None:
        write_review_csv(csv_path, report.rows, report.measured.class_names)
        console.print(f"wrote {len(report.rows)} tiles to {csv_path}", highlight=False)


def print_review(report: ReviewReport) -> None:
    """The measure, the tiles chosen (lowest first) and where they went."""
    from geolabel.lsclient import REVIEW_VIEW_TITLE
    from trainer.agreement import summarise

    summary = summarise(report.measured.measured.tiles)
    mean = "-" if summary.compared == 0 else f"{summary.mean_agreement:.3f}"
    console.print(
        f"{summary.compared} tiles labelled by two annotators or more; mean agreement {mean}", highlight=False
    )
    for row in report.rows:
        line = f"  task {row['task_id']}  agreement {row['agreement']}  tile {row['tile_id']}"
        console.print(line, highlight=False)
    if report.sent is not None:
        console.print(
            f"{len(report.chosen)} tiles back in the labelling queue (served first, to an annotator who has "
            f"not labelled them); Data Manager tab {REVIEW_VIEW_TITLE!r}",
            highlight=False,
        )
    elif report.chosen:
        console.print("dry run: Label Studio left unchanged")
    for problem in report.measured.measured.problems:
        err_console.print(f"[yellow]not compared:[/] {problem}", highlight=False)


def _parse_what(_ctx: click.Context, _param: click.Parameter, value: str | None) -> tuple[str, ...] | None:
    if not value:
        return None
    from exporters.project import WHAT

    parts = tuple(dict.fromkeys(v.strip() for v in value.split(",") if v.strip()))
    unknown = [p for p in parts if p not in WHAT]
    if unknown or not parts:
        raise click.BadParameter(
            f"unknown part {', '.join(unknown) or '(none)'}; choose from {','.join(WHAT)}"
        )
    return parts


def _parse_crs(_ctx: click.Context, _param: click.Parameter, value: str | None) -> object:
    if not value:
        return None
    from georef.grid import crs_from_text

    try:
        return crs_from_text(value)
    except GeorefError:
        raise click.BadParameter(f"{value!r} is not a CRS; give e.g. EPSG:2154 or EPSG:4326") from None


@click.command()
@click.option(
    "--out", required=True, type=click.Path(file_okay=False, path_type=Path), help="Folder to write."
)
@click.option("--crs", callback=_parse_crs, help="Output CRS, e.g. EPSG:2154 (default: the rasters' own).")
@click.option(
    "--what", callback=_parse_what, help="Parts to write: labels,predictions,tiles (default: all that exist)."
)
@click.option(
    "--overwrite", is_flag=True, help="Replace --out if it exists (only once the new export is complete)."
)
@click.option("--version", "version", help="Model version whose predictions to export (default: active).")
@click.option("--clip-to-valid", is_flag=True, help="Cut labels to the pixels holding image data.")
@click.option(
    "--min-area", type=click.FloatRange(min=0), help="predictions.gpkg: smallest polygon (export.min_area)."
)
@click.option(
    "--simplify", type=click.FloatRange(min=0), help="predictions.gpkg: tolerance (export.simplify)."
)
@click.option(
    "--regularize", help="predictions.gpkg: classes given right angles, comma-separated (export.regularize)."
)
@project_option
@scheduler_option
@click.pass_context
@handle_errors
def export(
    ctx: click.Context,
    out: Path,
    crs: Any,
    what: tuple[str, ...] | None,
    overwrite: bool,
    version: str | None,
    clip_to_valid: bool,
    min_area: float | None,
    simplify: float | None,
    regularize: str | None,
    project: str | None,
    scheduler: str | None,
) -> None:
    """Write a project's labels (GeoPackage), predictions (COG) and tile map, styled for QGIS, to --out."""
    from exporters.project import WHAT, ExportOptions, export_project

    config = project_config(ctx, project, scheduler)
    options = ExportOptions(out, crs, what or WHAT, explicit=what is not None, overwrite=overwrite,
                            workers=config.import_.workers, announce=announce, version=version,
                            clip_to_valid=clip_to_valid,
                            vectors=_vector_options(config, min_area, simplify, regularize))  # fmt: skip
    client = ls_client(config)
    client.check()
    with progress_bar() as bar:
        report = export_project(config, client, options, bar)
    counts = ", ".join(f"{k} {v}" for k, v in report.counts.items())
    console.print(f"wrote {report.out} ({report.crs}): {', '.join(report.files)}", highlight=False)
    console.print(f"counts: {counts}", highlight=False)
    for note in report.notes:
        console.print(f"note: {note}", highlight=False)
    for problem in report.problems:
        err_console.print(f"[yellow]not exported or repaired:[/] {problem}", highlight=False)


def _vector_options(
    config: Config, min_area: float | None, simplify: float | None, regularize: str | None
) -> VectorOptions:
    """``predictions.gpkg``'s shaping: the ``[export]`` section, overridden by the command's options."""
    from exporters.vectors import VectorOptions

    section = config.export
    classes = (
        section.regularize if regularize is None else [c.strip() for c in regularize.split(",") if c.strip()]
    )
    return VectorOptions(section.min_area if min_area is None else min_area,
                         section.simplify if simplify is None else simplify, frozenset(classes))  # fmt: skip
