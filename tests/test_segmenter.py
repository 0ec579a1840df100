"""The Segmenter: a checkpoint resolved once into what turns images into labels. Prediction, whole and
block-wise, and evaluation look the task up once (when the checkpoint's module is built) and never again
below it, and the segmenter's labels are those of the module it was built from."""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
from conftest import tiny_instance_checkpoint

from sslseg.data.io import write_image
from sslseg.evaluate import evaluate_checkpoint, load_model
from sslseg.predict import predict_files
from sslseg.segmentation import tasks
from sslseg.segmentation.segmenter import Segmenter

# every module on the prediction path that has, or might import, a `task_named` of its own
_MODULES = (
    "sslseg.segmentation.tasks",
    "sslseg.segmentation.module",
    "sslseg.segmentation.segmenter",
    "sslseg.segmentation.engines",
    "sslseg.segmentation.inference",
    "sslseg.segmentation.blocks",
    "sslseg.predict",
    "sslseg.evaluate",
)


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    return tiny_instance_checkpoint(tmp_path_factory.mktemp("tiny"), inference={"tile_size": 64})


def _count_lookups(monkeypatch) -> list[str]:
    """Patch every `task_named` on the prediction path to record the names it is asked for."""
    calls: list[str] = []
    original = tasks.task_named

    def counted(name: str) -> tasks.Task:
        calls.append(name)
        return original(name)

    for name in _MODULES:
        monkeypatch.setattr(importlib.import_module(name), "task_named", counted, raising=False)
    return calls


def test_predict_resolves_the_task_once_whole_and_block_wise(checkpoint, tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    images = tmp_path / "images"
    write_image(images / "a.tif", rng.integers(0, 255, (40, 44), dtype=np.uint8))
    write_image(images / "b.tif", rng.integers(0, 255, (150, 130), dtype=np.uint8))
    formats = "tiff,overlay,csv"
    calls = _count_lookups(monkeypatch)
    whole = predict_files(
        checkpoint, [images], tmp_path / "whole", False, formats=formats, device="cpu", engine="torch"
    )
    assert not whole.failed and len(whole.outputs) == 2
    assert calls == ["instance"]  # building the checkpoint's module, and nothing below the segmenter
    calls.clear()
    blocks = predict_files(
        checkpoint,
        [images],
        tmp_path / "blocks",
        False,
        formats=formats,
        block_size=64,
        device="cpu",
        engine="torch",
    )
    assert not blocks.failed and len(blocks.outputs) == 2
    assert calls == ["instance"]


def test_segmenter_labels_are_the_modules(checkpoint):
    segmenter = Segmenter.from_checkpoint(checkpoint, engine="torch", device="cpu")
    module = load_model(checkpoint, device="cpu")
    raw = np.random.default_rng(4).integers(0, 255, (56, 60, 1), dtype=np.uint8)
    image = segmenter.prepare(raw, None, Path("x.tif"))
    assert segmenter.task is tasks.TASKS["instance"] and segmenter.head is not None
    assert segmenter.in_channels == module.hparams["in_channels"]
    np.testing.assert_array_equal(segmenter.segment(image, (56, 60)), module.segment(image, (56, 60)))


def test_evaluation_resolves_the_task_once(checkpoint, monkeypatch):
    data = checkpoint.parents[1] / "data"  # the tiny model's synthetic training set
    calls = _count_lookups(monkeypatch)
    mean = evaluate_checkpoint(checkpoint, data, progress=False, device="cpu")
    assert 0.0 <= mean["aji"] <= 1.0
    assert calls == ["instance"]
