"""data.object_size_um: the objects' real diameter and each image's pixel size fix its working scale, in
training, evaluation and prediction (whole and block-wise)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import tifffile
from conftest import tiny_instance_checkpoint

import sslseg.finetune as finetune_module
import sslseg.segmentation.blocks as blocks_module
import sslseg.segmentation.segmenter as segmenter_module
from sslseg.config import DataConfig, FinetuneConfig, load_config
from sslseg.data.datasets import load_samples
from sslseg.data.io import write_image, write_label
from sslseg.data.layouts import LabelFile, Sample
from sslseg.data.scale import known_size_factor, median_diameter, size_factor
from sslseg.errors import ConfigError, DataError
from sslseg.evaluate import evaluate_checkpoint
from sslseg.predict import predict_files


def _discs(shape: tuple[int, int], radius: float, spacing: int) -> np.ndarray:
    """Instance map of discs of `radius` on a grid of `spacing` px."""
    labels = np.zeros(shape, np.int32)
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    k = 0
    for cy in range(spacing // 2, shape[0] - radius, spacing):
        for cx in range(spacing // 2, shape[1] - radius, spacing):
            k += 1
            labels[(yy - cy) ** 2 + (xx - cx) ** 2 <= radius**2] = k
    return labels


def _write_calibrated(path: Path, image: np.ndarray, pixel_size: float) -> None:
    """An ImageJ TIFF whose calibration says `pixel_size` µm per pixel."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, image, imagej=True, resolution=(1 / pixel_size,) * 2, metadata={"unit": "um"})


def _sample(root: Path, name: str, labels: np.ndarray, pixel_size: float | None) -> Sample:
    image = np.where(labels > 0, 200, 20).astype(np.uint8)
    path = root / "images" / f"{name}.tif"
    if pixel_size is None:
        write_image(path, image)
    else:
        _write_calibrated(path, image, pixel_size)
    write_label(root / "labels" / f"{name}.tif", labels)
    return Sample(name, path, LabelFile(root / "labels" / f"{name}.tif"))


# ------------------------------------------------------------------------------------------------ config


def test_config_needs_object_size_with_object_size_um_and_allows_semantic_tasks():
    with pytest.raises(ConfigError, match=r"object_size_um \(6.0 µm\).*set object_size too"):
        load_config(FinetuneConfig, overrides={"data": {"object_size_um": 6}})
    with pytest.raises(ConfigError, match=r"object_size \(24.0\) and scale \(0.5\)"):
        load_config(
            FinetuneConfig, overrides={"data": {"object_size": 24, "object_size_um": 6, "scale": 0.5}}
        )
    # the size is known without measuring objects, so semantic tasks may use it
    semantic = DataConfig(task="semantic", object_size=24, object_size_um=6)
    assert semantic.object_size_um == 6 and semantic.measured_object_size is None
    assert DataConfig(object_size=24).measured_object_size == 24  # measured at inference, as before
    with pytest.raises(ConfigError, match="greater than 0"):
        load_config(FinetuneConfig, overrides={"data": {"pixel_size": 0}})


def test_known_size_factor_is_the_measured_one_for_objects_of_that_size(tmp_path):
    # 6 µm objects at 0.5 µm/px are 12 px across: brought to 24 px, as measured 12 px objects are
    assert known_size_factor(6.0, 24.0, (0.5, 0.5), "a.tif") == size_factor(12.0, 24.0) == 2.0
    assert known_size_factor(6.0, 24.0, (0.25, 1.0), "a.tif") == 2.0  # geometric mean of y and x
    assert known_size_factor(6.0, 24.0, (0.05, 0.05), "a.tif") == 0.25  # clamped as size_factor
    with pytest.raises(DataError, match=r"a\.tif.*needs the image's pixel size.*data.pixel_size"):
        known_size_factor(6.0, 24.0, None, tmp_path / "a.tif")


# ---------------------------------------------------------------------------------------------- training


def test_loading_scales_every_image_by_its_pixel_size_as_measuring_would(tmp_path):
    labels = _discs((64, 72), 6, 20)  # discs 13 px across (their equivalent-circle diameter ≈ 12.3)
    at_half = _sample(tmp_path, "half", labels, 0.5)
    measured, _ = load_samples([at_half], "instance", object_size=24, progress=False)
    um = 0.5 * median_diameter(labels)  # the real diameter of these objects in µm
    known, _ = load_samples([at_half], "instance", object_size=24, object_size_um=um, progress=False)
    assert known[0].image.shape == measured[0].image.shape
    assert measured[0].image.shape[1] == round(64 * 24 / median_diameter(labels))  # resized, by about 2
    # held-out images (no labels used) get the same scale, whatever the task
    for task in ("instance", "semantic"):
        kw = {"object_size": 24, "object_size_um": um, "with_labels": False, "progress": False}
        assert load_samples([at_half], task, **kw)[0][0].image.shape == measured[0].image.shape
    # a 0.25 µm/px image holds the same objects twice as large in pixels: half the factor
    quarter, _ = load_samples(
        [_sample(tmp_path, "q", labels, 0.25)], "instance", object_size=24, object_size_um=6, progress=False
    )
    assert quarter[0].image.shape == (1, 64, 72)  # 6 µm / 0.25 = 24 px: already at the target


def test_an_image_without_pixel_size_is_an_error_naming_it_unless_one_is_given(tmp_path):
    bare = _sample(tmp_path, "bare", _discs((40, 40), 4, 16), None)
    with pytest.raises(DataError, match=r"bare\.tif.*pixel size.*data\.pixel_size"):
        load_samples([bare], "instance", object_size=24, object_size_um=6, progress=False)
    given, _ = load_samples(
        [bare], "instance", object_size=24, object_size_um=6, pixel_size=0.5, progress=False
    )
    assert given[0].image.shape == (1, 80, 80)


# ----------------------------------------------------------------------------- evaluation and prediction


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny instance model trained with object_size_um on synthetic images said to be 0.5 µm/px."""
    root = tmp_path_factory.mktemp("um")
    return tiny_instance_checkpoint(root, data={"object_size": 24, "object_size_um": 6, "pixel_size": 0.5})


def test_training_images_are_prepared_at_the_scale_their_pixel_size_gives(tmp_path, monkeypatch):
    prepared: list[float] = []
    real_load = finetune_module.load_samples

    def spy_load(*args, **kwargs):
        loaded, channels = real_load(*args, **kwargs)
        prepared.extend(s.image.shape[-1] / s.native_shape[1] for s in loaded)
        return loaded, channels

    monkeypatch.setattr(finetune_module, "load_samples", spy_load)
    tiny_instance_checkpoint(tmp_path, data={"object_size": 24, "object_size_um": 6, "pixel_size": 0.5})
    # 6 µm objects at 0.5 µm/px are 12 px across, brought to 24: every training image is doubled,
    # whatever its own nuclei measure
    assert prepared and all(f == pytest.approx(2.0) for f in prepared)


def test_evaluation_takes_the_pixel_size_of_the_files_or_of_the_option(checkpoint):
    data = checkpoint.parents[1] / "data"  # the synthetic training set: its files carry no pixel size
    with pytest.raises(DataError, match=r"synth_0000\.tif.*--pixel-size"):
        evaluate_checkpoint(checkpoint, data, progress=False)
    mean = evaluate_checkpoint(checkpoint, data, progress=False, pixel_size=0.5)
    assert 0.0 <= mean["aji"] <= 1.0


def test_prediction_scales_each_image_by_its_pixel_size_whole_and_block_wise(
    checkpoint, tmp_path, monkeypatch
):
    scales: list[float] = []
    real_prepare = segmenter_module.prepare_image

    def spy_prepare(raw, channels, normalization, scale, bright):
        scales.append(scale)
        return real_prepare(raw, channels, normalization, scale, bright)

    real_settings = blocks_module.block_settings

    def spy_settings(*args, **kwargs):
        settings = real_settings(*args, **kwargs)
        scales.append(settings.scale)
        return settings

    monkeypatch.setattr(segmenter_module, "prepare_image", spy_prepare)  # whole images are prepared there
    monkeypatch.setattr(blocks_module, "block_settings", spy_settings)
    rng = np.random.default_rng(0)
    images = tmp_path / "images"
    _write_calibrated(images / "half.tif", rng.integers(0, 255, (40, 44), dtype=np.uint8), 0.5)
    write_image(images / "bare.tif", rng.integers(0, 255, (40, 44), dtype=np.uint8))
    out = tmp_path / "pred"

    report = predict_files(checkpoint, [images], out, progress=False, formats="tiff")
    assert scales == [2.0]  # half.tif: 6 µm objects are 12 px, brought to 24
    assert list(report.failed) == [images / "bare.tif"]
    assert (
        "bare.tif" in str(next(iter(report.failed))) and "--pixel-size" in report.failed[images / "bare.tif"]
    )
    assert tifffile.imread(out / "half_labels.tif").shape == (40, 44)  # labels at native resolution

    scales.clear()  # --pixel-size overrides the files: 6 µm at 1 µm/px = 6 px, factor 4
    report = predict_files(
        checkpoint, [images], out, progress=False, formats="tiff", pixel_size=1.0, overwrite=True
    )
    assert not report.failed and scales == [4.0, 4.0]

    scales.clear()  # block-wise: the block settings take the same scale
    report = predict_files(
        checkpoint, [images / "half.tif"], out, progress=False, formats="tiff", block_size=64, overwrite=True
    )
    assert not report.failed and scales == [2.0]
    report = predict_files(
        checkpoint, [images / "bare.tif"], out, progress=False, formats="tiff", block_size=64, overwrite=True
    )
    assert "--pixel-size" in report.failed[images / "bare.tif"]
