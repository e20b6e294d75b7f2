"""QGIS styles (QML) for the exported layers: class colours and names, tile states.

QGIS applies a style by itself when it opens a layer: for a GeoTIFF, the
``<name>.qml`` file beside it; for a GeoPackage layer, the row of the
``layer_styles`` table marked ``useAsDefault`` (see :mod:`exporters.gpkg`).
The QML is written for QGIS 3.x (the ``Option`` map form, read since 3.10).
"""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Sequence
from dataclasses import dataclass

from trainer.rounds import LabelState


@dataclass(frozen=True)
class Category:
    """One value of a categorised style: the field value, its legend label and colour (``#rrggbb``)."""

    value: str
    label: str
    color: str


#: Tile states in ``tiles.gpkg`` and their colours.
TILE_STATES = (
    Category(LabelState.LABELLED, "labelled", "#33a02c"),
    Category(LabelState.SKIPPED, "skipped in Label Studio", "#ff7f00"),
    Category(LabelState.UNLABELLED, "unlabelled", "#a6cee3"),
    Category(LabelState.NO_DATA, "no image (all nodata)", "#bdbdbd"),
)


def categorized_fill_qml(field: str, categories: Sequence[Category], fill_alpha: int = 110) -> str:
    """QML of a categorised polygon style on ``field``: translucent fill, opaque outline per category."""
    root = _root("Symbology")
    renderer = ET.SubElement(root, "renderer-v2", type="categorizedSymbol", attr=field,
                             symbollevels="0", enableorderby="0", forceraster="0")  # fmt: skip
    listed = ET.SubElement(renderer, "categories")
    symbols = ET.SubElement(renderer, "symbols")
    for index, category in enumerate(categories):
        ET.SubElement(listed, "category", value=category.value, label=category.label,
                      symbol=str(index), render="true")  # fmt: skip
        symbol = ET.SubElement(symbols, "symbol", type="fill", name=str(index), alpha="1",
                               clip_to_extent="1", force_rhr="0")  # fmt: skip
        layer = ET.SubElement(
            symbol, "layer", {"class": "SimpleFill", "enabled": "1", "pass": "0", "locked": "0"}
        )
        _options(layer, {"color": _rgba(category.color, fill_alpha),
                         "outline_color": _rgba(category.color, 255),
                         "outline_style": "solid", "outline_width": "0.5", "outline_width_unit": "MM",
                         "style": "solid"})  # fmt: skip
    return _text(root)


def paletted_raster_qml(categories: Sequence[Category]) -> str:
    """QML of a paletted (unique values) raster style: one colour and label per class id."""
    root = _root("Symbology")
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(pipe, "rasterrenderer", type="paletted", band="1", opacity="1",
                             alphaBand="-1", nodataColor="")  # fmt: skip
    palette = ET.SubElement(renderer, "colorPalette")
    for category in categories:
        ET.SubElement(palette, "paletteEntry", value=category.value, color=category.color, alpha="255",
                      label=category.label)  # fmt: skip
    return _text(root)


def probability_raster_qml(band: int, color: str, name: str = "") -> str:
    """QML of band ``band`` (0-255 probability) as a ramp from transparent to ``color``; ``name``: legend."""
    root = _root("Symbology")
    pipe = ET.SubElement(root, "pipe")
    renderer = ET.SubElement(pipe, "rasterrenderer", type="singlebandpseudocolor", band=str(band),
                             opacity="1", alphaBand="-1", classificationMin="0", classificationMax="255",
                             nodataColor="")  # fmt: skip
    shader = ET.SubElement(ET.SubElement(renderer, "rastershader"), "colorrampshader",
                           colorRampType="INTERPOLATED", classificationMode="1", clip="0",
                           minimumValue="0", maximumValue="255")  # fmt: skip
    prefix = f"{name} " if name else ""
    ET.SubElement(shader, "item", value="0", label=f"{prefix}0 %", color=color, alpha="0")
    ET.SubElement(shader, "item", value="255", label=f"{prefix}100 %", color=color, alpha="255")
    return _text(root)


def _root(categories: str) -> ET.Element:
    return ET.Element("qgis", version="3.22.0", styleCategories=categories)


def _options(parent: ET.Element, values: dict[str, str]) -> None:
    option_map = ET.SubElement(parent, "Option", type="Map")
    for name, value in values.items():
        ET.SubElement(option_map, "Option", type="QString", name=name, value=value)


def _rgba(color: str, alpha: int) -> str:
    value = color.lstrip("#")
    red, green, blue = (int(value[i : i + 2], 16) for i in (0, 2, 4))
    return f"{red},{green},{blue},{alpha}"


def _text(root: ET.Element) -> str:
    ET.indent(root)
    return "<!DOCTYPE qgis PUBLIC 'http://mrcc.com/qgis.dtd' 'SYSTEM'>\n" + ET.tostring(
        root, encoding="unicode"
    )
