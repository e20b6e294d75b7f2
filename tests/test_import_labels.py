"""``import_labels`` against the real Label Studio: export -> import -> export round trips in two CRSs,
solaris footprints on their buildings, class mapping, what cannot be placed, and idempotent re-runs."""

from __future__ import annotations

import shutil
import xml.etree.ElementTree as ET
from pathlib import Path

import geopandas as gpd
import httpx
import numpy as np
import pyogrio
import pytest
import rasterio
from affine import Affine
from click.testing import CliRunner
from rasterio.features import rasterize
from shapely.geometry import Point, Polygon, box

from exporters.project import ExportOptions, export_project
from geolabel.cli import cli
from geolabel.config import Config, parse_config
from geolabel.lsclient import LabelStudioClient
from geolabel.lsmodels import LabelledTask
from georef.labelstudio import ImageSize, brush_result, polygon_result
from georef.registry import TileRecord, TileRegistry
from importers.errors import LabelFileError
from importers.existing_labels import NO_TASK, NOT_AREA, OUTSIDE, LabelImportOptions, import_labels
from importers.labelconfig import label_config
from importers.labelfile import UNKNOWN_CLASS, class_labels, read_label_file
from tests.conftest import (
    CLASSES,
    LAMBERT93_20CM,
    ImportedScene,
    LabelStudioServer,
    config_toml,
    import_existing,
    import_scene,
    synthetic,
)
from trainer.harvest import harvest

pytestmark = pytest.mark.labelstudio

WGS84_1M = Affine(1e-5, 0.0, 2.35, 0.0, -1e-5, 48.85)
SIZE = ImageSize(256, 256)
#: Tile pixels (col, row): a polygon with vertices between pixel corners, on the first tile.
POLYGON = np.array([(10.0, 20.0), (100.5, 20.0), (100.5, 60.25), (10.0, 70.0)])


def tile_at(tiles: list[TileRecord], col_off: int, row_off: int) -> TileRecord:
    return next(t for t in tiles if (t.window.col_off, t.window.row_off) == (col_off, row_off))


def task_of(tiles: list[TileRecord], col_off: int, row_off: int) -> int:
    return int(tile_at(tiles, col_off, row_off).task_id or 0)


def import_file(label_studio: LabelStudioServer, raster: Path, title: str) -> ImportedScene:
    """Import an existing raster as project ``title`` (256 px tiles, overlap 32) and build its config."""
    return import_existing(label_studio, raster, title, overlap=32)


def export_labels(config: Config, client: LabelStudioClient, out: Path) -> Path:
    export_project(config, client, ExportOptions(out, what=("labels",), explicit=True))
    return out / "labels.gpkg"


def project_id(config: Config) -> int:
    with TileRegistry(config.registry_path) as registry:
        found = registry.project_id(config.project.name)
    assert found is not None
    return found


# --- export -> import -> export ---------------------------------------------------------


def annotate_first_scene(scene: ImportedScene, client: LabelStudioClient) -> None:
    """A polygon between pixel corners; a building drawn across the edge of tiles (0, 0) and (224, 0) as a
    polygon on each; a water ring (a brush mask with a hole) on tile (0, 224)."""
    tiles = scene.tiles
    left = np.array([(200.0, 100.0), (256.0, 100.0), (256.0, 140.0), (200.0, 140.0)])
    right = np.array([(20.0, 100.0), (90.5, 110.0), (90.5, 150.0), (20.0, 140.0)])  # raster cols 244-314.5
    ring = np.zeros((256, 256), bool)
    ring[50:120, 40:140] = True
    ring[70:100, 70:110] = False
    first = [polygon_result(POLYGON, SIZE, "building", "label_polygon", "image"),
             polygon_result(left, SIZE, "building", "label_polygon", "image")]  # fmt: skip
    client.create_annotation(task_of(tiles, 0, 0), first)
    client.create_annotation(task_of(tiles, 224, 0), [polygon_result(right, SIZE, "building", "label_polygon",
                                                                     "image")])  # fmt: skip
    client.create_annotation(task_of(tiles, 0, 224), [brush_result(ring, "water", "label_brush", "image")])


def differences(first: gpd.GeoDataFrame, second: gpd.GeoDataFrame) -> tuple[float, float]:
    """Largest symmetric-difference area and Hausdorff distance between the two layers' geometries, matched
    one to one by class and position."""
    assert len(first) == len(second)
    worst_area = worst_distance = 0.0
    for class_id in sorted(set(first["class_id"])):
        a = first[first["class_id"] == class_id].geometry
        b = second[second["class_id"] == class_id].geometry
        assert len(a) == len(b)
        key = lambda g: (round(g.centroid.x, 3), round(g.centroid.y, 3))  # noqa: E731
        for one, other in zip(sorted(a, key=key), sorted(b, key=key), strict=True):
            worst_area = max(worst_area, one.symmetric_difference(other).area)
            worst_distance = max(worst_distance, one.hausdorff_distance(other))
    return worst_area, worst_distance


@pytest.mark.parametrize(("crs", "transform"), [("EPSG:2154", LAMBERT93_20CM), ("EPSG:4326", WGS84_1M)],
                         ids=["lambert93", "wgs84"])  # fmt: skip
def test_export_import_export_gives_the_same_geometries(
    label_studio: LabelStudioServer, tmp_path: Path, crs: str, transform: Affine
) -> None:
    client = label_studio.client()
    image = synthetic(3, 480, 480, "uint8", seed=7)
    name = crs.replace(":", "")
    first = import_scene(label_studio, tmp_path / "a.tif", image, f"round trip a {name}", 32, crs, transform)
    annotate_first_scene(first, client)
    exported = export_labels(first.config, client, tmp_path / "first")
    second = import_scene(label_studio, tmp_path / "b.tif", image, f"round trip b {name}", 32, crs, transform)
    options = LabelImportOptions(exported, layer="labels", class_field="class_name", as_annotations=True)
    report = import_labels(second.config, client, options)
    assert (report.features_read, report.features_placed, report.not_placed) == (4, 4, {})
    assert report.created == report.tasks_touched == 3  # the crossing building on both top tiles
    again = export_labels(second.config, client, tmp_path / "second")

    before = gpd.read_file(exported, layer="labels_merged")
    after = gpd.read_file(again, layer="labels_merged")
    assert sorted(before["class_id"]) == [1, 1, 2]  # the polygon, the crossing building, the ring
    assert len(list(before[before["class_id"] == 2].geometry.iloc[0].interiors)) == 1  # the ring's hole
    assert after.crs == before.crs
    assert list(after.sort_values("area")["regions"]) != []
    area, distance = differences(before, after)
    pixel = abs(transform.a)
    print(f"{crs}: largest symmetric difference {area:.3g} CRS units^2 ({area / pixel**2:.3g} px^2), "
          f"Hausdorff {distance:.3g} CRS units ({distance / pixel:.3g} px)")  # fmt: skip
    assert distance <= 1e-6 * pixel  # a millionth of a pixel (2e-7 m, or 1e-11 degrees)
    assert area <= 1e-6 * pixel**2

    rerun = import_labels(second.config, client, options)
    assert (rerun.created, rerun.kept) == (0, 3)
    tasks = {t.id: t for t in client.labelled_tasks(project_id(second.config))}
    assert sorted(len(t.annotations) for t in tasks.values()) == [1, 1, 1]


# --- solaris footprints on their buildings -------------------------------------------------


def test_solaris_footprints_land_on_their_buildings(
    label_studio: LabelStudioServer, shared_data: Path
) -> None:
    client = label_studio.client()
    raster = shared_data / "solaris" / "sample_geotiff.tif"
    labels = shared_data / "solaris" / "geotiff_labels.geojson"
    scene = import_file(label_studio, raster, "solaris footprints")
    options = LabelImportOptions(labels, class_name="building")
    report = import_labels(scene.config, client, options)
    assert report.features_read == 43
    assert report.features_placed == 43, report.lines()
    assert report.model_version == "import-labels:geotiff_labels"

    tiles_by_task = {t.task_id: t for t in scene.tiles if t.task_id is not None}
    tasks = [
        LabelledTask.model_validate({"id": task_id, "annotations": [{"id": 1, "result": p["result"]}]})
        for task_id in tiles_by_task
        for p in client.predictions(task_id)
    ]
    assert len(tasks) == report.tasks_touched
    pushed = np.zeros((900, 900), bool)
    covered = np.zeros((900, 900), bool)
    for labelled in harvest(tasks, tiles_by_task, CLASSES).tiles:  # the masks the trainer trains on
        w = labelled.tile.window
        pushed[w.row_off : w.row_end, w.col_off : w.col_end] |= labelled.target == 1
    for tile in tiles_by_task.values():
        covered[tile.window.row_off : tile.window.row_end, tile.window.col_off : tile.window.col_end] = True
    with rasterio.open(raster) as src:
        frame = gpd.read_file(labels).to_crs(src.crs)
        reference = rasterize(frame.geometry, out_shape=src.shape, transform=src.transform).astype(bool)
    reference &= covered
    iou = (pushed & reference).sum() / (pushed | reference).sum()
    print(f"solaris: IoU {iou:.6f} over {reference.sum()} building pixels")
    assert iou > 0.999

    project = client.project(project_id(scene.config))
    assert project["model_version"] == options.version
    headers = {"Authorization": f"Token {label_studio.token}"}
    stream = httpx.get(f"{label_studio.url}/api/projects/{project['id']}/next", headers=headers, timeout=30)
    assert [p["model_version"] for p in stream.json()["predictions"]] == [options.version]  # pre-filled

    rerun = import_labels(scene.config, client, options)
    assert rerun.replaced == report.created
    assert sorted(len(client.predictions(t)) for t in tiles_by_task) == sorted(
        int(t in {task.id for task in tasks}) for t in tiles_by_task
    )
    assert client.project(project_id(scene.config))["model_version"] == options.version


# --- class mapping, what cannot be placed, brush-only projects ----------------------------------


def mapping_scene(label_studio: LabelStudioServer, tmp_path: Path, title: str) -> ImportedScene:
    """A 480 x 480 Lambert-93 raster whose bottom-right tile (224, 224) is all nodata (no task)."""
    image = synthetic(3, 480, 480, "uint8", seed=3)
    image[:, 224:, 224:] = 0
    path = tmp_path / "ortho.tif"
    with rasterio.open(path, "w", driver="GTiff", width=480, height=480, count=3, dtype="uint8",
                       crs="EPSG:2154", transform=LAMBERT93_20CM, nodata=0) as dst:  # fmt: skip
        dst.write(image)
    return import_file(label_studio, path, title)


def on_ground(pixel_box: tuple[float, float, float, float]) -> Polygon:
    """A raster-pixel box ``(col0, row0, col1, row1)`` as a Lambert-93 polygon."""
    col0, row0, col1, row1 = pixel_box
    corners = [LAMBERT93_20CM @ xy for xy in ((col0, row0), (col1, row0), (col1, row1), (col0, row1))]
    return Polygon(corners)


def write_mapping_file(path: Path) -> Path:
    """A GeoPackage layer in EPSG:4326 (reprojected onto the Lambert-93 raster on import) of mixed cases."""
    rows = [
        ("Building", on_ground((10, 10, 60, 40))),  # name in another case
        ("2", on_ground((70, 10, 120, 40))),  # an id: water
        ("tree", on_ground((130, 10, 160, 40))),  # not in the catalogue
        (None, on_ground((170, 10, 200, 40))),  # no class value
        ("building", box(640000.0, 6850000.0, 640010.0, 6850010.0)),  # kilometres away
        ("building", Point(650010.0, 6859990.0)),  # not an area
        ("water", on_ground((440, 10, 520, 40))),  # half beyond the raster's right edge
        ("building", on_ground((300, 300, 400, 400))),  # on the all-nodata tile only
    ]
    frame = gpd.GeoDataFrame({"kind": [r[0] for r in rows]}, geometry=[r[1] for r in rows], crs="EPSG:2154")
    pyogrio.write_dataframe(
        frame.to_crs("EPSG:4326"), path, layer="mixed", geometry_type="Unknown"
    )  # reprojected
    return path


def test_classes_by_field_and_what_is_not_placed_is_reported(
    label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    client = label_studio.client()
    scene = mapping_scene(label_studio, tmp_path, "label mapping")
    source = write_mapping_file(tmp_path / "mixed.gpkg")
    options = LabelImportOptions(source, class_field="kind", model_version="survey 2024")
    report = import_labels(scene.config, client, options)
    assert report.features_read == 8
    assert report.features_placed == 3
    assert report.unknown_classes == {"tree": 1, "(empty)": 1}
    assert report.not_placed == {UNKNOWN_CLASS: 2, OUTSIDE: 1, NOT_AREA: 1, NO_TASK: 1}
    assert report.features_placed + sum(report.not_placed.values()) == report.features_read
    assert report.partly_outside == 1
    assert report.tiles_without_task == 1
    first = client.predictions(task_of(scene.tiles, 0, 0))
    assert [p["model_version"] for p in first] == ["survey 2024"]
    labels = sorted(r["value"]["polygonlabels"][0] for r in first[0]["result"])
    assert labels == ["building", "water"]
    edge = client.predictions(task_of(scene.tiles, 224, 0))[0]["result"]
    assert [r["value"]["polygonlabels"] for r in edge] == [["water"]]
    points = np.asarray(edge[0]["value"]["points"]) / 100 * 256 + (224, 0)  # raster pixels
    assert (points[:, 0].min(), points[:, 0].max()) == pytest.approx((440, 480), abs=1e-6)
    assert (points[:, 1].min(), points[:, 1].max()) == pytest.approx((10, 40), abs=1e-6)

    config = config_toml(scene.config, tmp_path)
    args = ["--config", str(config), "import-labels", str(source), "--class-field", "kind", "--model-version",
            "survey 2024"]  # fmt: skip
    rerun = CliRunner().invoke(cli, args, env={"GEOLABEL_LABEL_STUDIO_TOKEN": label_studio.token})
    assert rerun.exit_code == 0, rerun.output
    assert f"3 of 8 features placed as {report.regions} regions" in rerun.output
    assert f"{report.created} predictions created" in rerun.output
    assert [len(client.predictions(task_of(scene.tiles, c, 0))) for c in (0, 224)] == [1, 1]


def test_a_project_without_polygons_gets_brush_masks(label_studio: LabelStudioServer, tmp_path: Path) -> None:
    client = label_studio.client()
    scene = mapping_scene(label_studio, tmp_path, "label brush")
    root = ET.fromstring(label_config(CLASSES))
    for parent in root.iter():
        for child in list(parent):
            if child.tag == "PolygonLabels":
                parent.remove(child)
    client.set_label_config(project_id(scene.config), ET.tostring(root, encoding="unicode"))
    shape = on_ground((10.3, 10.6, 60.5, 40.2))
    source = tmp_path / "one.geojson"
    gpd.GeoDataFrame({"kind": ["building"]}, geometry=[shape], crs="EPSG:2154").to_file(source)
    report = import_labels(scene.config, client, LabelImportOptions(source, class_field="kind"))
    assert (report.features_placed, report.regions) == (1, 1)
    (result,) = client.predictions(task_of(scene.tiles, 0, 0))[0]["result"]
    assert result["type"] == "brushlabels"
    task = LabelledTask.model_validate({"id": 1, "annotations": [{"id": 1, "result": [result]}]})
    (labelled,) = harvest([task], {1: tile_at(scene.tiles, 0, 0)}, CLASSES).tiles
    expected = rasterize([shape], out_shape=(480, 480), transform=LAMBERT93_20CM).astype(bool)[:256, :256]
    assert ((labelled.target == 1) == expected).all()


# --- errors, before Label Studio is asked anything --------------------------------------------


def test_files_that_cannot_be_used_are_clear_errors(tmp_path: Path) -> None:
    frame = gpd.GeoDataFrame({"kind": ["building"], "height": [3.0]}, geometry=[box(0, 0, 1, 1)],
                             crs="EPSG:2154")  # fmt: skip
    two = tmp_path / "two.gpkg"
    frame.to_file(two, layer="roofs")
    frame.to_file(two, layer="walls")
    with pytest.raises(LabelFileError, match=r"2 layers \(roofs, walls\); choose one with --layer"):
        read_label_file(two)
    with pytest.raises(LabelFileError, match="no layer 'doors'"):
        read_label_file(two, "doors")
    assert len(read_label_file(two, "walls")) == 1

    bare = tmp_path / "bare.shp"
    frame.set_crs(None, allow_override=True).to_file(bare)
    with pytest.raises(LabelFileError, match=r"records no CRS.*--crs"):
        read_label_file(bare)
    assert read_label_file(bare, crs="EPSG:2154").crs == "EPSG:2154"
    with pytest.raises(LabelFileError, match="says its CRS is EPSG:2154, --crs says EPSG:4326"):
        read_label_file(two, "walls", crs="EPSG:4326")

    with pytest.raises(LabelFileError, match=r"2 classes \(building, water\).*fields: kind, height"):
        class_labels(frame, CLASSES)
    with pytest.raises(LabelFileError, match="no field 'class'; its fields: kind, height"):
        class_labels(frame, CLASSES, class_field="class")
    with pytest.raises(LabelFileError, match="'road' is not in the catalogue"):
        class_labels(frame, CLASSES, class_name="road")
    assert class_labels(frame, CLASSES[:1]) == (["building"], {})

    config = parse_config({"project": {"name": "nowhere"}, "classes": [c.model_dump() for c in CLASSES],
                           "label_studio": {"url": "http://127.0.0.1:9"},
                           "paths": {"data_dir": str(tmp_path / "data")}}, base_dir=tmp_path)  # fmt: skip
    unreachable = LabelStudioClient("http://127.0.0.1:9", "token")
    with pytest.raises(LabelFileError, match="choose one with --layer"):
        import_labels(config, unreachable, LabelImportOptions(two))
    with pytest.raises(LabelFileError, match="nothing imported yet"):
        import_labels(config, unreachable, LabelImportOptions(two, layer="roofs", class_field="kind"))
    shutil.rmtree(tmp_path / "data", ignore_errors=True)


def test_each_raster_of_a_project_gets_only_the_features_on_it(
    label_studio: LabelStudioServer, tmp_path: Path
) -> None:
    east = Affine(0.2, 0.0, LAMBERT93_20CM.c + 50_000, 0.0, -0.2, LAMBERT93_20CM.f)  # 50 km east
    paths = []
    for name, transform in (("west.tif", LAMBERT93_20CM), ("east.tif", east)):
        path = tmp_path / name
        with rasterio.open(path, "w", driver="GTiff", width=256, height=256, count=3, dtype="uint8",
                           crs="EPSG:2154", transform=transform) as dst:  # fmt: skip
            dst.write(synthetic(3, 256, 256, "uint8", seed=len(paths)))
        paths.append(path)
    import_file(label_studio, paths[0], "label two rasters")
    scene = import_file(label_studio, paths[1], "label two rasters")  # the same project: both rasters
    corners = [(10, 20), (60, 20), (60, 50), (10, 50)]
    between = Affine.translation(LAMBERT93_20CM.c + 25_000, LAMBERT93_20CM.f)  # on no raster
    shapes = [Polygon([grid @ xy for xy in corners]) for grid in (LAMBERT93_20CM, east, between)]
    frame = gpd.GeoDataFrame({"kind": ["building"] * 3}, geometry=shapes, crs="EPSG:2154").to_crs("EPSG:4326")
    source = tmp_path / "two.geojson"
    frame.to_file(source)
    client = label_studio.client()
    report = import_labels(scene.config, client, LabelImportOptions(source, class_field="kind"))
    assert (report.features_placed, report.not_placed) == (2, {OUTSIDE: 1})  # the one between: nowhere
    assert len(scene.tiles) == 2
    for tile in scene.tiles:
        (prediction,) = client.predictions(int(tile.task_id or 0))
        (region,) = prediction["result"]
        points = np.asarray(region["value"]["points"]) / 100 * 256
        assert points.min(axis=0) == pytest.approx((10, 20), abs=1e-6)  # its own feature, on its pixels
        assert points.max(axis=0) == pytest.approx((60, 50), abs=1e-6)
