"""Objects out of `sslseg predict`: measurements against hand-computed values, GeoJSON and ROI zips read back
with shapely and roifile, pixel sizes from TIFF metadata, and a batch that goes on past a corrupt file."""

import csv
import importlib.util
import json
import math
from pathlib import Path

import numpy as np
import pytest
import roifile
import shapely
import tifffile
from conftest import tiny_instance_checkpoint
from shapely.geometry import Polygon, shape
from typer.testing import CliRunner

from sslseg.cli import app
from sslseg.data.io import read_pixel_size, write_image
from sslseg.errors import ConfigError, DataError
from sslseg.objects import (
    measure_objects,
    object_polygons,
    objects_geojson,
    semantic_objects,
    write_geojson,
    write_measurements_csv,
    write_roi_zip,
)
from sslseg.predict import named_images, parse_formats


def _shapes() -> np.ndarray:
    """Objects of several kinds: a rectangle, a disk, an L, a one-pixel-wide line and two diagonal pixels."""
    labels = np.zeros((40, 48), np.int32)
    labels[2:7, 3:13] = 5  # 5 rows × 10 columns
    yy, xx = np.mgrid[:40, :48]
    labels[(yy - 25) ** 2 + (xx - 12) ** 2 <= 36] = 2
    labels[10:20, 30:33] = 7
    labels[17:20, 33:40] = 7  # the L's foot
    labels[30:31, 28:45] = 3
    labels[35, 2] = labels[36, 3] = 11  # touching only at a corner: one 8-connected object
    return labels


def _pixel_centres_inside(poly: Polygon, labels: np.ndarray, object_id: int) -> None:
    """The polygon holds the centre of every pixel of its object and of no other pixel."""
    rows, cols = np.nonzero(np.ones_like(labels, bool))
    inside = shapely.contains_xy(poly, cols + 0.5, rows + 0.5).reshape(labels.shape)
    np.testing.assert_array_equal(inside, labels == object_id)


# --- measurements -------------------------------------------------------------------------------------


def test_measurements_match_hand_computed_values(tmp_path):
    labels = np.zeros((20, 30), np.int32)
    labels[2:7, 3:13] = 5  # rectangle: 5 rows (2..6) × 10 columns (3..12)
    labels[10:13, 20:23] = 9  # 3 × 3 square
    image = np.zeros((20, 30, 2), np.uint16)
    image[..., 0] = 10
    image[..., 1] = np.arange(30)[None, :]  # channel 1 = column index
    t = measure_objects(labels, image)
    assert list(t["id"]) == [5, 9]
    r = 0  # the rectangle
    assert t["area_px"][r] == 50
    assert (t["centroid_y_px"][r], t["centroid_x_px"][r]) == (4.0, 7.5)
    assert [t[f"bbox_{k}_px"][r] for k in ("min_y", "min_x", "max_y", "max_x")] == [2, 3, 7, 13]
    assert t["perimeter_px"][r] == pytest.approx(2 * (5 - 1) + 2 * (10 - 1))  # centre-to-centre outline
    # variance of pixel centres along a side of n pixels is (n² - 1) / 12; eccentricity from the two
    var_y, var_x = (5**2 - 1) / 12, (10**2 - 1) / 12
    assert t["eccentricity"][r] == pytest.approx(math.sqrt(1 - var_y / var_x))
    assert t["mean_intensity_ch0"][r] == 10
    assert t["mean_intensity_ch1"][r] == pytest.approx(np.mean(np.arange(3, 13)))
    assert t["eccentricity"][1] == pytest.approx(0.0)  # a square is round to second moments
    assert "area_um2" not in t

    # square pixels of 0.5 µm: lengths × 0.5, areas × 0.25, positions also in µm
    um = measure_objects(labels, image, pixel_size=(0.5, 0.5))
    assert um["area_um2"][r] == pytest.approx(12.5)
    assert (um["centroid_y_um"][r], um["centroid_x_um"][r]) == pytest.approx((2.0, 3.75))
    assert um["perimeter_um"][r] == pytest.approx(13.0)
    assert um["eccentricity"][r] == pytest.approx(t["eccentricity"][r])
    assert um["area_px"][r] == 50 and um["bbox_max_x_px"][r] == 13

    # rectangular pixels: the physical shape decides eccentricity; perimeter needs square pixels
    an = measure_objects(labels, image, pixel_size=(0.5, 0.25))
    assert an["area_um2"][r] == pytest.approx(50 * 0.125)
    assert an["centroid_x_um"][r] == pytest.approx(7.5 * 0.25)
    assert an["eccentricity"][r] == pytest.approx(math.sqrt(1 - (var_y * 0.25) / (var_x * 0.0625)))
    assert math.isnan(an["perimeter_um"][r])

    # the CSV names the unit in each header and leaves an unknown value empty
    write_measurements_csv(tmp_path / "m.csv", an)
    rows = list(csv.DictReader((tmp_path / "m.csv").open()))
    assert len(rows) == 2 and rows[0]["id"] == "5" and rows[0]["perimeter_um"] == ""
    assert float(rows[0]["area_um2"]) == pytest.approx(6.25) and rows[0]["bbox_min_y_px"] == "2"


def test_semantic_regions_become_objects_with_their_class():
    classes = np.zeros((12, 12), np.int32)
    classes[1:3, 1:3] = 1
    classes[6:9, 6:9] = 1  # a second, separate region of class 1
    classes[1:4, 8:11] = 2
    instances, of_class = semantic_objects(classes)
    assert instances.max() == 3 and sorted(of_class.values()) == [1, 1, 2]
    np.testing.assert_array_equal(instances > 0, classes > 0)
    for i, k in of_class.items():
        assert set(np.unique(classes[instances == i])) == {k}
    table = measure_objects(instances, classes[:, :, None].astype(np.uint8), classes=of_class)
    assert sorted(zip(table["class"], table["area_px"], strict=True)) == [(1, 4), (1, 9), (2, 9)]
    features = objects_geojson(object_polygons(instances), table)["features"]
    assert sorted(f["properties"]["classification"]["name"] for f in features) == [
        "class 1",
        "class 1",
        "class 2",
    ]


# --- polygons: GeoJSON and ROI zips read back ---------------------------------------------------------


def test_geojson_reads_back_as_the_same_polygons(tmp_path):
    labels = _shapes()
    table = measure_objects(labels, labels[:, :, None].astype(np.float32))
    polygons = object_polygons(labels)
    write_geojson(tmp_path / "o.geojson", objects_geojson(polygons, table))
    doc = json.loads((tmp_path / "o.geojson").read_text())
    assert doc["type"] == "FeatureCollection" and len(doc["features"]) == 5
    areas = dict(zip(table["id"], table["area_px"], strict=True))
    perimeters = dict(zip(table["id"], table["perimeter_px"], strict=True))
    for feature in doc["features"]:
        props = feature["properties"]
        object_id = int(props["name"])
        assert props["objectType"] == "detection" and feature["geometry"]["type"] == "Polygon"
        assert props["measurements"]["area_px"] == areas[object_id]
        poly = shape(feature["geometry"])
        assert poly.is_valid and poly.equals_exact(polygons[object_id], 1e-9)
        _pixel_centres_inside(poly, labels, object_id)
        # the outline cuts each corner pixel by at most half a pixel: area within the outline's length
        assert abs(poly.area - areas[object_id]) <= 0.5 * perimeters[object_id] + 0.5
    rect = shape(next(f for f in doc["features"] if f["properties"]["name"] == "5")["geometry"])
    assert rect.bounds == (3.0, 2.0, 13.0, 7.0)  # pixel corners: x 3..13, y 2..7
    assert rect.area == pytest.approx(50 - 4 * 0.125)  # four convex corners cut by a triangle each


def test_roi_zip_reads_back_with_roifile(tmp_path):
    labels = _shapes()
    polygons = object_polygons(labels)
    write_roi_zip(tmp_path / "rois.zip", polygons)
    rois = roifile.roiread(tmp_path / "rois.zip")
    assert len(rois) == len(polygons) == 5
    for roi in rois:
        object_id = int(roi.name)
        assert roi.roitype == roifile.ROI_TYPE.POLYGON
        poly = Polygon(roi.coordinates())
        assert poly.symmetric_difference(polygons[object_id]).area < 1e-4
        _pixel_centres_inside(poly, labels, object_id)
    # no objects: a valid, empty ROI set
    write_roi_zip(tmp_path / "none.zip", object_polygons(np.zeros((8, 8), np.int32)))
    assert roifile.roiread(tmp_path / "none.zip") == []


# --- pixel size from metadata -------------------------------------------------------------------------


def test_pixel_size_is_read_from_each_metadata_source(tmp_path):
    a = np.zeros((8, 10), np.uint8)
    # plain TIFF resolution tags: pixels per centimetre, (x, y)
    tifffile.imwrite(tmp_path / "res.tif", a, resolution=(20000.0, 10000.0), resolutionunit="CENTIMETER")
    assert read_pixel_size(tmp_path / "res.tif") == pytest.approx((1.0, 0.5))
    tifffile.imwrite(tmp_path / "inch.tif", a, resolution=(25400.0, 25400.0), resolutionunit="INCH")
    assert read_pixel_size(tmp_path / "inch.tif") == pytest.approx((1.0, 1.0))
    # ImageJ: the unit in its description, the resolution tags in pixels per that unit
    tifffile.imwrite(tmp_path / "ij.tif", a, imagej=True, resolution=(4.0, 2.0), metadata={"unit": "um"})
    assert read_pixel_size(tmp_path / "ij.tif") == pytest.approx((0.5, 0.25))
    tifffile.imwrite(
        tmp_path / "ijmu.tif", a, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "\\u00B5m"}
    )
    assert read_pixel_size(tmp_path / "ijmu.tif") == pytest.approx((0.5, 0.5))
    tifffile.imwrite(tmp_path / "ijpx.tif", a, imagej=True, resolution=(2.0, 2.0), metadata={"unit": "pixel"})
    assert read_pixel_size(tmp_path / "ijpx.tif") is None
    # OME-XML physical sizes, with their units (µm when not given)
    meta = {"PhysicalSizeX": 300.0, "PhysicalSizeXUnit": "nm", "PhysicalSizeY": 0.4}
    tifffile.imwrite(tmp_path / "ome.ome.tif", a, ome=True, metadata=meta)
    assert read_pixel_size(tmp_path / "ome.ome.tif") == pytest.approx((0.4, 0.3))
    # nothing said, an image editor's 72 dpi, or a format without the tags: unknown
    tifffile.imwrite(tmp_path / "plain.tif", a)
    assert read_pixel_size(tmp_path / "plain.tif") is None
    tifffile.imwrite(tmp_path / "dpi.tif", a, resolution=(72.0, 72.0), resolutionunit="INCH")
    assert read_pixel_size(tmp_path / "dpi.tif") is None
    assert read_pixel_size(tmp_path / "x.png") is None


# --- batches ------------------------------------------------------------------------------------------


def test_formats_and_output_names(tmp_path):
    assert parse_formats("tiff, GeoJSON,roi,tiff") == ("tiff", "geojson", "roi")
    with pytest.raises(ConfigError, match="unknown output format.*shp.*choose from"):
        parse_formats("tiff,shp")
    img = np.zeros((8, 8), np.uint8)
    write_image(tmp_path / "in" / "plate1" / "a.tif", img)
    write_image(tmp_path / "in" / "plate2" / "a.tif", img)
    write_image(tmp_path / "in" / "out" / "plate1" / "a_labels.tif", img)  # a previous run's outputs
    write_image(tmp_path / "in" / "out" / "b.tif", img)  # an image someone put there
    names = named_images([tmp_path / "in"], tmp_path / "in" / "out")
    assert [n for _, n in names] == ["out/b", "plate1/a", "plate2/a"]  # subfolders kept: no collision
    assert len(named_images([tmp_path / "in" / "plate1"], tmp_path)) == 1  # output folder above the input
    with pytest.raises(DataError, match="would overwrite those of"):
        named_images([tmp_path / "in" / "plate1" / "a.tif", tmp_path / "in" / "plate2" / "a.tif"], tmp_path)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny instance model trained for one step (its predictions need not be good, only real)."""
    return tiny_instance_checkpoint(tmp_path_factory.mktemp("tiny"), inference={"tile_size": 64})


def test_batch_goes_on_past_a_corrupt_file_and_a_rerun_skips_finished_images(checkpoint, tmp_path):
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    for name in ("a", "b", "c"):
        write_image(images / f"{name}.tif", rng.integers(0, 255, (40, 44), dtype=np.uint8))
    good_b = (images / "b.tif").read_bytes()
    (images / "b.tif").write_bytes(good_b[: len(good_b) // 2])  # truncated in the middle of the batch
    out = tmp_path / "pred"
    args = ["predict", str(checkpoint), str(images), "--out", str(out), "--formats", "tiff,csv,geojson,roi"]
    runner = CliRunner()

    first = runner.invoke(app, args)
    assert first.exit_code == 1, first.output
    assert (
        "1 of 3 images failed" in first.output
        and "b.tif" in first.output
        and "truncated or corrupt" in first.output
    )
    suffixes = ("_labels.tif", "_objects.csv", "_objects.geojson", "_rois.zip")
    for name in ("a", "c"):
        assert all((out / f"{name}{s}").is_file() for s in suffixes), name
    assert not list(out.glob("b_*")) and not list(out.glob(".*"))  # nothing half-written
    assert not (out / "a_overlay.png").exists()  # only the formats asked for

    # every format describes the same objects
    labels = tifffile.imread(out / "a_labels.tif")
    ids = sorted(int(i) for i in np.unique(labels) if i)
    table = list(csv.DictReader((out / "a_objects.csv").open()))
    features = json.loads((out / "a_objects.geojson").read_text())["features"]
    rois = roifile.roiread(out / "a_rois.zip")
    assert [int(r["id"]) for r in table] == ids
    assert sorted(int(f["properties"]["name"]) for f in features) == ids
    assert sorted(int(r.name) for r in rois) == ids
    assert [float(r["area_px"]) for r in table] == [float((labels == i).sum()) for i in ids]

    # a rerun skips the finished images and retries the bad one
    stamp = (out / "a_labels.tif").stat().st_mtime_ns
    second = runner.invoke(app, args)
    assert second.exit_code == 1 and "skipped 2" in second.output and "b.tif" in second.output
    assert (out / "a_labels.tif").stat().st_mtime_ns == stamp

    # the file repaired and one of a's outputs lost: only those two images are predicted
    (images / "b.tif").write_bytes(good_b)
    (out / "a_rois.zip").unlink()
    third = runner.invoke(app, args)
    assert third.exit_code == 0, third.output
    assert "predicted 2 images" in third.output and "skipped 1" in third.output
    assert all((out / f"{n}{s}").is_file() for n in "abc" for s in suffixes)

    fourth = runner.invoke(app, [*args, "--overwrite", "--pixel-size", "0.5"])
    assert fourth.exit_code == 0 and "predicted 3 images" in fourth.output
    header = (out / "c_objects.csv").read_text().splitlines()[0].split(",")
    assert {"area_px", "area_um2", "perimeter_um", "centroid_x_um"} <= set(header)


def test_block_wise_prediction_writes_every_format_and_parts_share_a_batch(checkpoint, tmp_path):
    rng = np.random.default_rng(1)
    images = tmp_path / "images"
    write_image(images / "big.tif", rng.integers(0, 255, (150, 130), dtype=np.uint8))
    write_image(images / "small.tif", rng.integers(0, 255, (40, 44), dtype=np.uint8))
    out = tmp_path / "pred"
    formats = "tiff,zarr,csv,geojson,roi,overlay"
    base = ["predict", str(checkpoint), "--out", str(out), "--formats", formats, "--pixel-size", "0.5"]
    runner = CliRunner()
    # the two shares of the sorted list: part 1 of 2 is big.tif alone, part 2 small.tif
    first = runner.invoke(app, [*base, str(images), "--block-size", "64", "--part", "1/2"])
    assert first.exit_code == 0, first.output
    assert "predicted 1 images" in first.output and not list(out.glob("small_*"))
    labels = tifffile.imread(out / "big_labels.tif")
    with tifffile.TiffFile(out / "big_labels.tif") as tif:
        assert tif.is_bigtiff and tif.pages[0].is_tiled and labels.shape == (150, 130)
    assert read_pixel_size(out / "big_labels.tif") == pytest.approx((0.5, 0.5))
    ids = sorted(int(i) for i in np.unique(labels) if i)
    assert ids == list(range(1, len(ids) + 1))  # one global id per object, no gaps
    table = list(csv.DictReader((out / "big_objects.csv").open()))
    assert sorted(int(r["id"]) for r in table) == ids
    for r in table:  # positions and areas in the whole image's coordinates, µm beside pixels
        i = int(r["id"])
        rows, cols = np.nonzero(labels == i)
        assert float(r["area_px"]) == len(rows) and float(r["area_um2"]) == pytest.approx(0.25 * len(rows))
        assert float(r["centroid_y_px"]) == pytest.approx(rows.mean())
        assert int(r["bbox_min_x_px"]) == cols.min() and int(r["bbox_max_y_px"]) == rows.max() + 1
    features = json.loads((out / "big_objects.geojson").read_text())["features"]
    assert sorted(int(f["properties"]["name"]) for f in features) == ids
    rois = {int(r.name): r for r in roifile.roiread(out / "big_rois.zip")}
    assert sorted(rois) == ids
    if importlib.util.find_spec("zarr") is not None:
        from sslseg.data.lazy import open_image

        with open_image(out / "big_labels.zarr") as stored:
            np.testing.assert_array_equal(stored.read_all()[..., 0], labels)
            assert stored.pixel_size == pytest.approx((0.5, 0.5))
    second = runner.invoke(app, [*base, str(images), "--part", "2/2"])
    assert (
        second.exit_code == 0
        and (out / "small_labels.tif").is_file()
        and (out / "small_overlay.png").is_file()
    )
    bad = runner.invoke(app, [*base, str(images), "--part", "3/2"])
    assert isinstance(bad.exception, ConfigError) and "--part 3/2" in str(bad.exception)


def test_zarr_input_is_predicted_into_an_ome_zarr_label_map(checkpoint, tmp_path):
    zarr = pytest.importorskip("zarr")
    from sslseg.data.lazy import open_image

    image = np.random.default_rng(2).integers(0, 255, (60, 50), dtype=np.uint8)
    group = zarr.open_group(str(tmp_path / "plate.zarr"), mode="w", zarr_format=2)
    group.create_array("0", shape=image.shape, chunks=(32, 32), dtype=np.uint8)[...] = image
    axes = [{"name": n, "type": "space", "unit": "micrometer"} for n in "yx"]
    transform = [{"type": "scale", "scale": [0.4, 0.4]}]
    group.attrs["multiscales"] = [
        {"version": "0.4", "axes": axes, "datasets": [{"path": "0", "coordinateTransformations": transform}]}
    ]
    out = tmp_path / "pred"
    result = CliRunner().invoke(
        app, ["predict", str(checkpoint), str(tmp_path / "plate.zarr"), "--out", str(out)]
    )
    assert result.exit_code == 0, result.output
    assert not (out / "plate_labels.tif").exists() and (out / "plate_overlay.png").is_file()
    with open_image(out / "plate_labels.zarr") as labels:
        assert labels.shape == (60, 50, 1) and labels.pixel_size == pytest.approx((0.4, 0.4))
