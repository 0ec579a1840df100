"""benchmarks/predict_engines.py: its agreement figures on hand-made label maps, and its --smoke run (a tiny
model on synthetic images) printing both engines' images/s beside their ratio and agreement."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import benchmark_module, run_benchmark_script

pytest.importorskip("onnxruntime")


@pytest.fixture(scope="module")
def bench():
    return benchmark_module("predict_engines")


def test_agreement_by_hand(bench):
    a = np.zeros((10, 10), np.int32)
    a[1:5, 1:5] = 1  # 16 px
    a[6:9, 6:9] = 2  # 9 px
    assert bench.agreement(a, a.copy()) == {"identical": True, "pixel_agreement": 1.0, "min_object_iou": 1.0}
    renumbered = np.where(a > 0, 3 - a, 0)  # the same objects under other ids: not identical, same IoUs
    assert bench.agreement(a, renumbered) == {
        "identical": False,
        "pixel_agreement": 1.0,
        "min_object_iou": 1.0,
    }
    b = a.copy()
    b[6, 6:9] = 0  # object 2 loses a row: IoU 6/9, 3 of 100 pixels change side
    got = bench.agreement(a, b)
    assert got["pixel_agreement"] == pytest.approx(0.97)
    assert got["min_object_iou"] == pytest.approx(6 / 9)
    assert bench.agreement(a, np.zeros_like(a))["min_object_iou"] == 0.0
    empty = np.zeros_like(a)
    assert bench.agreement(empty, empty)["min_object_iou"] == 1.0
    summary = bench.summarise([(a, a), (a, b)])
    assert summary == {
        "identical_share": 0.5,
        "min_pixel_agreement": pytest.approx(0.97),
        "min_object_iou": pytest.approx(6 / 9),
    }


def test_smoke_run_prints_both_engines_their_ratio_and_agreement(tmp_path):
    (line,) = run_benchmark_script("predict_engines.py", "--smoke", "--repeats", "1", cwd=tmp_path)
    assert line["benchmark"] == "predict_engines" and line["images"] == 3
    assert line["torch_images_per_s"] > 0 and line["onnx_images_per_s"] > 0
    ratio = line["onnx_images_per_s"] / line["torch_images_per_s"]
    assert line["onnx_over_torch"] == pytest.approx(ratio, rel=0.01)
    assert line["identical_share"] == 1.0 and line["min_object_iou"] == 1.0
