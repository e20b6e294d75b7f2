"""The ``geolabel`` command line.

Domain logic lives in :mod:`importers`, :mod:`trainer`, :mod:`exporters` and :mod:`georef`; this module
parses options and shows progress. What every command shares (errors to exit codes, progress bars,
common options) is in :mod:`geolabel.clikit`; the commands that exchange data with GIS teams are in
:mod:`geolabel.cli_gis`.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import click
from rich.console import Console

from geolabel import cli_gis
from geolabel.clikit import (
    announce,
    config_of,
    console,
    err_console,
    exit_code,
    handle_errors,
    has_registry,
    ls_client,
    progress_bar,
    project_config,
    project_option,
    scheduler_option,
)
from geolabel.config import CONFIG_NAME, DEFAULT_CONFIG, Config, load_config
from geolabel.errors import ConfigError, LabelStudioError
from importers.errors import ImportFailedError

if TYPE_CHECKING:  # heavy modules are imported by the commands that need them
    from geolabel.lsclient import LabelStudioClient
    from georef.registry import TileRegistry
    from importers.forget import ForgetReport
    from importers.pipeline import ImportOptions, ImportReport


def import_options(config: Config, project: str | None, bands: Sequence[int] | None) -> ImportOptions:
    """Import settings from the config file and command-line overrides."""
    from importers.pipeline import ImportOptions

    return ImportOptions(
        project=project or config.project.name,
        classes=config.classes,
        data_dir=config.data_dir,
        document_root=config.document_root,
        tile_size=config.tiling.size,
        overlap=config.tiling.overlap,
        bands=list(bands) if bands and len(bands) in (1, 3) else (config.display.bands or None),
        input_bands=list(bands) if bands else None,
        stretch=config.display.stretch,
        percentiles=config.display.percentiles,
        workers=config.import_.workers,
        sparse=config.trainer.labelling == "sparse",
    )


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=CONFIG_NAME,
    envvar="GEOLABEL_CONFIG",
    show_default=True,
    help="Project config file (env GEOLABEL_CONFIG).",
)
@click.version_option(package_name="geolabel")
@click.pass_context
def cli(ctx: click.Context, config_path: Path) -> None:
    """Label georeferenced imagery in Label Studio, keeping every tile's place on Earth."""
    ctx.ensure_object(dict)
    ctx.obj["config_path"] = config_path
    ctx.obj["config_loader"] = functools.cache(lambda: load_config(config_path))


@cli.command()
@click.option("--force", is_flag=True, help="Overwrite an existing config file.")
@click.pass_context
@handle_errors
def init(ctx: click.Context, force: bool) -> None:
    """Write a commented geolabel.toml with default settings."""
    path: Path = ctx.obj["config_path"]
    write_default_config(path, force=force)
    console.print(f"wrote {path}; edit the class catalogue, then: geolabel import RASTER...")


def write_default_config(path: Path, force: bool = False) -> None:
    """Write the default config file.

    Raises:
        ConfigError: if the file exists and ``force`` is false.
    """
    if path.exists() and not force:
        raise ConfigError(f"{path} already exists; use --force to overwrite it")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(DEFAULT_CONFIG, encoding="utf-8")


def _parse_bands(_ctx: click.Context, _param: click.Parameter, value: str | None) -> list[int] | None:
    if not value:
        return None
    try:
        return [int(v) for v in value.split(",")]
    except ValueError:
        raise click.BadParameter("give band numbers separated by commas, e.g. 4,1,2") from None


@cli.command(name="import")
@click.argument("rasters", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option("--project", help="Label Studio project title (default: project.name in the config).")
@click.option(
    "--bands",
    callback=_parse_bands,
    help="Raster bands feeding the project's model, in its input order, e.g. 4,1,2 (default: the project's "
    "band numbers; a new project: every band, or the display bands beyond 5). 1 or 3 bands are also "
    "the display bands (default: display.bands).",
)
@click.pass_context
@handle_errors
def import_command(
    ctx: click.Context, rasters: tuple[Path, ...], project: str | None, bands: list[int] | None
) -> None:
    """Slice RASTERS (GeoTIFF/COG) into display tiles and Label Studio tasks."""
    from georef.registry import TileRegistry
    from importers.pipeline import import_raster

    config = config_of(ctx)
    options = import_options(config, project, bands)
    client = ls_client(config)
    client.check()
    failures: list[ImportFailedError] = []
    with TileRegistry(config.registry_path) as registry:
        options = _with_model_bands(config, registry, options)
        for raster in rasters:
            try:
                with progress_bar() as bar:
                    report = import_raster(raster, options, registry, client, bar)
            except ImportFailedError as exc:
                failures.append(exc)
                err_console.print(f"[bold red]error:[/] {exc}", highlight=False)
                continue
            print_report(report)
    if failures:
        sys.exit(exit_code(failures[0]))


def _with_model_bands(config: Config, registry: TileRegistry, options: ImportOptions) -> ImportOptions:
    """``options`` with the active model's input bands when the project predates recorded inputs."""
    title = options.project
    if registry.project_id(title) is None or registry.project_input(title) is not None:
        return options
    from trainer.legacy import active_model_bands  # only for a project from before inputs were recorded

    bands = active_model_bands(config, title)
    return options if bands is None else dataclasses.replace(options, model_bands=bands)


def print_report(report: ImportReport) -> None:
    """One summary line per imported raster, then its warnings and notes."""
    console.print(
        f"{report.raster}: {report.tiles} tiles ({report.skipped} all-nodata skipped), "
        f"{report.rendered_now} rendered now, {report.tasks_created} tasks created, "
        f"{report.tasks_adopted} adopted; project {report.project_id}",
        highlight=False,
    )
    for warning in report.warnings:
        err_console.print(f"  [bold yellow]warning:[/] {warning}", highlight=False)
    for note in report.notes:
        console.print(f"  note: {note}", highlight=False)


@cli.command()
@click.argument("raster", type=click.Path(path_type=Path))
@click.option("--project", help="Only if RASTER belongs to this project (Label Studio project title).")
@click.option(
    "--with-annotations",
    is_flag=True,
    help="Also delete tasks that carry annotations (their labels are lost; export them first).",
)
@click.pass_context
@handle_errors
def forget(ctx: click.Context, raster: Path, project: str | None, with_annotations: bool) -> None:
    """Remove an imported RASTER: its Label Studio tasks, display tiles, stored predictions, registry rows.

    Refused while one of its tasks carries annotations, unless --with-annotations is given. Running it
    again completes an interrupted removal; a raster already forgotten is left alone.
    """
    from georef.registry import TileRegistry
    from importers.forget import forget_raster

    config = config_of(ctx)
    if not config.registry_path.is_file():
        console.print(f"{raster}: nothing imported yet in {config.data_dir}; nothing to forget")
        return
    client = ls_client(config)
    client.check()
    roots = [config.data_dir / "predictions", *sorted(config.data_dir.glob("projects/*/predictions"))]
    with TileRegistry(config.registry_path) as registry:
        project_id = None if project is None else registry.project_id(project)
        if project is not None and project_id is None:
            raise ConfigError(f"--project {project!r}: no such project in {config.registry_path}")
        report = forget_raster(raster, registry, client, config.data_dir, roots, project_id, with_annotations)
    print_forget_report(report)


def print_forget_report(report: ForgetReport) -> None:
    """What ``geolabel forget`` removed."""
    if not report.found:
        console.print(f"{report.raster}: not in the registry (never imported, or already forgotten)")
        return
    console.print(
        f"forgot {report.raster}: {report.tiles} tiles, {report.tasks_deleted} Label Studio tasks "
        f"({report.annotated_deleted} with annotations), {report.images_deleted} display images, "
        f"{report.predictions_deleted} stored predictions; project {report.project_id}",
        highlight=False,
    )
    for note in report.notes:
        console.print(f"  note: {note}", highlight=False)


@cli.command()
@click.pass_context
@handle_errors
def tiles(ctx: click.Context) -> None:
    """List imported rasters: tiles, CRS, resolution and labelled tasks."""
    from geolabel.status import raster_table

    config = config_of(ctx)
    if not has_registry(config):
        return
    try:
        client: LabelStudioClient | None = ls_client(config)
    except LabelStudioError:
        client = None
    table, warning = raster_table(config, client)
    Console(width=max(console.width, 140)).print(table)
    if warning:
        err_console.print(f"[yellow]note:[/] {warning}", highlight=False)


@cli.command()
@click.pass_context
@handle_errors
def serve(ctx: click.Context) -> None:
    """Start the local Label Studio (SQLite) and the ML backend, connected, until Ctrl-C."""
    from geolabel.local import serve_forever

    _ensure_config(ctx)
    serve_forever(config_of(ctx), ctx.obj["config_path"], console)


@cli.command()
@click.option(
    "--raster", "rasters", multiple=True, type=click.Path(path_type=Path), help="Rasters to import."
)
@click.pass_context
@handle_errors
def demo(ctx: click.Context, rasters: tuple[Path, ...]) -> None:
    """Create the config if needed, start Label Studio, import the sample orthophoto; Ctrl-C stops."""
    from geolabel.local import run_demo

    _ensure_config(ctx)
    run_demo(config_of(ctx), ctx.obj["config_path"], list(rasters), console)


@cli.command()
@click.option("--bind", help="HOST:PORT to listen on (default: 127.0.0.1 and the port of ml_backend.url).")
@click.option("--workers", type=click.IntRange(1, 32), help="gunicorn workers (default: ml_backend.workers).")
@click.option(
    "--threads",
    type=click.IntRange(1, 64),
    help="Threads per worker (default: ml_backend.threads).",
)
@click.pass_context
@handle_errors
def backend(ctx: click.Context, bind: str | None, workers: int | None, threads: int | None) -> None:
    """Serve the ML backend under gunicorn in the foreground (the deployment's backend service)."""
    from urllib.parse import urlsplit

    from geolabel.deploy import exec_backend

    config = config_of(ctx)
    port = urlsplit(config.ml_backend.url).port or 9090
    exec_backend(config, ctx.obj["config_path"], bind or f"127.0.0.1:{port}",
                 workers or config.ml_backend.workers, threads or config.ml_backend.threads)  # fmt: skip


@cli.command()
@project_option
@click.pass_context
@handle_errors
def connect(ctx: click.Context, project: str | None) -> None:
    """Connect the ML backend at ml_backend.url to the project (after its first import)."""
    from geolabel.deploy import connect as connect_project

    connect_project(project_config(ctx, project), console)


@cli.command(name="ssrf-allow")
@click.argument("addresses", nargs=-1, required=True)
@handle_errors
def ssrf_allow(addresses: tuple[str, ...]) -> None:
    """Print Label Studio's SSRF settings that let it reach only the backend at ADDRESSES."""
    from geolabel.deploy import ssrf_settings

    for name, value in ssrf_settings(list(addresses)).items():
        click.echo(f"{name}={value}")


@cli.command()
@click.option("--limit", type=click.IntRange(min=1), help="Tiles to embed (default: sam.precompute).")
@click.option("--follow", is_flag=True, help="Keep the next tiles embedded until stopped (Ctrl-C).")
@project_option
@click.pass_context
@handle_errors
def embed(ctx: click.Context, limit: int | None, follow: bool, project: str | None) -> None:
    """Compute SAM embeddings for the tiles next in the annotation queue, so clicks are fast."""
    from geolabel.embedding import embed_queue

    config = project_config(ctx, project)
    embed_queue(config, ls_client(config), limit or config.sam.precompute or 1, follow, console, progress_bar)


@cli.command()
@click.option("--now", "now_", is_flag=True, help="Run one round now, whatever the threshold.")
@click.option(
    "--schedule",
    is_flag=True,
    help="Keep running: a round whenever trainer.threshold annotations changed "
    "(checked every trainer.check_interval seconds); `geolabel serve` starts this itself.",
)
@click.option(
    "--init-from",
    metavar="VERSION|PROJECT|PATH",
    help="With --now: start the network from this model version, another project's active version or "
    "a version folder, instead of the active version (classes matched by name).",
)
@project_option
@scheduler_option
@click.pass_context
@handle_errors
def train(
    ctx: click.Context,
    now_: bool,
    schedule: bool,
    init_from: str | None,
    project: str | None,
    scheduler: str | None,
) -> None:
    """Run an active-learning round: harvest, train, validate, score, push, promote, queue the next tiles."""
    if now_ == schedule:
        raise click.UsageError("give --now (one round now) or --schedule (rounds as annotations come in)")
    if init_from and schedule:
        raise click.UsageError("--init-from goes with --now; for scheduled rounds set [model] init_from")
    config = project_config(ctx, project, scheduler)
    from geolabel.training import contenders

    if schedule:
        from geolabel.local import stop_on_signals
        from trainer.scheduler import run_scheduler

        logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        with stop_on_signals():
            run_scheduler(config, ctx.obj["config_path"], scheduler, contenders)
        return
    from trainer.loop import Start, Watch, run_round

    err_console.print("active-learning round: harvesting annotations...", highlight=False)
    start = Start(init_from or "", contenders(config))
    with progress_bar() as bar:
        record = run_round(
            config, ls_client(config), trigger="manual", watch=Watch(bar, announce), start=start
        )
    verdict = (
        "promoted (now active)" if record.status == "promoted" else "kept the previous version (not better)"
    )
    console.print(
        f"{config.project.name}: round {record.number}: {record.labelled_tiles} labelled tiles, "
        f"version {record.model_version} {verdict}",
        highlight=False,
    )
    shown = {k: v for k, v in record.metrics.items() if k in ("miou", "accuracy") or k.endswith("_iou")}
    scores = ", ".join(f"{k} {v:.3f}" for k, v in shown.items())
    console.print(f"validation ({record.validation_tiles} tiles): {scores or 'no validation tiles yet'}")
    console.print(f"started from: {record.origin}", highlight=False)
    for name, result in record.contenders.items():
        miou = result.get("miou")
        score = f"miou {miou:.3f}" if isinstance(miou, float) else "no validation score"
        console.print(f"{name}: {score}; {result.get('detail', '')}", highlight=False)
    if record.contenders:
        console.print(f"pre-annotations from: {record.winner} (best on validation)", highlight=False)
    for problem in record.problems:
        err_console.print(f"[yellow]note:[/] {problem}", highlight=False)


@cli.command()
@click.option(
    "--raster", type=click.Path(exists=True, dir_okay=False, path_type=Path), help="Only this raster's tiles."
)
@click.option("--version", "version", help="Model version to run (default: the active one).")
@project_option
@scheduler_option
@click.pass_context
@handle_errors
def predict(
    ctx: click.Context, raster: Path | None, version: str | None, project: str | None, scheduler: str | None
) -> None:
    """Predict every tile of the project (or --raster) with a model version and store it for exports.

    Resumable: tiles already stored are not predicted again, so after an interruption run it again.
    """
    from trainer.predict import predict_project

    config = project_config(ctx, project, scheduler)
    if not has_registry(config):
        return
    with progress_bar() as bar:
        report = predict_project(config, raster, version, bar, announce)
    where = f" ({report.where})" if report.where else ""
    console.print(
        f"{config.project.name}: {report.version}: {report.computed} tiles predicted{where}, "
        f"{report.already} already stored, of {report.tiles}",
        highlight=False,
    )
    for problem in report.problems:
        err_console.print(f"[yellow]left out:[/] {problem}", highlight=False)


@cli.command()
@project_option
@click.pass_context
@handle_errors
def status(ctx: click.Context, project: str | None) -> None:
    """Show the active-learning rounds, the active model version and annotations waiting for a round."""
    from geolabel.status import rounds_table

    config = project_config(ctx, project)
    if not has_registry(config):
        return
    table, lines = rounds_table(config)
    Console(width=max(console.width, 140)).print(table)
    for line in lines:
        console.print(line)


def _ensure_config(ctx: click.Context) -> None:
    path: Path = ctx.obj["config_path"]
    if not path.exists():
        write_default_config(path)
        console.print(f"wrote {path} (default settings; edit it and restart to change them)")


for _command in (cli_gis.export, cli_gis.import_labels_command, cli_gis.import_predictions, cli_gis.review):
    cli.add_command(_command)


def main() -> None:
    """Entry point of the ``geolabel`` command."""
    cli(obj={})


if __name__ == "__main__":
    main()
