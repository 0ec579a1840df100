"""No test image in pretraining: matched by sample id and by pixels (whatever the file format), left out
with a warning or stopped with an error naming the files; the study names its test images to every
pretraining, and hands its working scale over."""

from __future__ import annotations

import json
import shutil
import warnings

import numpy as np
import pytest
import tifffile
from PIL import Image

from sslseg.config import HeldoutImages, PretrainConfig
from sslseg.data.datasets import load_unlabeled, read_images
from sslseg.data.heldout import drop_heldout, heldout_index, pixel_digest
from sslseg.data.io import read_image
from sslseg.data.layouts import find_samples
from sslseg.data.splits import save_split
from sslseg.data.synth import write_synthetic_dataset
from sslseg.errors import DataError
from sslseg.pretrain import pretrain
from sslseg.study.spec import StudyConfig, expand


def test_pixel_digest_ignores_storage_but_not_pixels(tmp_path):
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 255, (24, 20), dtype=np.uint8)
    Image.fromarray(gray).save(tmp_path / "a.png")
    tifffile.imwrite(tmp_path / "a.tif", gray)
    rgba = np.dstack([gray, gray, gray, np.full_like(gray, 255)])  # gray saved as RGBA, constant alpha
    Image.fromarray(rgba).save(tmp_path / "b.png")
    digests = {pixel_digest(read_image(tmp_path / n)) for n in ("a.png", "a.tif", "b.png")}
    assert len(digests) == 1
    big_endian = read_image(tmp_path / "a.tif").astype(">u2")  # same values, other byte order and depth
    assert pixel_digest(big_endian) == pixel_digest(gray[..., None].astype("<u2"))
    changed = gray.copy()
    changed[3, 4] ^= 1
    assert pixel_digest(changed[..., None]) not in digests


@pytest.fixture()
def folders(tmp_path):
    """A labelled dataset whose split holds two test images, a separate test folder, and an unlabeled
    folder with 3 new images, a renamed TIFF copy of a split test image, and a same-named file of the
    test folder (its pixels changed)."""
    data = write_synthetic_dataset(tmp_path / "data", n_images=6, size=48, seed=1)
    test = write_synthetic_dataset(tmp_path / "test", n_images=2, size=48, seed=2)
    for p in (test / "images").iterdir():  # its own names, unlike the training folder's
        p.rename(p.with_name("t" + p.name))
        (test / "labels" / p.name).rename(test / "labels" / ("t" + p.name))
    split = tmp_path / "split.json"
    save_split(split, {"train": ["synth_0000", "synth_0001", "synth_0002", "synth_0003"], "val": [],
                       "test": ["synth_0004", "synth_0005"]})  # fmt: skip
    unl = tmp_path / "unlabeled"
    unl.mkdir()
    for i, p in enumerate(
        sorted((write_synthetic_dataset(tmp_path / "new", 3, 48, seed=3) / "images").iterdir())
    ):
        shutil.copy(p, unl / f"new_{i}.tif")
    tifffile.imwrite(unl / "renamed_copy.tif", read_image(data / "images" / "synth_0005.tif")[..., 0])
    same_name = read_image(test / "images" / "tsynth_0001.tif")[..., 0].copy()
    same_name[0, 0] += 1
    tifffile.imwrite(unl / "tsynth_0001.tif", same_name)
    sources = [
        HeldoutImages(path=data, split_file=split),
        HeldoutImages(path=test),
    ]
    return {"data": data, "test": test, "split": split, "unlabeled": unl, "sources": sources}


def test_test_images_are_left_out_by_id_and_by_pixels_with_a_warning(folders):
    index = heldout_index(folders["sources"], progress=False)
    assert sorted(index.ids) == ["synth_0004", "synth_0005", "tsynth_0000", "tsynth_0001"]
    samples = find_samples(folders["unlabeled"])
    raws = read_images(samples, progress=False)
    with pytest.warns(UserWarning, match="left 2 of 5 pretraining images out") as w:
        kept, kept_raws = drop_heldout(samples, raws, index, "exclude", folders["unlabeled"])
    message = str(w[0].message)
    assert "renamed_copy.tif (same pixels as test image" in message and "synth_0005.tif" in message
    assert "tsynth_0001.tif (same sample id" in message
    assert [s.id for s in kept] == ["new_0", "new_1", "new_2"] and len(kept_raws) == 3
    # a pool that is loaded later hands in its samples only: they are read here, and not kept
    with pytest.warns(UserWarning, match="left 2 of 5 unlabeled images out"):
        pool, none = drop_heldout(samples, None, index, what="unlabeled image")
    assert pool == kept and none == []


def test_the_error_setting_stops_and_names_the_files(folders):
    index = heldout_index(folders["sources"], progress=False)
    samples = find_samples(folders["unlabeled"])
    with pytest.raises(DataError, match="2 of 5 pretraining images are held-out test images") as e:
        drop_heldout(samples, read_images(samples, progress=False), index, "error", folders["unlabeled"])
    assert "renamed_copy.tif" in str(e.value) and "tsynth_0001.tif" in str(e.value)
    only_tests = [s for s in samples if s.id in ("renamed_copy", "tsynth_0001")]
    with pytest.raises(DataError, match="no pretraining image is left"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        drop_heldout(only_tests, read_images(only_tests, progress=False), index, "exclude")


def _pretrain_cfg(folders, out, **data):
    return PretrainConfig.model_validate(
        {
            "method": "simclr",
            "params": {"proj_hidden": 32, "proj_dim": 16},
            "data": {"path": folders["unlabeled"], **data},
            "views": {"size": 16, "preset": "fluorescence"},
            "train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 2},
            "output": out,
        }
    )


def test_pretraining_never_sees_a_test_image_and_records_its_scale(folders, tmp_path, monkeypatch):
    import sslseg.pretrain

    loaded = []

    def spy(*args, **kwargs):
        images, channels = load_unlabeled(*args, **kwargs)
        loaded.extend(images)
        return images, channels

    monkeypatch.setattr(sslseg.pretrain, "load_unlabeled", spy)
    sources = [s.model_dump(mode="json") for s in folders["sources"]]
    cfg = _pretrain_cfg(folders, tmp_path / "pre", heldout=sources, scale=0.5)
    with pytest.warns(UserWarning, match="left 2 of 5"):
        res = pretrain(cfg, progress=False)
    assert [im.shape for im in loaded] == [(1, 24, 24)] * 3  # the 48 px images, at the working scale
    meta = json.loads(res.weights.with_suffix(".json").read_text())
    assert meta["n_images"] == 3 and meta["heldout_images"] == 4 and meta["scale"] == 0.5
    assert meta["excluded_as_test_images"] == 2
    with pytest.raises(DataError, match="renamed_copy.tif"):
        pretrain(
            _pretrain_cfg(folders, tmp_path / "pre2", heldout=sources, heldout_overlap="error"),
            progress=False,
        )


def test_pretraining_images_are_loaded_at_the_working_scale(folders):
    samples = find_samples(folders["unlabeled"])[:2]
    native, _ = load_unlabeled(samples, progress=False)
    half, _ = load_unlabeled(samples, progress=False, scale=0.5)
    assert native[0].shape == (1, 48, 48) and half[0].shape == (1, 24, 24)
    small = np.asarray(half[0], np.float32)
    assert half[0].dtype == np.float16 and float(small.min()) >= 0 and float(small.max()) <= 1
    # the same picture, smaller: its mean brightness is kept
    assert float(small.mean()) == pytest.approx(float(np.asarray(native[0], np.float32).mean()), abs=0.01)


def _study(tmp_path, **changes):
    tree = {
        "name": "t",
        "output": str(tmp_path / "study"),
        "datasets": [
            {
                "name": "d",
                "train": str(tmp_path / "data"),
                "test": str(tmp_path / "test"),
                "unlabeled": str(tmp_path / "unlabeled"),
            }
        ],
        "pretrainings": [{"name": "random", "init": "random"}, {"name": "simclr", "method": "simclr"}],
        "label_fractions": [0.5],
        "finetune": {"data": {"scale": 0.3}},
    }
    tree.update(changes)
    return StudyConfig.model_validate(tree)


def test_the_study_names_its_test_images_and_hands_its_scale_to_pretraining(tmp_path):
    pre = next(j for j in expand(_study(tmp_path)) if j.kind == "pretrain")
    data = pre.config["data"]
    assert data["path"] == str(tmp_path / "unlabeled") and data["split_file"] is None
    assert [(h["path"], h["split_file"]) for h in data["heldout"]] == [
        (str(tmp_path / "data"), str(tmp_path / "study" / "splits" / "d.json")),
        (str(tmp_path / "test"), None),
    ]
    assert data["heldout_overlap"] == "exclude"
    assert data["scale"] == 0.3  # the fine-tuning's working scale
    cells = [j for j in expand(_study(tmp_path)) if j.kind == "finetune"]
    assert {c.config["data"]["scale"] for c in cells} == {0.3}
    # a scale the study sets for pretraining wins; the overlap setting comes through the study's pretrain
    own = _study(tmp_path, pretrain={"data": {"scale": 0.6, "heldout_overlap": "error"}})
    data = next(j for j in expand(own) if j.kind == "pretrain").config["data"]
    assert data["scale"] == 0.6 and data["heldout_overlap"] == "error"
    plain = _study(tmp_path, finetune={})
    assert next(j for j in expand(plain) if j.kind == "pretrain").config["data"]["scale"] == 1.0
