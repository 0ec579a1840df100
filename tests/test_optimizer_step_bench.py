"""benchmarks/optimizer_step.py --smoke: AdamW per-tensor, foreach and fused side by side on the fine-tuning
U-Net, the whole training step with each, and their updates equal up to rounding."""

from __future__ import annotations

import pytest
from conftest import run_benchmark_script


def test_smoke_run_prints_every_variant_beside_the_ratios_and_an_equal_update(tmp_path):
    lines = run_benchmark_script("optimizer_step.py", "--smoke", cwd=tmp_path)
    parts = {(x["part"], x["variant"]) for x in lines if "part" in x}
    assert parts == {
        ("optimiser step", "per-tensor"),
        ("optimiser step", "foreach"),
        ("optimiser step", "fused"),
        ("training step", "per-tensor"),
        ("training step", "fused"),
    }
    ms = {(x["part"], x["variant"]): x["ms"] for x in lines if "part" in x}
    (summary,) = [x for x in lines if "optimiser_speedup" in x]
    ratio = ms["optimiser step", "per-tensor"] / ms["optimiser step", "fused"]
    assert summary["optimiser_speedup"] == pytest.approx(ratio, rel=0.05)  # ms are rounded
    assert 0 <= summary["largest_weight_difference_same_gradients"] < 1e-4
