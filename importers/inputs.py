"""Which bands of a raster feed its project's model: chosen at the project's first import, checked after.

A project's input (:class:`~georef.inputs.ProjectInput`) is fixed by its first raster: bands 1..n
(n = its data bands, the alpha band left out), or its display bands when it has more than
:data:`MAX_INPUT_BANDS`, or the bands ``--bands`` names. Every later raster must provide as many
bands: the same band numbers by default, others with ``--bands``. A raster that cannot is refused
before anything is written, with the option that would fit.
"""

from __future__ import annotations

import shlex
from collections.abc import Sequence

from georef.inputs import ProjectInput, ground_resolution
from georef.registry import RasterRecord, TileRegistry
from importers.errors import InputMismatchError
from importers.raster import RasterInfo

#: A raster with more data bands than this feeds its display bands to a new project's model.
MAX_INPUT_BANDS = 5


def new_project_input(
    title: str, info: RasterInfo, display_bands: Sequence[int], requested: Sequence[int] | None
) -> ProjectInput:
    """The input a new project takes from its first raster ``info`` (``requested``: ``--bands``).

    Raises:
        InputMismatchError: if a requested band does not exist or is the alpha band.
    """
    if requested:
        bands = _checked(info, requested, title)
    else:
        data = _data_bands(info)
        bands = tuple(display_bands) if len(data) > MAX_INPUT_BANDS else data
    return ProjectInput(title, bands, f"first import: {info.path.name}", ground_resolution(info.grid))


def raster_input_bands(
    project: ProjectInput, info: RasterInfo, requested: Sequence[int] | None
) -> tuple[int, ...]:
    """The bands of ``info`` feeding ``project``'s inputs: ``requested`` (``--bands``), else the same numbers.

    Raises:
        InputMismatchError: if the raster cannot provide the project's input; the message names the
            project, what it reads, what the raster has, and the ``--bands`` or ``--project`` that fits.
    """
    wanted = project.band_count
    if requested:
        if len(requested) != wanted:
            raise InputMismatchError(
                f"{_cannot(project, info)}: --bands names {len(requested)} bands {list(requested)}, "
                f"the model reads {wanted}. {_fix(project, info)}. Nothing was imported"
            )
        return _checked(info, requested, project.project)
    if max(project.source_bands) <= info.band_count and info.alpha_band not in project.source_bands:
        return project.source_bands
    raise InputMismatchError(
        f"{_cannot(project, info)}: {_has(info)}. {_fix(project, info)}. Nothing was imported"
    )


def legacy_project_input(
    registry: TileRegistry, title: str, project_id: int | None, model_bands: Sequence[int] | None
) -> ProjectInput | None:
    """The input of a project created before inputs were recorded (None when it has no raster).

    It is the input bands of the project's active model when it has one, else what its first raster
    would give a new project (bands 1..n, or the display bands when n > 5: what models read then).
    """
    rasters = [] if project_id is None else registry.rasters(project_id)
    if not rasters:
        return None
    first = rasters[0]
    if model_bands:
        return ProjectInput(
            title, tuple(model_bands), "the active model's input bands", ground_resolution(first.grid)
        )
    bands = tuple(range(1, first.band_count + 1))
    if len(bands) > MAX_INPUT_BANDS:
        bands = first.display_bands
    return ProjectInput(title, bands, f"first raster: {first.name}", ground_resolution(first.grid))


def record_legacy_input(registry: TileRegistry, project: ProjectInput, project_id: int) -> ProjectInput:
    """Record a legacy project's input and give each of its rasters that can provide it the same bands."""
    recorded = registry.record_project_input(project)
    for raster in registry.rasters():
        if raster.project_id == project_id and raster.input_bands is None and _fits(recorded, raster):
            registry.set_input_bands(raster.id, recorded.source_bands)
    return recorded


def project_input(
    registry: TileRegistry, title: str, project_id: int | None, model_bands: Sequence[int] | None = None
) -> ProjectInput | None:
    """Project ``title``'s recorded input; for a legacy project, its input is recorded now first."""
    recorded = registry.project_input(title)
    if recorded is not None or project_id is None:
        return recorded
    legacy = legacy_project_input(registry, title, project_id, model_bands)
    return None if legacy is None else record_legacy_input(registry, legacy, project_id)


def _fits(project: ProjectInput, raster: RasterRecord) -> bool:
    return max(project.source_bands) <= raster.band_count


def _checked(info: RasterInfo, requested: Sequence[int], title: str) -> tuple[int, ...]:
    bands = tuple(int(b) for b in requested)
    for band in bands:
        if not 1 <= band <= info.band_count:
            raise InputMismatchError(
                f"--bands {','.join(map(str, bands))}: {info.path.name} has bands 1-{info.band_count}; "
                f"band {band} does not exist (project {title!r})"
            )
        if band == info.alpha_band:
            raise InputMismatchError(
                f"--bands {','.join(map(str, bands))}: band {band} of {info.path.name} is its alpha band "
                "(a mask, not imagery); choose data bands"
            )
    return bands


def _data_bands(info: RasterInfo) -> tuple[int, ...]:
    return tuple(b for b in range(1, info.band_count + 1) if b != info.alpha_band)


def _cannot(project: ProjectInput, info: RasterInfo) -> str:
    return (
        f"{info.path.name} cannot feed project {project.project!r}: its model reads {project.band_count} "
        f"bands (bands {list(project.source_bands)} of its {project.source})"
    )


def _has(info: RasterInfo) -> str:
    data = _data_bands(info)
    alpha = f" and an alpha band ({info.alpha_band})" if info.alpha_band else ""
    return f"{info.path.name} has {len(data)} data band{'s' if len(data) != 1 else ''}{alpha}"


def _fix(project: ProjectInput, info: RasterInfo) -> str:
    data = _data_bands(info)
    if len(data) >= project.band_count:
        example = ",".join(str(b) for b in data[: project.band_count])
        return (
            f"Say which {project.band_count} of its bands feed the model, in the project's order, "
            f"e.g. --bands {example}"
        )
    suggestion = shlex.quote(f"{project.project[:40]}-{len(data)}band")
    return f"Import it into a project of its own, e.g. --project {suggestion}"
