"""GeoPackage layers written with pyogrio, appended chunk by chunk, and their QGIS default styles.

Files are written as GeoPackage 1.2 so that older GDAL and QGIS releases (Debian's
GDAL 3.6, QGIS 3.22) read them without warnings.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import geopandas as gpd
import pandas as pd
import pyogrio
from rasterio.crs import CRS
from shapely.geometry.base import BaseGeometry

#: Column kinds: "int64", "float64", "str", "bool", "datetime" (ISO 8601 text or datetimes in, GeoPackage
#: DateTime in UTC out; None is a null date).
Schema = Mapping[str, str]
GEOMETRY_COLUMN = "geom"  # GDAL's default for GeoPackage, named in ``layer_styles``
_DATASET_OPTIONS = {"VERSION": "1.2"}


@dataclass(frozen=True)
class LayerStyle:
    """A QGIS style stored as a layer's default in the GeoPackage."""

    layer: str
    name: str
    qml: str
    description: str = ""


def frame(rows: Sequence[Mapping[str, object]], geometries: Sequence[BaseGeometry], schema: Schema,
          crs: CRS) -> gpd.GeoDataFrame:  # fmt: skip
    """A GeoDataFrame with exactly the ``schema`` columns, in order and dtype, even when empty."""
    columns = {name: _column([row[name] for row in rows], kind) for name, kind in schema.items()}
    return gpd.GeoDataFrame(columns, geometry=gpd.GeoSeries(list(geometries), crs=crs))


def write_layer(path: Path, layer: str, data: gpd.GeoDataFrame, geometry_type: str, append: bool) -> None:
    """Write (or append to) ``layer``; an empty frame creates a valid empty layer with its fields."""
    if append and not len(data):
        return
    pyogrio.write_dataframe(
        data, path, layer=layer, driver="GPKG", geometry_type=geometry_type,
        promote_to_multi=geometry_type.startswith("Multi"), append=append,
        dataset_options=None if path.exists() else _DATASET_OPTIONS,
    )  # fmt: skip


def write_styles(path: Path, styles: Sequence[LayerStyle]) -> None:
    """Store ``styles`` in the ``layer_styles`` table, each as its layer's default, as QGIS does."""
    now = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    rows = pd.DataFrame(
        {
            "f_table_catalog": "",
            "f_table_schema": "",
            "f_table_name": [s.layer for s in styles],
            "f_geometry_column": GEOMETRY_COLUMN,
            "styleName": [s.name for s in styles],
            "styleQML": [s.qml for s in styles],
            "styleSLD": "",
            "useAsDefault": True,
            "description": [s.description for s in styles],
            "owner": "geolabel",
            "ui": "",
            "update_time": now,
        }
    )
    pyogrio.write_dataframe(rows, path, layer="layer_styles", driver="GPKG")


def _column(values: list[object], kind: str) -> pd.Series:
    if kind == "datetime":
        times = pd.to_datetime(pd.Series(values, dtype="object"), utc=True, format="ISO8601")
        return times.astype("datetime64[ms, UTC]")
    return pd.Series(values, dtype=_dtype(kind))


def _dtype(kind: str) -> str:
    return {"str": "object", "bool": "bool", "int64": "Int64", "float64": "float64"}[kind]
