"""Object-size normalisation: the median-diameter measure, the clamped factor, training images resized by
their labels (never validation images), inference that re-predicts at the size it measured, the config
checks, and one tiny end-to-end run."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from pydantic import ValidationError
from scipy import ndimage
from torch import nn

import sslseg.data.datasets as datasets_module
import sslseg.finetune as finetune_module
from sslseg.config import DataConfig, FinetuneConfig, InferenceConfig, load_config
from sslseg.data.datasets import load_samples
from sslseg.data.io import write_image, write_label
from sslseg.data.layouts import LabelFile, Sample
from sslseg.data.scale import median_diameter, size_factor, typical_area
from sslseg.data.synth import write_synthetic_dataset
from sslseg.errors import ConfigError
from sslseg.finetune import finetune
from sslseg.segmentation.inference import predict_probabilities


def _discs(shape: tuple[int, int], radius: float, spacing: int) -> np.ndarray:
    """Instance map of discs of `radius` px centred on a grid of `spacing` px."""
    yy, xx = np.mgrid[: shape[0], : shape[1]]
    cy, cx = yy % spacing - spacing / 2 + 0.5, xx % spacing - spacing / 2 + 0.5
    ids = (yy // spacing) * (shape[1] // spacing + 1) + xx // spacing + 1
    return np.where(cy**2 + cx**2 <= radius**2, ids, 0).astype(np.int32)


# ------------------------------------------------------------------------------------------ the measures


def test_median_diameter_of_known_squares_and_of_an_empty_map():
    labels = np.zeros((40, 40), np.int32)
    labels[0:4, 0:4] = 1  # area 16
    labels[10:20, 10:20] = 2  # area 100
    labels[30:36, 30:36] = 5  # area 36 (ids need not be consecutive)
    assert median_diameter(labels) == pytest.approx(2 * math.sqrt(36 / math.pi))
    labels[30:36, 30:36] = 0  # two objects: the mean of the two diameters
    expected = (2 * math.sqrt(16 / math.pi) + 2 * math.sqrt(100 / math.pi)) / 2
    assert median_diameter(labels) == pytest.approx(expected)
    assert median_diameter(np.zeros((8, 8), np.uint16)) is None
    sparse = np.zeros((10, 10), np.int64)
    sparse[:3, :3] = 2**40  # ids far beyond the pixel count still work
    assert median_diameter(sparse) == pytest.approx(2 * math.sqrt(9 / math.pi))


def test_size_factor_is_clamped():
    assert size_factor(10.0, 20.0) == pytest.approx(2.0)
    assert size_factor(40.0, 20.0) == pytest.approx(0.5)
    assert size_factor(2.0, 30.0) == 4.0
    assert size_factor(300.0, 30.0) == 0.25


# ---------------------------------------------------------------------------------------------- training


def _sample(root: Path, name: str, labels: np.ndarray) -> Sample:
    image = np.where(labels > 0, 200, 20).astype(np.uint8)
    write_image(root / "images" / f"{name}.tif", image)
    write_label(root / "labels" / f"{name}.tif", labels)
    return Sample(name, root / "images" / f"{name}.tif", LabelFile(root / "labels" / f"{name}.tif"))


def test_training_images_are_resized_so_objects_have_the_target_size(tmp_path):
    small = _discs((64, 64), 4, 16)  # ~8 px nuclei
    large = _discs((96, 80), 12, 32)  # ~24 px nuclei
    samples = [
        _sample(tmp_path, "small", small),
        _sample(tmp_path, "large", large),
        _sample(tmp_path, "empty", np.zeros((40, 48), np.int32)),
    ]
    loaded, _ = load_samples(samples, "instance", object_size=16, progress=False)
    for s, native in zip(loaded, (small, large), strict=False):
        fg, _ = ndimage.label(s.target[0] > 0.5)
        assert fg.shape == s.image.shape[1:]
        assert median_diameter(fg) == pytest.approx(16, abs=2)  # the targets follow the resized image
        assert np.array_equal(s.labels, native) and s.native_shape == native.shape  # scored natively
    for s, native in zip(loaded, (small, large), strict=False):
        factor = 16 / median_diameter(native)  # ~2 for the small nuclei, ~2/3 for the large ones
        assert s.image.shape[1:] == tuple(round(n * factor) for n in native.shape)
    assert loaded[2].image.shape[1:] == (40, 48)  # no objects: left at scale 1
    plain, _ = load_samples(samples, "instance", progress=False)  # validation/test: native scale
    assert [s.image.shape[1:] for s in plain] == [(64, 64), (96, 80), (40, 48)]


def test_object_size_with_scale_or_a_semantic_task_is_refused_when_loading(tmp_path):
    samples = [_sample(tmp_path, "a", _discs((32, 32), 4, 16))]
    with pytest.raises(ValueError, match="scale"):
        load_samples(samples, "instance", scale=0.5, object_size=16, progress=False)
    with pytest.raises(ValueError, match="instance"):
        load_samples(samples, "semantic", object_size=16, progress=False)


# ------------------------------------------------------------------------------------------------ config


def test_config_refuses_object_size_with_scale_or_semantic_task():
    assert DataConfig(object_size=20).object_size == 20
    with pytest.raises(ConfigError, match=r"object_size \(20.0\) and scale \(0.5\)"):
        load_config(FinetuneConfig, overrides={"data": {"object_size": 20, "scale": 0.5}})
    with pytest.raises(ConfigError, match="object_size applies to instance tasks"):
        load_config(FinetuneConfig, overrides={"data": {"object_size": 20, "task": "semantic"}})
    with pytest.raises(ValidationError, match="greater than 0"):
        DataConfig(object_size=0)


# --------------------------------------------------------------------------------------------- inference


class BlobNet(nn.Module):
    """A fake instance network that cuts whatever it sees into discs of `radius` input pixels on a grid of
    4·radius, the way a network fragments objects far larger than those it was trained on: its pieces keep
    their size in input pixels however the image is resized."""

    def __init__(self, radius: float = 4.0, empty: bool = False) -> None:
        super().__init__()
        self.radius, self.empty = radius, empty
        self.dummy = nn.Parameter(torch.zeros(()))  # inference looks up the device of the parameters
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        self.seen.append((h, w))
        spacing = 4 * self.radius
        yy, xx = torch.meshgrid(torch.arange(h) + 0.5, torch.arange(w) + 0.5, indexing="ij")
        d = torch.hypot(yy % spacing - spacing / 2, xx % spacing - spacing / 2) / self.radius
        fg = (1 - d) * 20 - (1000 if self.empty else 0)  # logit: inside the disc where d < 1
        p = (1 - d).clamp(1e-3, 1 - 1e-3)
        dist = torch.log(p / (1 - p))
        return torch.stack([fg, dist])[None].expand(b, -1, -1, -1) + self.dummy


class ContentNet(nn.Module):
    """A fake instance network that segments what the image shows: foreground where it is brighter than
    0.5, and each object's distance to its border, normalised to 1 at its centre. Its objects shrink and
    grow with the image, as a well-trained network's do."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[int, int]] = []

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self.seen.append(tuple(x.shape[-2:]))
        out = []
        for image in x[:, 0].numpy():
            mask = image > 0.5
            objects, n = ndimage.label(mask)
            dist = ndimage.distance_transform_edt(mask)
            peak = ndimage.maximum(dist, objects, np.arange(n + 1)) if n else np.zeros(1)
            p = np.clip(dist / np.maximum(np.asarray(peak)[objects], 1), 1e-3, 1 - 1e-3)
            fg = np.where(mask, 20.0, -20.0)
            out.append(np.stack([fg, np.log(p / (1 - p))]))
        return torch.from_numpy(np.stack(out)).float() + self.dummy


def _disc_image(shape: tuple[int, int], radius: float) -> np.ndarray:
    """A 1×H×W image of bright discs of `radius` px, 4·radius apart."""
    return (_discs(shape, radius, int(4 * radius)) > 0).astype(np.float32)[None]


def _diameter(probs: torch.Tensor) -> float:
    found, _ = ndimage.label(probs[0].numpy() > 0.5)
    d = median_diameter(found)
    assert d is not None
    return d


CFG = InferenceConfig(tile_size=512)


@pytest.mark.parametrize(
    ("object_size", "rescaled_to"),
    [
        (16.0, (128, 128)),  # objects too small (8 px): predicted again at 2×
        (4.0, (32, 32)),  # too large: predicted again at ½×
        (9.0, None),  # close enough (factor 1.125): the first prediction is kept
    ],
)
def test_inference_predicts_again_at_the_measured_scale(object_size, rescaled_to):
    net = ContentNet()
    image = _disc_image((64, 64), radius=4)
    probs = predict_probabilities(
        net, image, "instance", (64, 64), CFG, object_size=object_size, head="distance"
    )
    assert probs.shape == (2, 64, 64)
    # the first prediction, the fragment check at half the size (objects halve: whole ones), the rescaled one
    assert net.seen == [(64, 64), (32, 32)] + ([rescaled_to] if rescaled_to else [])
    assert _diameter(probs) == pytest.approx(8.0, rel=0.25)


def test_fragments_of_oversized_objects_are_measured_at_a_smaller_size():
    # a network that cuts everything into 8 px pieces: the pieces keep their size at ½× and ¼×, so the
    # objects are taken to be 32 px across and the image is shrunk to ¼ (as far as MIN_FACTOR allows)
    net = BlobNet(radius=4)
    predict_probabilities(
        net, np.zeros((1, 128, 128), np.float32), "instance", (128, 128), CFG, 8.0, head="distance"
    )
    assert net.seen == [(128, 128), (64, 64), (32, 32), (32, 32)]
    # pieces already under half the target at ½× stop the check: 8 px pieces, target 20 px
    net = BlobNet(radius=4)
    predict_probabilities(
        net, np.zeros((1, 64, 64), np.float32), "instance", (64, 64), CFG, 20.0, head="distance"
    )
    assert net.seen == [(64, 64), (32, 32), (160, 160)]
    # without the check, the pieces are taken at their word: 8 px, enlarged 2.5× for a target of 20 px
    net = BlobNet(radius=4)
    cfg = CFG.model_copy(update={"check_fragments": False})
    predict_probabilities(
        net, np.zeros((1, 64, 64), np.float32), "instance", (64, 64), cfg, 20.0, head="distance"
    )
    assert net.seen == [(64, 64), (160, 160)]


def test_inference_sizes_objects_in_working_pixels_and_returns_native_shape():
    # a working image at half the native size: 8 px objects there are 16 px natively, already the target
    net = ContentNet()
    probs = predict_probabilities(
        net, _disc_image((64, 64), 4), "instance", (128, 128), CFG, 8.0, head="distance"
    )
    assert probs.shape == (2, 128, 128) and net.seen == [(64, 64), (32, 32)]
    net = ContentNet()
    probs = predict_probabilities(
        net, _disc_image((64, 48), 4), "instance", (128, 96), CFG, 16.0, head="distance"
    )
    assert probs.shape == (2, 128, 96) and net.seen == [(64, 64), (32, 32), (128, 128)]  # square tiles


class SpeckledNet(nn.Module):
    """One large nucleus (radius 14 px in a 64 px image) among 30 noise specks of 3×3 px, the way an
    under-trained network sees a few large nuclei at high magnification."""

    def __init__(self) -> None:
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(()))
        self.seen: list[tuple[int, int]] = []
        yy, xx = torch.meshgrid(torch.arange(64.0), torch.arange(64.0), indexing="ij")
        disc = (1 - torch.hypot(yy - 24, xx - 24) / 14).clamp(min=0)
        specks = torch.zeros(64, 64)
        for i in range(30):
            y, x = 44 + 6 * (i // 10), 2 + 6 * (i % 10)
            specks[y : y + 3, x : x + 3] = 1
        self.pattern = torch.stack([((disc > 0) | (specks > 0)).float() * 40 - 20, disc * 20 - 10])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, _, h, w = x.shape
        self.seen.append((h, w))
        out = F.interpolate(self.pattern[None], size=(h, w), mode="nearest")
        return out.expand(b, -1, -1, -1) + self.dummy


def test_a_swarm_of_specks_does_not_pass_for_the_typical_object():
    # count median: a 3×3 speck (3.4 px across), which would blow the image up 4×; the large nucleus is
    # 28 px across, so an object size of 14 halves the image
    net = SpeckledNet()
    predict_probabilities(
        net, np.zeros((1, 64, 64), np.float32), "instance", (64, 64), CFG, 14.0, head="distance"
    )
    assert net.seen == [(64, 64), (32, 32), (32, 32)]  # measure, check for fragments, predict at ½×


def test_typical_area_is_the_object_holding_the_median_pixel():
    assert typical_area(np.array([4, 4, 4, 4, 900])) == 900
    assert typical_area(np.array([100, 100, 120])) == 100
    with pytest.raises(ValueError):
        typical_area(np.array([0]))


def test_inference_keeps_the_first_prediction_without_objects_or_without_object_size():
    image = np.zeros((1, 64, 64), np.float32)
    net = BlobNet(empty=True)
    probs = predict_probabilities(net, image, "instance", (64, 64), CFG, object_size=16.0, head="distance")
    assert probs.shape == (2, 64, 64) and net.seen == [(64, 64)]
    net = BlobNet()
    predict_probabilities(net, image, "instance", (64, 64), CFG, head="distance")
    assert net.seen == [(64, 64)]


def test_inference_with_tta_sizes_once_then_predicts_every_orientation():
    # one orientation to measure the objects (and one at ½× to check for fragments), then the 8 at the
    # scale that measurement asks for
    cfg = InferenceConfig(tile_size=512, tta=True)
    image = _disc_image((64, 64), 4)
    net = ContentNet()
    probs = predict_probabilities(net, image, "instance", (64, 64), cfg, 16.0, head="distance")
    assert probs.shape == (2, 64, 64)
    assert net.seen == [(64, 64), (32, 32)] + [(128, 128)] * 8
    net = ContentNet()  # close enough to the target: the 8 orientations at the native scale, the first
    predict_probabilities(
        net, image, "instance", (64, 64), cfg, 9.0, head="distance"
    )  # being the measuring one
    assert net.seen == [(64, 64), (32, 32)] + [(64, 64)] * 7


# ------------------------------------------------------------------------------------------- end to end


def test_finetune_with_object_size_sizes_only_the_training_images(tmp_path, monkeypatch):
    data = write_synthetic_dataset(tmp_path / "synth", n_images=8, size=64, seed=2)
    calls: list[tuple[int, float | None]] = []
    real = finetune_module.load_samples

    def spy(samples, *args, **kwargs):
        calls.append((len(samples), kwargs.get("object_size")))
        return real(samples, *args, **kwargs)

    monkeypatch.setattr(finetune_module, "load_samples", spy)  # the training images
    monkeypatch.setattr(datasets_module, "load_samples", spy)  # validation and test, through load_heldout
    cfg = FinetuneConfig.model_validate(
        {
            "data": {
                "train": data,
                "task": "instance",
                "val_fraction": 0.25,
                "test_fraction": 0.25,
                "object_size": 24,
            },
            "model": {"encoder": "resnet18", "decoder_channels": [16, 16, 8, 8, 8]},
            "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "crop_size": 32},
            "inference": {"tile_size": 64},
            "output": tmp_path / "run",
        }
    )
    res = finetune(cfg, progress=False)
    summary = json.loads((res.output / "result.json").read_text())
    assert 0.0 <= summary["test"]["aji"] <= 1.0
    n_train, n_val = summary["n_labelled_train"], summary["n_val"]
    # training images sized by their labels; validation and test images at native scale
    assert calls == [(n_train, 24.0), (n_val, None), (summary["n_test"], None)]
