"""Finding samples in the layouts users have: pairs, Kaggle DSB, MoNuSeg XML, COCO JSON, unlabeled."""

from __future__ import annotations

import json
import logging
import pickle
from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import real_data
from PIL import Image

from sslseg.data.layouts import (
    CocoAnnotations,
    LabelFile,
    MonusegXml,
    ObjectMaskFolder,
    Sample,
    decode_rle_string,
    detect_layout,
    find_samples,
    rle_to_mask,
)
from sslseg.errors import DataError

H, W = 16, 20


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8)


def _mask(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[y0:y1, x0:x1] = 255
    return mask


def _pairs(
    root: Path, names: list[str], images: str = "images", labels: str = "labels", suffix: str = ""
) -> Path:
    for name in names:
        _png(root / images / f"{name}.png", _image())
        _png(root / labels / f"{name}{suffix}.png", _mask(2, 6, 3, 9))
    return root


# --- pairs -----------------------------------------------------------------------------------------


def test_pairs_same_stem(tmp_path: Path) -> None:
    root = _pairs(tmp_path, ["b", "a"])
    assert detect_layout(root) == "pairs"
    samples = find_samples(root)
    assert [s.id for s in samples] == ["a", "b"]
    assert isinstance(samples[0].label, LabelFile)
    assert samples[0].label.path == root / "labels" / "a.png"
    assert samples[0].label.load((H, W)).shape == (H, W)


def test_pairs_ph2_style_suffix_detected(tmp_path: Path) -> None:
    (tmp_path / "images").mkdir()
    for name in ["IMD002", "IMD003"]:
        Image.fromarray(_image()).save(tmp_path / "images" / f"{name}.jpg")
        _png(tmp_path / "masks" / f"{name}_lesion.png", _mask(1, 5, 1, 5))
    samples = find_samples(tmp_path)
    assert [s.id for s in samples] == ["IMD002", "IMD003"]
    assert samples[1].label.path.name == "IMD003_lesion.png"


def test_pairs_given_suffix_and_folders(tmp_path: Path) -> None:
    root = _pairs(tmp_path, ["ISIC_1", "ISIC_2"], images="rgb", labels="seg", suffix="_segmentation")
    samples = find_samples(root, mask_suffix="_segmentation", images_dir="rgb", labels_dir="seg")
    assert [s.label.path.name for s in samples] == ["ISIC_1_segmentation.png", "ISIC_2_segmentation.png"]
    with pytest.raises(DataError, match="without an image"):
        find_samples(root, mask_suffix="_mask", images_dir="rgb", labels_dir="seg")


def test_pairs_orphans_are_listed(tmp_path: Path) -> None:
    root = _pairs(tmp_path, ["a", "b"])
    for i in range(7):
        _png(root / "images" / f"lonely{i}.png", _image())
    with pytest.raises(DataError, match=r"7 images without a label: lonely0.png, .* and 2 more") as info:
        find_samples(root)
    assert info.value.path == root / "images"
    (root / "images" / "a.png").unlink()
    with pytest.raises(DataError, match="a.png: label has no image") as info:
        find_samples(root)
    assert "7 images without a label" in str(info.value)


def test_orphan_mask_named(tmp_path: Path) -> None:
    root = _pairs(tmp_path, ["a", "b"])
    _png(root / "labels" / "c.png", _mask(0, 2, 0, 2))
    with pytest.raises(DataError, match="label has no image") as info:
        find_samples(root)
    assert info.value.path == root / "labels" / "c.png"


def test_duplicate_stems(tmp_path: Path) -> None:
    root = _pairs(tmp_path, ["a", "b"])
    tifffile.imwrite(root / "images" / "a.tif", _image())
    with pytest.raises(DataError, match=r"duplicate stem 'a': images/a.png, images/a.tif"):
        find_samples(root)


def test_missing_and_empty_root(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        find_samples(tmp_path / "nothing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty dataset") as info:
        find_samples(tmp_path / "empty", layout="dsb")
    assert info.value.path == tmp_path / "empty"
    assert str(info.value).count("layout 'dsb'") == 1  # named once, not once per layer
    (tmp_path / "images").mkdir()
    (tmp_path / "labels").mkdir()
    with pytest.raises(DataError, match="empty dataset"):
        find_samples(tmp_path, layout="pairs")


# --- Kaggle DSB ------------------------------------------------------------------------------------


def _dsb(root: Path) -> Path:
    for sid, boxes in {
        "s1": [(1, 5, 1, 5), (8, 12, 2, 7), (3, 9, 12, 18)],
        "s2": [(0, 4, 0, 4), (2, 6, 2, 6)],
    }.items():
        _png(root / sid / "images" / f"{sid}.png", _image())
        for k, box in enumerate(boxes):
            _png(root / sid / "masks" / f"m{k}.png", _mask(*box))
    return root


def test_dsb_object_masks_to_instance_map(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    root = _dsb(tmp_path)
    assert detect_layout(root) == "dsb"
    samples = find_samples(root)
    assert [s.id for s in samples] == ["s1", "s2"]
    assert isinstance(samples[0].label, ObjectMaskFolder)
    labels = samples[0].label.load()
    assert labels.shape == (H, W)
    assert [int((labels == i).sum()) for i in range(1, 4)] == [16, 20, 36]
    with caplog.at_level(logging.WARNING):
        overlapping = samples[1].label.load((H, W))
    assert overlapping[3, 3] == 2 and overlapping[0, 0] == 1  # the later mask wins
    assert "4 pixels lie in more than one object mask" in caplog.text


def test_dsb_sample_without_masks(tmp_path: Path) -> None:
    root = _dsb(tmp_path)
    _png(root / "s3" / "images" / "s3.png", _image())
    with pytest.raises(DataError, match="no object masks") as info:
        find_samples(root)
    assert info.value.path == root / "s3" / "images" / "s3.png"


# --- MoNuSeg XML -----------------------------------------------------------------------------------


def _square(x0: float, y0: float, x1: float, y1: float, rid: int) -> str:
    vertices = "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in [(x0, y0), (x1, y0), (x1, y1), (x0, y1)])
    return f'<Region Id="{rid}"><Attributes/><Vertices>{vertices}</Vertices></Region>'


def _monuseg_xml(path: Path) -> Path:
    regions = _square(2, 3, 11, 12, 1) + _square(14, 1, 18, 5, 2)  # 10×10 and 5×5 pixels, borders included
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        '<Annotations MicronsPerPixel="0.25"><Annotation Id="1"><Regions>'
        f"{regions}</Regions></Annotation></Annotations>"
    )
    return path


@pytest.mark.parametrize("xml_folder", [".", "Annotations"])
def test_monuseg_polygons(tmp_path: Path, xml_folder: str) -> None:
    tifffile.imwrite(tmp_path / "TCGA-1.tif", _image())
    _monuseg_xml(tmp_path / xml_folder / "TCGA-1.xml")
    assert detect_layout(tmp_path) == "monuseg"
    [sample] = find_samples(tmp_path)
    assert isinstance(sample.label, MonusegXml)
    labels = sample.label.load()  # shape taken from the image
    assert labels.shape == (H, W)
    assert int((labels == 1).sum()) == 100 and int((labels == 2).sum()) == 25
    assert labels[3, 2] == 1 and labels[12, 11] == 1 and labels[2, 2] == 0


def test_monuseg_orphan_xml(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "a.tif", _image())
    _monuseg_xml(tmp_path / "a.xml")
    _monuseg_xml(tmp_path / "b.xml")
    with pytest.raises(DataError, match="annotation has no image") as info:
        find_samples(tmp_path)
    assert info.value.path == tmp_path / "b.xml"


def test_monuseg_corrupt_xml(tmp_path: Path) -> None:
    tifffile.imwrite(tmp_path / "a.tif", _image())
    (tmp_path / "a.xml").write_text("<Annotations><Region><Vertices><Vertex X=")
    [sample] = find_samples(tmp_path, layout="monuseg")
    with pytest.raises(DataError, match="corrupt XML"):
        sample.label.load((H, W))


# --- COCO ------------------------------------------------------------------------------------------


def test_rle_string_known_vectors() -> None:
    assert decode_rle_string("52203") == [5, 2, 2, 2, 5]  # 4×4 example from the COCO format
    # Hand-encoded: 40 needs two chars ("X1"); later runs are stored as differences to two runs back,
    # 2 - 3 = -1 -> "O", 14 - 40 = -26 -> "VO".
    assert decode_rle_string("53X1OVO") == [5, 3, 40, 2, 14]
    mask = rle_to_mask([5, 2, 2, 2, 5], 4, 4)
    expected = np.zeros((4, 4), bool)
    expected[1:3, 1:3] = True  # column-major runs: skip 5, take rows 1-2 of column 1, then of column 2
    np.testing.assert_array_equal(mask, expected)


def _coco(root: Path, json_name: str = "train.json") -> Path:
    """One image with a polygon, an uncompressed RLE and a compressed RLE annotation."""
    _png(root / "images" / "cells.png", _image())
    runs, compressed = _runs_for_box(10, 14, 2, 5), _runs_for_box(14, 16, 15, 20)
    data = {
        "images": [{"id": 7, "file_name": "cells.png", "height": H, "width": W}],
        "annotations": [
            {"id": 1, "image_id": 7, "category_id": 1, "segmentation": [[2, 2, 8, 2, 8, 6, 2, 6]]},
            {"id": 2, "image_id": 7, "segmentation": {"size": [H, W], "counts": runs}},
            {"id": 3, "image_id": 7, "segmentation": {"size": [H, W], "counts": _encode(compressed)}},
        ],
        "categories": [{"id": 1, "name": "cell"}],
    }
    (root / json_name).write_text(json.dumps(data))
    return root / json_name


def _runs_for_box(y0: int, y1: int, x0: int, x1: int) -> list[int]:
    """Uncompressed COCO RLE of a box: runs of 0 and 1 over the pixels in column-major order."""
    mask = np.zeros((H, W), bool)
    mask[y0:y1, x0:x1] = True
    flat = mask.T.ravel().astype(int)
    runs, value, count = [], 0, 0
    for v in flat:
        if v == value:
            count += 1
        else:
            runs.append(count)
            value, count = v, 1
    runs.append(count)
    return runs


def _encode(counts: list[int]) -> str:
    """Compressed COCO RLE string (the inverse of the decoder, for building test data)."""
    out = []
    for i, x in enumerate(counts):
        if i > 2:
            x -= counts[i - 2]
        more = True
        while more:
            c = x & 0x1F
            x >>= 5
            more = x != -1 if c & 0x10 else x != 0
            out.append(chr(c + (0x20 if more else 0) + 48))
    return "".join(out)


@pytest.mark.parametrize("via_json_path", [False, True])
def test_coco_polygon_and_rle(tmp_path: Path, via_json_path: bool) -> None:
    json_path = _coco(tmp_path)
    assert detect_layout(tmp_path) == "coco"
    [sample] = find_samples(json_path if via_json_path else tmp_path)
    assert sample.id == "cells" and sample.image == tmp_path / "images" / "cells.png"
    assert isinstance(sample.label, CocoAnnotations)
    labels = sample.label.load()
    expected = np.zeros((H, W), np.uint16)
    expected[2:6, 2:8] = 1  # polygon (2,2)-(8,6) in COCO's continuous coordinates: 6×4 pixels
    expected[10:14, 2:5] = 2
    expected[14:16, 15:20] = 3
    np.testing.assert_array_equal(labels, expected)
    with pytest.raises(DataError, match="the JSON says 16×20"):
        sample.label.load((H + 1, W))


def test_coco_missing_image_and_several_jsons(tmp_path: Path) -> None:
    json_path = _coco(tmp_path)
    (tmp_path / "images" / "cells.png").unlink()
    _png(tmp_path / "images" / "other.png", _image())
    with pytest.raises(DataError, match="'cells.png' .* was not found") as info:
        find_samples(json_path)
    assert info.value.path == json_path
    _coco(tmp_path, "val.json")
    with pytest.raises(DataError, match="2 COCO .json files"):
        find_samples(tmp_path)


# --- unlabeled, pickling ---------------------------------------------------------------------------


def test_unlabeled_recursive(tmp_path: Path) -> None:
    _png(tmp_path / "a" / "x.png", _image())
    _png(tmp_path / "b" / "x.png", _image())
    tifffile.imwrite(tmp_path / "b" / "y.tif", _image())
    _png(tmp_path / "masks" / "x.png", _mask(0, 1, 0, 1))  # label folders are not images
    (tmp_path / "notes.txt").write_text("not an image")
    assert detect_layout(tmp_path) == "unlabeled"
    samples = find_samples(tmp_path)
    assert [s.id for s in samples] == ["a__x", "b__x", "y"]
    assert all(s.label is None for s in samples)


def test_samples_pickle(tmp_path: Path) -> None:
    samples = [
        *find_samples(_pairs(tmp_path / "p", ["a"])),
        *find_samples(_dsb(tmp_path / "d")),
        *find_samples(_coco(tmp_path / "c")),
    ]
    (tmp_path / "m").mkdir()
    tifffile.imwrite(tmp_path / "m" / "a.tif", _image())
    _monuseg_xml(tmp_path / "m" / "a.xml")
    samples += find_samples(tmp_path / "m")
    copies = pickle.loads(pickle.dumps(samples))
    assert copies == samples and all(isinstance(s, Sample) for s in copies)
    for original, copy in zip(samples, copies, strict=True):
        np.testing.assert_array_equal(original.label.load((H, W)), copy.label.load((H, W)))


# --- real data -------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_monuseg_sample() -> None:
    samples = find_samples(real_data("monuseg_format_sample"))
    assert len(samples) == 2 and all(isinstance(s.label, MonusegXml) for s in samples)
    labels = samples[0].label.load()
    assert labels.shape == (1000, 1000) and labels.max() > 100


@pytest.mark.realdata
def test_real_dsb_kaggle_layout() -> None:
    root = real_data("dsb2018", "stage1_test")
    assert detect_layout(root) == "dsb"
    samples = find_samples(root)
    assert len(samples) == 65
    for sample in samples[:2]:
        labels = sample.label.load()
        assert labels.max() == len(sample.label.mask_files())


@pytest.mark.realdata
def test_real_ph2_suffix() -> None:
    samples = find_samples(real_data("ph2"))
    assert len(samples) == 200
    assert samples[0].label.path.name == f"{samples[0].id}_lesion.png"
    assert set(np.unique(samples[0].label.load()).tolist()) <= {0, 255}
