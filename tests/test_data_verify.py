"""verify_dataset collects every planted defect at once; convert_dataset writes a readable pairs layout."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import real_data
from PIL import Image

from sslseg.data.io import read_image, read_label
from sslseg.data.layouts import detect_layout, find_samples
from sslseg.data.verify import Problem, VerifyReport, convert_dataset, verify_dataset
from sslseg.errors import DataError

H, W = 16, 20


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _image(channels: int = 3) -> np.ndarray:
    rng = np.random.default_rng(1)
    return rng.integers(0, 256, (H, W, channels), dtype=np.uint8).squeeze()


def _mask(value: int = 255, shape: tuple[int, int] = (H, W)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    mask[2:8, 3:9] = value
    return mask


def _clean(root: Path, n: int = 3) -> Path:
    for i in range(n):
        _png(root / "images" / f"s{i}.png", _image())
        _png(root / "masks" / f"s{i}.png", _mask())
    return root


def _paths(report: VerifyReport, severity: str = "error") -> set[str]:
    return {p.path.name for p in report.problems if p.severity == severity}


def test_clean_dataset_is_ok(tmp_path: Path) -> None:
    report = verify_dataset(_clean(tmp_path))
    assert report.ok and report.problems == []
    assert (report.layout, report.task, report.n_samples, report.n_checked) == ("pairs", "semantic", 3, 3)
    assert report.format().splitlines()[-1].endswith("0 errors, 0 warnings")


def test_every_planted_defect_is_reported(tmp_path: Path) -> None:
    root = _clean(tmp_path, 2)
    (root / "images" / "zero.png").touch()
    _png(root / "masks" / "zero.png", _mask())
    _png(root / "images" / "trunc.png", _image())
    full = _png(root / "masks" / "trunc_full.png", _mask()).read_bytes()
    (root / "masks" / "trunc_full.png").unlink()
    (root / "masks" / "trunc.png").write_bytes(full[: len(full) // 2])
    _png(root / "images" / "small.png", _image())
    _png(root / "masks" / "small.png", _mask(shape=(H - 4, W)))
    _png(root / "images" / "three.png", _image())
    three = _mask(1)
    three[10:12, 10:12] = 2
    _png(root / "masks" / "three.png", three)
    _png(root / "masks" / "orphan_mask.png", _mask())
    _png(root / "images" / "orphan_image.png", _image())
    _png(root / "images" / "dup.png", _image())
    tifffile.imwrite(root / "images" / "dup.tif", _image())
    _png(root / "masks" / "dup.png", _mask())

    report = verify_dataset(root)
    assert not report.ok
    errors = {p.path.name: p.message for p in report.errors}
    assert "file is empty (0 bytes)" in errors["zero.png"]
    assert "truncated or corrupt PNG" in errors["trunc.png"]
    assert "does not match image size" in errors["small.png"]
    assert "{0, 1, 2}" in errors["three.png"]
    assert "no image" in errors["orphan_mask.png"]
    assert "orphan_image.png" not in errors  # an image without a label is unlabeled, not an error
    assert root / "images" / "orphan_image.png" in report.unlabeled
    assert "duplicate stem 'dup'" in errors["dup.png"]
    assert report.n_errors == 6
    text = report.format()
    assert text.count("\n") == len(report.problems) + 1  # the problems, the image counts, the verdict
    assert "6 errors" in text.splitlines()[-1]
    assert all(isinstance(p, Problem) and str(root) in str(p.path) for p in report.problems)


def test_partly_labelled_folder_reports_the_labelled_and_unlabeled_images(tmp_path: Path) -> None:
    root = _clean(tmp_path, 2)
    for i in range(5):
        _png(root / "images" / f"u{i}.png", _image())
    report = verify_dataset(root)
    assert report.ok and report.problems == [], report.format()
    assert (len(report.labelled), len(report.unlabeled), report.n_samples) == (2, 5, 7)
    lines = report.format().splitlines()
    assert lines[0].startswith("IMAGES  2 labelled") and "5 unlabeled" in lines[0]
    assert "e.g. u0.png, u1.png, u2.png, …" in lines[0]
    for mask in (root / "masks").iterdir():  # labels that match no image: a warning, not 7 errors
        mask.rename(mask.with_name("x" + mask.name))
    report = verify_dataset(root)
    assert [p.message for p in report.errors] == ["label has no image of the same stem in images/"] * 2
    assert "none of the 7 images has a label" in report.warnings[0].message


def test_empty_and_missing_roots(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    report = verify_dataset(tmp_path / "empty")
    assert not report.ok and "empty dataset" in report.problems[0].message
    report = verify_dataset(tmp_path / "missing")
    assert not report.ok and report.problems[0].path == tmp_path / "missing"


def test_mixed_channels_and_binary_encodings_are_warnings(tmp_path: Path) -> None:
    root = _clean(tmp_path, 2)
    _png(root / "images" / "gray.png", _image(1))
    _png(root / "masks" / "gray.png", _mask(1))
    report = verify_dataset(root)
    assert report.ok and report.n_warnings == 2
    messages = " ".join(p.message for p in report.warnings)
    assert "mixed channel counts" in messages and "1 channel in 1 (e.g. gray.png)" in messages
    assert "mix two encodings" in messages


def test_instance_maps_and_negative_values(tmp_path: Path) -> None:
    for i in range(3):
        _png(tmp_path / "images" / f"s{i}.png", _image())
        labels = np.zeros((H, W), np.int32)
        for k in range(1, 6):
            labels[k * 2 : k * 2 + 2, 1:5] = k
        if i == 2:
            labels[0, 0] = -1
        (tmp_path / "labels").mkdir(exist_ok=True)
        tifffile.imwrite(tmp_path / "labels" / f"s{i}.tif", labels)
    report = verify_dataset(tmp_path)
    assert report.task == "instance"
    assert _paths(report) == {"s2.tif"} and "negative" in report.errors[0].message
    # As semantic maps, most labels are not binary, so they count as class maps {0..5}: only -1 is wrong.
    assert _paths(verify_dataset(tmp_path, task="semantic")) == {"s2.tif"}


def test_dsb_overlap_and_limit(tmp_path: Path) -> None:
    for sid in ["a", "b", "c"]:
        _png(tmp_path / sid / "images" / f"{sid}.png", _image())
        _png(tmp_path / sid / "masks" / "1.png", _mask())
        _png(tmp_path / sid / "masks" / "2.png", _mask())
    report = verify_dataset(tmp_path, limit=2)
    assert report.layout == "dsb" and report.task == "instance"
    assert (report.n_samples, report.n_checked) == (3, 2)
    assert report.ok and [p.path.parent.name for p in report.warnings] == ["a", "b"]
    assert "36 pixels lie in more than one object mask" in report.warnings[0].message


def test_convert_dsb_and_monuseg_to_pairs(tmp_path: Path) -> None:
    dsb = tmp_path / "dsb"
    for sid, n in [("a", 2), ("b", 3)]:
        _png(dsb / sid / "images" / f"{sid}.png", _image(4))
        for k in range(n):
            mask = np.zeros((H, W), np.uint8)
            mask[k * 4 : k * 4 + 3, 2:6] = 255
            _png(dsb / sid / "masks" / f"{k}.png", mask)
    out = tmp_path / "out"
    assert convert_dataset(dsb, out) == 2
    assert detect_layout(out) == "pairs"
    samples = find_samples(out)
    assert [s.id for s in samples] == ["a", "b"]
    np.testing.assert_array_equal(read_image(samples[0].image), _image(4))
    assert read_label(samples[1].label.path).max() == 3
    assert verify_dataset(out).ok

    mon = tmp_path / "mon"
    mon.mkdir()
    tifffile.imwrite(mon / "t.tif", _image())
    square = "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in [(1, 1), (4, 1), (4, 4), (1, 4)])
    region = f"<Region Id='1'><Vertices>{square}</Vertices></Region>"
    (mon / "t.xml").write_text(f"<Annotations>{region}</Annotations>")
    assert convert_dataset(mon, tmp_path / "out2") == 1
    assert int((read_label(tmp_path / "out2" / "labels" / "t.tif") == 1).sum()) == 16


def test_convert_refuses_broken_dataset(tmp_path: Path) -> None:
    root = _clean(tmp_path / "d", 1)
    _png(root / "images" / "orphan.png", _image())
    with pytest.raises(DataError, match="orphan.png"):
        convert_dataset(root, tmp_path / "out")


# --- real data -------------------------------------------------------------------------------------


@pytest.mark.realdata
def test_real_monuseg_verifies() -> None:
    report = verify_dataset(real_data("monuseg_format_sample"))
    assert report.ok, report.format()
    assert (report.layout, report.task, report.n_checked) == ("monuseg", "instance", 2)


@pytest.mark.realdata
def test_real_dsb_first_five() -> None:
    report = verify_dataset(real_data("dsb2018", "stage1_test"), limit=5)
    assert report.ok, report.format()
    assert (report.layout, report.n_samples, report.n_checked) == ("dsb", 65, 5)


@pytest.mark.realdata
def test_real_semantic_sets_first_five() -> None:
    for parts in [("ph2",), ("em_isbi2012", "train")]:
        report = verify_dataset(real_data(*parts), limit=5)
        assert report.ok and report.problems == [], report.format()
        assert (report.layout, report.task) == ("pairs", "semantic")
