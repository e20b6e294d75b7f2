"""Reading a vector label file for :mod:`importers.existing_labels`: its layer, CRS and classes.

A file is read with pyogrio (anything GDAL reads: GeoPackage, GeoJSON, Shapefile...). A file with
several layers needs the layer named; a file that records no CRS needs one given (it is never
guessed). Classes come from a field whose values are catalogue names (any case) or ids, or one
class for every feature; values outside the catalogue are counted, never silently dropped.
"""

from __future__ import annotations

import hashlib
import math
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path

import geopandas as gpd
import numpy as np
import pyogrio
from rasterio.crs import CRS
from rasterio.errors import CRSError

from geolabel.classes import UNSURE_LABEL, LabelClass
from georef.grid import crs_to_text
from importers.errors import LabelFileError

#: Why features with a class value outside the catalogue are not placed.
UNKNOWN_CLASS = "class value not in the catalogue"


def read_label_file(source: Path, layer: str | None = None, crs: str | None = None) -> gpd.GeoDataFrame:
    """The features of a vector file's layer, with their CRS (``crs`` when the file records none).

    Raises:
        LabelFileError: if the file is missing or unreadable, the layer is missing or must be named,
            or the CRS is unknown (or contradicts ``crs``).
    """
    if not source.exists():
        raise LabelFileError(f"{source} does not exist; give the path of a GeoPackage, GeoJSON or Shapefile")
    try:
        layers = [(str(name), kind) for name, kind in pyogrio.list_layers(source)]
    except Exception as exc:  # pyogrio raises DataSourceError and friends
        raise LabelFileError(f"{source} cannot be read as vector data ({exc})") from None
    spatial = [name for name, kind in layers if kind is not None]
    if layer is None and len(spatial) > 1:
        raise LabelFileError(
            f"{source} has {len(spatial)} layers ({', '.join(spatial)}); choose one with --layer"
        )
    if layer is not None and layer not in {name for name, _ in layers}:
        raise LabelFileError(
            f"{source} has no layer {layer!r}; its layers: {', '.join(n for n, _ in layers)}"
        )
    name = layer or (spatial[0] if spatial else None)
    if name is None:
        raise LabelFileError(f"{source} has no layer with geometries")
    try:
        frame = gpd.read_file(source, layer=name, engine="pyogrio")
    except Exception as exc:
        raise LabelFileError(f"{source}: layer {name!r} cannot be read ({exc})") from None
    return _with_crs(frame, source, crs)


def _with_crs(frame: gpd.GeoDataFrame, source: Path, crs: str | None) -> gpd.GeoDataFrame:
    given = None
    if crs is not None:
        try:
            given = CRS.from_user_input(crs)
        except CRSError:
            raise LabelFileError(f"--crs {crs!r} is not a CRS (e.g. EPSG:2154)") from None
    if frame.crs is None:
        if given is None:
            raise LabelFileError(
                f"{source} records no CRS, so its coordinates cannot be placed; give the CRS they are in "
                "with --crs (e.g. --crs EPSG:2154), or write it into the file (ogr2ogr -a_srs EPSG:2154)"
            )
        return frame.set_crs(given.to_wkt())
    if given is not None and CRS.from_user_input(frame.crs) != given:
        raise LabelFileError(
            f"{source} says its CRS is {crs_to_text(CRS.from_user_input(frame.crs))}, --crs says {crs}; "
            "drop --crs (it is only for files that record no CRS) or fix the file"
        )
    return frame


def class_labels(
    frame: gpd.GeoDataFrame,
    classes: Sequence[LabelClass],
    class_field: str | None = None,
    class_name: str | None = None,
) -> tuple[list[str | None], Counter[str]]:
    """The Label Studio label of each feature (None: unknown) and the unknown values with their counts.

    Field values match catalogue names in any case, or ids (``unsure`` gives the unsure label); with
    no field, every feature is ``class_name``, or the catalogue's only class.

    Raises:
        LabelFileError: if the field is missing, ``class_name`` is not a class, both are given, or
            neither is given and the catalogue has several classes.
    """
    names = [c.name for c in classes]
    fields = [str(c) for c in frame.columns if c != frame.geometry.name]
    if class_field is not None and class_name is not None:
        raise LabelFileError("give either a class field or one class name for every feature, not both")
    if class_field is None:
        if class_name is None and len(classes) == 1:
            class_name = classes[0].name
        if class_name is None:
            raise LabelFileError(
                f"the catalogue has {len(classes)} classes ({', '.join(names)}): say which attribute "
                "holds each feature's class with --class-field (the file's fields: "
                f"{', '.join(fields) or 'none'}), or give every feature one class with --class-name"
            )
        every = _matcher(classes)(class_name)
        if every is None:
            raise LabelFileError(f"class {class_name!r} is not in the catalogue ({', '.join(names)})")
        return [every] * len(frame), Counter()
    if class_field not in frame.columns:
        raise LabelFileError(
            f"the file has no field {class_field!r}; its fields: {', '.join(fields) or 'none'}"
        )
    match = _matcher(classes)
    labels: list[str | None] = []
    unknown: Counter[str] = Counter()
    for value in frame[class_field]:
        label = match(value)
        labels.append(label)
        if label is None:
            unknown[_shown(value)] += 1
    return labels, unknown


def _matcher(classes: Sequence[LabelClass]) -> Callable[[object], str | None]:
    by_name = {c.name.casefold(): c.name for c in classes} | {UNSURE_LABEL.casefold(): UNSURE_LABEL}
    by_id = {c.id: c.name for c in classes}

    def match(value: object) -> str | None:
        if value is None or (isinstance(value, float) and math.isnan(value)):
            return None
        if isinstance(value, (int, np.integer, float, np.floating)) and not isinstance(value, bool):
            number = float(value)
            return by_id.get(int(number)) if number.is_integer() else None
        text = str(value).strip()
        found = by_name.get(text.casefold())
        if found is None and text.isdigit():
            found = by_id.get(int(text))
        return found

    return match


def _shown(value: object) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "(empty)"
    return str(value)


def file_digest(source: Path) -> str:
    """SHA-256 of a vector file's content (with its side files: a Shapefile's .dbf, .shx, .prj...)."""
    digest = hashlib.sha256()
    for path in _content_files(source):
        digest.update(path.suffix.lower().encode() + b"\0")
        with path.open("rb") as handle:
            while block := handle.read(1 << 20):
                digest.update(block)
    return digest.hexdigest()


def _content_files(source: Path) -> list[Path]:
    """The files holding a vector dataset: a folder's files, a Shapefile with its side files, or the file."""
    if source.is_dir():
        return sorted(p for p in source.rglob("*") if p.is_file())
    if source.suffix.lower() == ".shp":
        sides = [source.with_suffix(s) for s in (".shp", ".shx", ".dbf", ".prj", ".cpg")]
        return [p for p in sides if p.is_file()]
    return [source]
