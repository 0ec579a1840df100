"""Prediction engines: onnxruntime gives the labels PyTorch gives (instance and semantic, whole-image and
block-wise, with and without test-time augmentation), `predict --engine` reaches the network, and a missing
onnxruntime is one clear error naming the extra to install."""

from __future__ import annotations

import copy
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
import torch
from conftest import tiny_instance_checkpoint
from typer.testing import CliRunner

from sslseg.cli import app
from sslseg.config import FinetuneConfig
from sslseg.data.io import read_image
from sslseg.data.lazy import open_image
from sslseg.data.synth import generate_sample
from sslseg.errors import ConfigError
from sslseg.metrics.instance import instance_scores
from sslseg.nn.unet import build_unet
from sslseg.predict import predict_files
from sslseg.segmentation import engines
from sslseg.segmentation.blocks import segment_blocks, whole_image_stats
from sslseg.segmentation.engines import OnnxRunner, TorchRunner, network_runner, resolve_engine
from sslseg.segmentation.inference import predict_probabilities, probabilities_to_labels

pytest.importorskip("onnxruntime")

# onnxruntime fuses and reorders float operations: probabilities differ from PyTorch's by about 1e-6, far
# below what moves a threshold, an argmax or a watershed on these images (labels are compared exactly)
PROBABILITY_TOLERANCE = 1e-4


def _cfg(task: str, tta: bool) -> FinetuneConfig:
    return FinetuneConfig.model_validate(
        {
            "data": {"task": task, "num_classes": 3},
            "model": {"instance_head": "distance"},
            "inference": {"tile_size": 64, "overlap": 0.25, "batch_size": 2, "tta": tta},
            "postprocess": {"min_size": 4},
        }
    )


def _net(task: str) -> torch.nn.Module:
    """A tiny U-Net (three levels) with fixed random weights."""
    torch.manual_seed(0)
    net = build_unet("resnet18", 1, 3 if task == "semantic" else 2, (16, 8, 8)).eval()
    return net


def _raw() -> np.ndarray:
    image, _ = generate_sample(seed=3, size=96)
    return (image * 4000).astype(np.uint16)


@pytest.mark.parametrize(("task", "tta"), [("instance", False), ("instance", True), ("semantic", False)])
def test_onnx_labels_equal_torch_labels_whole_and_blockwise(tmp_path: Path, task: str, tta: bool):
    raw = _raw()
    cfg = _cfg(task, tta)
    net = _net(task)
    torch_run, onnx_run = TorchRunner(net, task), OnnxRunner(net, task)
    stats = whole_image_stats(raw[:, :, None], 1, "per_image", False)
    image = stats.apply(raw[:, :, None], 1)
    whole = {}
    for run in (torch_run, onnx_run):
        probs = predict_probabilities(run, image, task, raw.shape, cfg.inference)
        whole[run.name] = (probs, probabilities_to_labels(probs, task, cfg.postprocess, "distance"))
    assert (whole["onnx"][0] - whole["torch"][0]).abs().max() < PROBABILITY_TOLERANCE
    np.testing.assert_array_equal(whole["onnx"][1], whole["torch"][1])
    assert len(np.unique(whole["torch"][1])) > 1  # a test of something: the labels are not all one value

    tifffile.imwrite(tmp_path / "big.tif", raw, tile=(32, 32))
    blocks = {}
    for run in (torch_run, onnx_run):
        with open_image(tmp_path / "big.tif") as source:
            bands = segment_blocks(run, source, cfg, block=64, band_rows=16, halo=24, progress=False)
            blocks[run.name] = np.concatenate([b for _, b in bands])
    np.testing.assert_array_equal(blocks["onnx"], blocks["torch"])


def test_runner_is_handed_down_not_rebuilt():
    net = _net("instance").train()
    run = OnnxRunner(net, "instance")
    assert net.training  # the caller's mode is kept; the export runs BatchNorm as inference does
    x = torch.randn(2, 1, 64, 32)
    with torch.no_grad():
        expected = TorchRunner(net.eval(), "instance")(x)
    assert (run(x) - expected).abs().max() < PROBABILITY_TOLERANCE
    assert network_runner(run, "instance") is run  # inference takes a runner as it is
    assert isinstance(network_runner(net, "instance"), TorchRunner)  # a bare network runs in PyTorch


def test_auto_engine_and_bad_requests(monkeypatch):
    assert resolve_engine("auto", "cpu") == "onnx"
    assert resolve_engine("TORCH", "cpu") == "torch"
    with pytest.raises(ConfigError, match="unknown engine 'tensorrt'; choose from auto, torch, onnx"):
        resolve_engine("tensorrt", "cpu")
    with pytest.raises(ConfigError, match="--engine onnx runs on the CPU, not on cuda"):
        resolve_engine("onnx", "cuda")
    assert resolve_engine("auto", "cuda") == "torch"
    monkeypatch.setattr(engines, "onnx_available", lambda: False)
    assert resolve_engine("auto", "cpu") == "torch"


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_instance_checkpoint(
        tmp_path_factory.mktemp("tiny"), model={"encoder": "tu-mobilenetv3_small_050"}
    )


@pytest.mark.parametrize("block_size", [None, 64])
def test_predict_files_engines_write_the_same_label_maps(
    tmp_path: Path, checkpoint: Path, block_size, monkeypatch
):
    images = tmp_path / "images"
    images.mkdir()
    for seed in (5, 6):
        tifffile.imwrite(
            images / f"img{seed}.tif", (generate_sample(seed=seed, size=80)[0] * 255).astype("u1")
        )
    calls = {"torch": 0, "onnx": 0}
    for runner in (TorchRunner, OnnxRunner):  # count the batches each engine runs
        monkeypatch.setattr(runner, "__call__", _counted(runner.__call__, calls, runner.name))
    labels = {}
    for engine in ("torch", "onnx"):
        out = tmp_path / engine
        report = predict_files(
            checkpoint, [images], out, progress=False, formats="tiff", engine=engine, block_size=block_size
        )
        assert not report.failed and len(report.labels) == 2
        labels[engine] = [read_image(f) for f in sorted(report.labels)]
        assert calls[engine] > 0 and calls[{"torch": "onnx", "onnx": "torch"}[engine]] == 0, calls
        calls[engine] = 0
    # The tested tolerance: the engines' kernels round differently (~1e-6), so on this one-step model, whose
    # probabilities sit near the thresholds everywhere, a pixel may flip and renumber the objects after it.
    # Every pixel but a few thousandth agrees and the objects match (AJI ≥ 0.99 between the engines); on
    # a trained model the label maps were identical (RESULTS.md: 65/65 DSB2018 stage1_test images).
    for a, b in zip(labels["torch"], labels["onnx"], strict=True):
        assert np.mean((a > 0) != (b > 0)) <= 0.002
        assert instance_scores(a, b)["aji"] >= 0.99


def _counted(call, calls: dict[str, int], name: str):
    def counted(self, batch):
        calls[name] += 1
        return call(self, batch)

    return counted


def test_onnx_engine_without_onnxruntime_is_one_clear_error(tmp_path: Path, checkpoint: Path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # what a missing package looks like to import
    image = tmp_path / "img.tif"
    tifffile.imwrite(image, (generate_sample(seed=1, size=48)[0] * 255).astype("u1"))
    result = CliRunner().invoke(
        app, ["predict", str(checkpoint), str(image), "-o", str(tmp_path / "o"), "--engine", "onnx"]
    )
    assert isinstance(result.exception, ConfigError)
    assert str(result.exception) == (
        "--engine onnx needs the package 'onnxruntime', which is not installed; install the export extra: "
        "pip install 'sslseg[export]'"
    )
    assert not (tmp_path / "o").exists()
    # auto falls back to PyTorch instead
    result = CliRunner().invoke(app, ["predict", str(checkpoint), str(image), "-o", str(tmp_path / "a")])
    assert result.exit_code == 0, result.output


def test_a_network_is_exported_once_per_process_until_its_weights_change(monkeypatch):
    exports = []
    real = engines.onnx_export
    monkeypatch.setattr(engines, "onnx_export", lambda *a, **k: (exports.append(1), real(*a, **k))[1])
    monkeypatch.setattr(engines, "_EXPORTED", {})
    net = _net("instance")
    x = torch.randn(1, 1, 32, 32)
    first = OnnxRunner(net, "instance")(x)
    again = copy.deepcopy(net)  # the same checkpoint loaded again: same weights, another object
    OnnxRunner(again, "instance")
    assert len(exports) == 1
    with torch.no_grad():
        next(again.parameters()).add_(1.0)
    changed = OnnxRunner(again, "instance")(x)
    assert len(exports) == 2 and not torch.allclose(changed, first)
    OnnxRunner(again, "semantic")  # another activation is another model
    assert len(exports) == 3
