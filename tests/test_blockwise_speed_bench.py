"""benchmarks/blockwise_speed.py --smoke: the same image predicted whole and block-wise through
`predict_files`, each in its own process, with Mpx/s, their ratio, peak memory and label agreement."""

from __future__ import annotations

import pytest
from conftest import run_benchmark_script


def test_smoke_run_prints_both_sides_their_ratio_and_equal_labels(tmp_path):
    (line,) = [x for x in run_benchmark_script("blockwise_speed.py", "--smoke", cwd=tmp_path) if "bar" in x]
    assert line["benchmark"] == "blockwise_speed" and line["size"] == 600 and line["block"] == 256
    assert line["whole_mpx_per_s"] > 0 and line["blocks_mpx_per_s"] > 0
    ratio = line["blocks_mpx_per_s"] / line["whole_mpx_per_s"]
    assert line["blocks_over_whole"] == pytest.approx(ratio, rel=0.01)  # Mpx/s are rounded
    assert line["bar"] == 0.9 and line["passes"] == (ratio >= 0.9)
    assert line["blocks_over_whole_cpu_time"] == pytest.approx(
        line["whole_cpu_seconds"] / line["blocks_cpu_seconds"], rel=0.02
    )
    assert line["whole_peak_rss_gib"] > 0.1 and line["blocks_peak_rss_gib"] > 0.1
    # scale 1, no TTA, an image within one sample window: the block-wise map is the whole one, renumbered
    assert line["labels_equal_up_to_renumbering"] and line["objects_split_or_merged"] == 0
    assert line["pixel_agreement"] == 1.0 and line["objects_whole"] == line["objects_blocks"] > 0
