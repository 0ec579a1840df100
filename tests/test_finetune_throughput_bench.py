"""benchmarks/finetune_throughput.py --smoke: sslseg's fine-tuning steps/s end to end beside the bare loop's,
their ratio and the bar, on synthetic images with a tiny U-Net (the step timer reaches the trainer through
`finetune(callbacks=...)`)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import run_benchmark_script


def test_smoke_run_prints_e2e_beside_the_bare_loop_and_their_ratio(tmp_path):
    (line,) = run_benchmark_script(
        "finetune_throughput.py", "--smoke", "--steps", "2", "--warmup", "1", cwd=tmp_path
    )
    assert line["benchmark"] == "finetune_throughput" and line["data"] == "synthetic 64 px"
    assert len(line["e2e_step_s"]) == 2 and len(line["bare_step_s"]) == 4  # 2 timed steps; bare twice
    assert line["e2e_steps_per_s"] == pytest.approx(1 / np.median(line["e2e_step_s"]), rel=0.02)
    assert line["bare_steps_per_s"] == pytest.approx(1 / np.median(line["bare_step_s"]), rel=0.02)
    assert line["ratio"] == pytest.approx(line["e2e_steps_per_s"] / line["bare_steps_per_s"], rel=0.01)
    assert line["passes"] == (line["ratio"] >= line["bar_ratio"] == 0.9)
    assert line["e2e_images_per_s"] == pytest.approx(line["e2e_steps_per_s"] * 2, rel=0.01)
