"""Objects of a semantic model's class map from block-wise prediction: the connected regions of each class
found as the stitched map's bands arrive, the same as in the whole map (sslseg.objects.RegionStream)."""

from __future__ import annotations

import csv
import json

import numpy as np
import pytest
import roifile
import tifffile
from conftest import tiny_instance_checkpoint

from sslseg.data.io import write_image, write_label
from sslseg.data.synth import generate_sample
from sslseg.objects import RegionStream, measure_objects, semantic_objects
from sslseg.predict import predict_files


def _regions(instances: np.ndarray, classes: dict[int, int]) -> set[tuple[int, frozenset[int]]]:
    """Each object as (class, set of its flat pixel indices): comparable whatever the numbering."""
    flat = instances.ravel()
    order = np.argsort(flat, kind="stable")
    bounds = np.searchsorted(flat[order], np.arange(1, int(flat.max(initial=0)) + 2))
    return {(classes[i], frozenset(order[bounds[i - 1] : bounds[i]].tolist())) for i in classes}


def _streamed(class_map: np.ndarray, band: int) -> tuple[np.ndarray, dict[int, int], int]:
    """The objects RegionStream hands on, pasted into one map, with the most rows it held at once."""
    out = np.zeros(class_map.shape, np.int64)
    classes: dict[int, int] = {}
    stream = RegionStream(
        lambda ids, of_class, y0: (out[y0 : y0 + len(ids)].__iadd__(ids), classes.update(of_class))
    )
    held = 0
    for y0 in range(0, class_map.shape[0], band):
        stream.add(y0, class_map[y0 : y0 + band])
        held = max(held, len(stream.rows))
    stream.finish()
    return out, classes, held


@pytest.mark.parametrize("band", [1, 3, 7, 64])
def test_streamed_regions_are_those_of_the_whole_map(band):
    rng = np.random.default_rng(0)
    class_map = (rng.random((40, 50)) < 0.35).astype(np.uint32) * rng.integers(1, 4, (40, 50)).astype(
        np.uint32
    )
    class_map[:, 20] = 2  # a region running through every band
    class_map[10, 30], class_map[11, 31] = 3, 3  # joined only diagonally, across a band border for band=1
    out, classes, _ = _streamed(class_map, band)
    assert sorted(classes) == list(range(1, len(classes) + 1))  # ids 1..N, each once
    assert _regions(out, classes) == _regions(*semantic_objects(class_map))


def test_only_the_rows_of_open_regions_are_kept():
    class_map = np.zeros((300, 20), np.uint32)
    class_map[5:300:10, 2:18] = 1  # 30 one-row stripes, each complete when the next band comes
    _, classes, held = _streamed(class_map, 16)
    assert len(classes) == 30 and held <= 16


@pytest.fixture(scope="module")
def semantic_checkpoint(tmp_path_factory):
    """A tiny two-class semantic model (nuclei vs background) trained one step on synthetic images."""
    root = tmp_path_factory.mktemp("semantic")
    data = root / "masks"
    for i in range(4):
        image, labels = generate_sample(i, 48)
        write_image(data / "images" / f"s{i}.tif", image)
        write_label(data / "labels" / f"s{i}.tif", (labels > 0).astype(np.uint8))
    return tiny_instance_checkpoint(root, data={"train": data, "task": "semantic"})


def test_block_wise_semantic_prediction_writes_the_regions_as_objects(semantic_checkpoint, tmp_path):
    image, _ = generate_sample(7, (150, 130))
    write_image(tmp_path / "big.tif", image)
    out = tmp_path / "pred"
    report = predict_files(
        semantic_checkpoint,
        [tmp_path / "big.tif"],
        out,
        progress=False,
        formats="tiff,csv,geojson,roi",
        block_size=64,
        pixel_size=0.5,
    )
    assert not report.failed, report.failed
    classes_map = tifffile.imread(out / "big_labels.tif")
    instances, of_class = semantic_objects(classes_map)
    assert of_class, "the tiny model should find some foreground"
    expected = measure_objects(instances, image, (0.5, 0.5), of_class)
    table = list(csv.DictReader((out / "big_objects.csv").open()))
    key = lambda c, a, y, x: (int(c), float(a), round(float(y), 6), round(float(x), 6))  # noqa: E731
    assert sorted(
        key(r["class"], r["area_px"], r["centroid_y_px"], r["centroid_x_px"]) for r in table
    ) == sorted(
        key(*v)
        for v in zip(
            expected["class"],
            expected["area_px"],
            expected["centroid_y_px"],
            expected["centroid_x_px"],
            strict=True,
        )
    )
    assert "area_um2" in table[0]
    features = json.loads((out / "big_objects.geojson").read_text())["features"]
    assert len(features) == len(table) == len(roifile.roiread(out / "big_rois.zip"))
    assert {f["properties"]["classification"]["name"] for f in features} <= {"class 1"}


def test_whole_image_semantic_prediction_writes_the_regions_as_objects(semantic_checkpoint, tmp_path):
    image, _ = generate_sample(8, (60, 52))
    write_image(tmp_path / "small.tif", image)
    out = tmp_path / "pred"
    report = predict_files(
        semantic_checkpoint, [tmp_path / "small.tif"], out, progress=False, formats="tiff,csv,roi"
    )
    assert not report.failed, report.failed
    instances, of_class = semantic_objects(tifffile.imread(out / "small_labels.tif"))
    table = list(csv.DictReader((out / "small_objects.csv").open()))
    assert len(table) == len(of_class) == len(roifile.roiread(out / "small_rois.zip"))
    assert sorted(float(r["area_px"]) for r in table) == sorted(
        float((instances == i).sum()) for i in of_class
    )
    assert {r["class"] for r in table} <= {"1"}
