"""benchmarks/gpu_check.py --cpu-smoke: every part of the GPU check runs on the CPU with tiny sizes, and every
SSL method of the registry gives a line of finite figures."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

from sslseg.methods import METHODS

SCRIPT = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu_check.py"
SSL_KEYS = {
    "e2e_img_s",
    "bare_img_s",
    "ratio",
    "peak_gpu_mib_e2e",
    "peak_gpu_mib_bare",
    "loss",
    "size",
    "batch",
}


def _finite(x: object) -> bool:
    return isinstance(x, int | float) and math.isfinite(x) and x >= 0


def test_cpu_smoke_gives_every_part_and_every_method(tmp_path):
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "2",
    }
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-smoke", "--budget-s", "3600"],  # no part skipped
        capture_output=True,
        text=True,
        timeout=1800,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    assert all(line["benchmark"] == "gpu_check" for line in lines)
    by_part: dict[str, list[dict]] = {}
    for line in lines:
        by_part.setdefault(line["part"], []).append(line)
    assert not [x for x in lines if x.get("skipped")], "nothing is skipped within the budget"
    (plan,) = by_part["plan"]
    assert plan["estimate_s"] > 0 and plan["device"] == "cpu"

    ssl = {x["method"]: x for x in by_part["ssl"]}
    assert set(ssl) == set(METHODS)
    for name, row in ssl.items():
        assert set(row) >= SSL_KEYS, (name, row)
        assert row["e2e_img_s"] > 0 and row["bare_img_s"] > 0, row
        assert _finite(row["ratio"]) and math.isfinite(row["loss"]), row
        assert row["peak_gpu_mib_e2e"] is None and row["peak_gpu_mib_bare"] is None  # no GPU here
        assert (row["size"], row["batch"], row["steps"]) == (32, 4, 2)

    compiled = by_part["compile"]
    assert {x["method"] for x in compiled} == {"simclr", "byol"}
    assert all(x["compiled_img_s"] > 0 and x["eager_img_s"] > 0 and _finite(x["speedup"]) for x in compiled)

    (ft,) = by_part["finetune"]
    assert ft["epochs_run"] == 2 and ft["predicted_images"] == 2 and ft["evaluate_images"] == 2
    for key in ("fit_s", "train_img_s", "test_s", "test_aji", "evaluate_s", "evaluate_aji", "predict_img_s"):
        assert _finite(ft[key]), (key, ft)

    (ddp,) = by_part["ddp"]
    assert ddp["method"] == "simclr" and ddp["equivalent"] is True, ddp

    (end,) = by_part["done"]
    assert end["within_budget"] is True


def test_a_budget_too_small_skips_parts_with_a_reason(tmp_path):
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--cpu-smoke", "--budget-s", "1", "--parts", "ssl,finetune"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]
    skipped = [x for x in lines if x.get("skipped")]
    assert {x["part"] for x in skipped} == {f"ssl:{m}" for m in METHODS} | {"finetune"}
    assert all("budget" in x["reason"] for x in skipped)
    assert not [x for x in lines if x["part"] in ("ssl", "finetune") and not x.get("skipped")]
