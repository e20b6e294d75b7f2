"""The ``geolabel`` command line.

Domain logic lives in :mod:`importers` and :mod:`georef`; this module parses
options, shows progress and maps errors to messages and exit codes in one place.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import sqlite3
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import click
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from exporters.errors import ExportError
from geolabel.config import CONFIG_NAME, DEFAULT_CONFIG, Config, load_config
from geolabel.errors import ConfigError, GeolabelError, LabelStudioError, StackError
from georef.errors import GeorefError
from importers.errors import ImportFailedError
from trainer.errors import TrainerError

if TYPE_CHECKING:  # heavy modules are imported by the commands that need them
    from exporters.vectors import VectorOptions
    from geolabel.lsclient import LabelStudioClient
    from georef.registry import TileRegistry
    from importers.forget import ForgetReport
    from importers.pipeline import ImportOptions, ImportReport
    from trainer.agreement import ReviewReport

F = TypeVar("F", bound=Callable[..., Any])

console = Console(soft_wrap=True)
err_console = Console(stderr=True, soft_wrap=True)

#: Exit codes, one per family of errors.
EXIT_CODES: tuple[tuple[type[BaseException], int], ...] = (
    (ConfigError, 2),
    (ImportFailedError, 3),
    (GeorefError, 3),
    (LabelStudioError, 4),
    (StackError, 5),
    (GeolabelError, 1),
    (TrainerError, 7),
    (ExportError, 8),
    (sqlite3.Error, 6),
    (OSError, 1),
)


def exit_code(error: BaseException) -> int:
    """The exit code of an error, from :data:`EXIT_CODES` (the one map of errors to codes)."""
    return next(code for cls, code in EXIT_CODES if isinstance(error, cls))


def handle_errors(func: F) -> F:
    """Turn geolabel errors into one clear message and an exit code (no traceback)."""

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except tuple(cls for cls, _ in EXIT_CODES) as exc:
            code = exit_code(exc)
            prefix = "registry error (the tile registry database): " if isinstance(exc, sqlite3.Error) else ""
            err_console.print(f"[bold red]error:[/] {prefix}{exc}", highlight=False, markup=True)
            sys.exit(code)
        except KeyboardInterrupt:
            err_console.print("interrupted; run the same command again to resume")
            sys.exit(130)

    return wrapper  # type: ignore[return-value]


class RichProgress:
    """Adapter from the importers' progress protocol to a rich progress bar."""

    def __init__(self, progress: Progress) -> None:
        self._progress = progress
        self._task: Any = None

    def start(self, description: str, total: int) -> None:
        """Begin a new bar."""
        self._task = self._progress.add_task(description, total=total)

    def advance(self, units: int) -> None:
        """Advance the current bar."""
        if self._task is not None:
            self._progress.advance(self._task, units)


@contextmanager
def progress_bar() -> Iterator[RichProgress]:
    """A rich progress bar on stderr, as an importers progress receiver."""
    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeRemainingColumn(),
    )
    with Progress(*columns, console=err_console, transient=False) as progress:
        yield RichProgress(progress)


def _config(ctx: click.Context) -> Config:
    config: Config = ctx.obj["config_loader"]()
    return config


def _project_config(ctx: click.Context, project: str | None, scheduler: str | None = None) -> Config:
    """The config of ``--project`` (default: ``project.name`` of the file), with ``--scheduler`` if given."""
    return _config(ctx).for_project(project).with_scheduler(scheduler)


#: ``--project`` of the commands that act on one project's tiles, models, rounds and predictions.
project_option = click.option(
    "--project", help="Project (Label Studio project title) to act on (default: project.name in the config)."
)

#: ``--scheduler`` of the commands that fan tiles out (round scoring, predict, export).
scheduler_option = click.option(
    "--scheduler",
    help='Where tile work runs: "local" (a Dask LocalCluster), "tcp://host:8786" (an existing Dask '
    'scheduler) or "none" (this process); default: compute.scheduler in the config.',
)


def _announce(text: str) -> None:
    err_console.print(text, highlight=False, markup=False)


def _client(config: Config) -> LabelStudioClient:
    from geolabel.lsclient import client_for  # label_studio_sdk loads only for commands that talk to it

    return client_for(config)


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

    config = _config(ctx)
    options = import_options(config, project, bands)
    client = _client(config)
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

    config = _config(ctx)
    if not config.registry_path.is_file():
        console.print(f"{raster}: nothing imported yet in {config.data_dir}; nothing to forget")
        return
    client = _client(config)
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


@cli.command(name="import-labels")
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

    config = _project_config(ctx, project)
    options = LabelImportOptions(file, layer, class_field, class_name, as_annotations=as_ == "annotations",
                                 model_version=model_version, crs=file_crs)  # fmt: skip
    with progress_bar() as bar:
        report = import_labels(config, _client(config), options, bar)
    for line in report.lines():
        console.print(line, highlight=False)


@cli.command(name="import-predictions")
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

    config = _project_config(ctx, project, scheduler)
    if not _has_registry(config):
        return
    options = ProbabilityImport(raster, split_class_names(classes) if classes else (), version)
    with progress_bar() as bar:
        report = import_probabilities(config, _client(config), options, bar)
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


@cli.command()
@click.pass_context
@handle_errors
def tiles(ctx: click.Context) -> None:
    """List imported rasters: tiles, CRS, resolution and labelled tasks."""
    from geolabel.status import raster_table

    config = _config(ctx)
    if not _has_registry(config):
        return
    try:
        client: LabelStudioClient | None = _client(config)
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
    serve_forever(_config(ctx), ctx.obj["config_path"], console)


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
    run_demo(_config(ctx), ctx.obj["config_path"], list(rasters), console)


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

    config = _config(ctx)
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

    connect_project(_project_config(ctx, project), console)


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

    config = _project_config(ctx, project)
    embed_queue(config, _client(config), limit or config.sam.precompute or 1, follow, console, progress_bar)


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
    config = _project_config(ctx, project, scheduler)
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
            config, _client(config), trigger="manual", watch=Watch(bar, _announce), start=start
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

    config = _project_config(ctx, project, scheduler)
    if not _has_registry(config):
        return
    with progress_bar() as bar:
        report = predict_project(config, raster, version, bar, _announce)
    where = f" ({report.where})" if report.where else ""
    console.print(
        f"{config.project.name}: {report.version}: {report.computed} tiles predicted{where}, "
        f"{report.already} already stored, of {report.tiles}",
        highlight=False,
    )
    for problem in report.problems:
        err_console.print(f"[yellow]left out:[/] {problem}", highlight=False)


@cli.command()
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

    config = _project_config(ctx, project)
    if not _has_registry(config):
        return
    if count is None and below is None:
        count = 20
    report = review_tiles(config, _client(config), count, below, send=not dry_run)
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


@cli.command()
@project_option
@click.pass_context
@handle_errors
def status(ctx: click.Context, project: str | None) -> None:
    """Show the active-learning rounds, the active model version and annotations waiting for a round."""
    from geolabel.status import rounds_table

    config = _project_config(ctx, project)
    if not _has_registry(config):
        return
    table, lines = rounds_table(config)
    Console(width=max(console.width, 140)).print(table)
    for line in lines:
        console.print(line)


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


@cli.command()
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

    config = _project_config(ctx, project, scheduler)
    options = ExportOptions(out, crs, what or WHAT, explicit=what is not None, overwrite=overwrite,
                            workers=config.import_.workers, announce=_announce, version=version,
                            clip_to_valid=clip_to_valid,
                            vectors=_vector_options(config, min_area, simplify, regularize))  # fmt: skip
    client = _client(config)
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


def _has_registry(config: Config) -> bool:
    """True when something was imported; else say what to run."""
    if config.registry_path.is_file():
        return True
    console.print(f"no raster imported yet ({config.registry_path} does not exist); run: geolabel import")
    return False


def _ensure_config(ctx: click.Context) -> None:
    path: Path = ctx.obj["config_path"]
    if not path.exists():
        write_default_config(path)
        console.print(f"wrote {path} (default settings; edit it and restart to change them)")


def main() -> None:
    """Entry point of the ``geolabel`` command."""
    cli(obj={})


if __name__ == "__main__":
    main()
