"""benchmarks/fragment_merge.py: one run's post-processing with and without merging convex pairs, the value
chosen on the run's validation images, test scores and objects per nucleus by kind of image."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from conftest import BENCHMARKS, benchmark_module, run_benchmark_script, tiny_instance_checkpoint

from sslseg.data.synth import write_synthetic_dataset


def test_objects_per_nucleus_counts_the_pieces():
    count = benchmark_module("fragment_merge").objects_per_nucleus
    truth = np.zeros((10, 10), np.int32)
    truth[1:5, 1:5], truth[6:9, 6:9] = 1, 2
    pred = np.zeros_like(truth)
    pred[1:5, 1:3], pred[1:5, 3:5], pred[6:9, 6:9] = 4, 9, 2  # the first nucleus in two pieces
    assert count(truth, pred) == (3, 2)


def test_the_value_is_chosen_by_validation_score_and_a_tie_goes_to_the_least_merging():
    choose = benchmark_module("fragment_merge").choose
    assert choose([(0.5, 0.0), (0.6, 0.9), (0.55, 0.95)]) == 0.9
    assert choose([(0.6, 0.95), (0.6, 0.0), (0.6, 0.9)]) == 0.0
    assert choose([(0.6, 0.95), (0.6, 0.9), (0.4, 0.0)]) == 0.9


def test_the_script_compares_each_value_and_chooses_on_validation(tmp_path: Path):
    checkpoint = tiny_instance_checkpoint(tmp_path)
    test = write_synthetic_dataset(tmp_path / "test", n_images=2, size=48, seed=7)
    lines = run_benchmark_script(
        "fragment_merge.py",
        str(checkpoint.parent),
        "--test",
        str(test),
        "--test-layout",
        "auto",
        "--values",
        "0.9,0.95",
        cwd=tmp_path,
    )
    rows = {line["merge_solidity"]: line for line in lines if "merge_solidity" in line}
    assert set(rows) == {0.0, 0.9, 0.95}  # no merging is always among them
    for row in rows.values():
        assert 0 <= row["aji"] <= 1 and 0 <= row["validation"] <= 1
        assert row["by_kind"]["gray"]["n"] == 2 and set(row["objects_per_nucleus"]) == {"all", "gray"}
    (summary,) = [line for line in lines if line["benchmark"] == "fragment_merge"]
    best = max(row["validation"] for row in rows.values())
    assert summary["chosen_on_validation"] == min(v for v, r in rows.items() if r["validation"] == best)


def test_a_folder_that_is_not_a_run_is_named(tmp_path: Path):
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "fragment_merge.py"), str(tmp_path)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
    )
    assert done.returncode != 0 and "Traceback" not in done.stderr
    assert f"{tmp_path} is not a finished fine-tuning run (no best.ckpt)" in done.stderr
