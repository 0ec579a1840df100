"""benchmarks/label_efficiency.py: its --smoke run (the real presets' arms on tiny synthetic nuclei) gives the
paired figures per arm and budget, the wall times and the bar, runs only the chosen subset, and resumes
without redoing a cell; and the bar is judged by its rule."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from conftest import BENCHMARKS, benchmark_module, finished_cell
from scipy import stats

SCRIPT = BENCHMARKS / "label_efficiency.py"


def _run(tmp_path: Path, *args: str) -> tuple[list[dict], str]:
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")]),
        "OMP_NUM_THREADS": "2",
    }
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--out", str(tmp_path / "le"), *args],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")], done.stderr


def test_smoke_subset_gives_paired_figures_times_and_bar_and_resumes(tmp_path):
    lines, _ = _run(tmp_path, "--arms", "random,masked_semi", "--budgets", "4")
    assert all(x["benchmark"] == "label_efficiency" for x in lines)
    (head,) = [x for x in lines if "cells_done" in x and "arm" not in x]
    assert (
        head["cells_done"] == 6 and head["cells"] == 90 and not head["failed"]
    )  # 2 arms × 3 seeds of 15 × 2 × 3

    cells = {(x["arm"], x["labelled_images"]): x for x in lines if "per_seed" in x}
    random, arm = cells["random", 4], cells["masked_semi", 4]
    assert arm["annotated_images"] == 4  # every mask the run saw, validation included (none here)
    a = np.array([arm["per_seed"][s] for s in "012"])
    b = np.array([random["per_seed"][s] for s in "012"])
    assert np.isfinite(a).all() and np.isfinite(b).all()
    assert arm["n_pairs"] == 3
    assert arm["difference"] == pytest.approx((a - b).mean(), abs=1e-4)
    assert arm["relative_gain"] == pytest.approx(a.mean() / b.mean() - 1, rel=0.01)  # scores printed rounded
    expected_p = 1.0 if np.ptp(a - b) == 0 else stats.ttest_1samp(a - b, 0, alternative="greater").pvalue
    assert arm["paired_t_p"] == pytest.approx(expected_p, abs=1e-3)
    lo, hi = arm["difference_ci"]
    assert lo <= arm["difference"] + 1e-4 and arm["difference"] - 1e-4 <= hi
    # budget 8 and the other arms were not run: no scores there, no line for an arm without a cell
    assert cells["random", 8]["n_seeds"] == 0 and ("simclr", 4) not in cells

    times = {x["arm"]: x for x in lines if "finetune_s_mean" in x}
    assert times["masked_semi"]["cells_done"] == 3 and times["masked_semi"]["pretrain_s"] > 0
    assert times["masked_semi"]["pretraining"] == times["masked"]["pretraining"]  # one shared pretraining
    assert times["simclr"]["cells_done"] == 0 and times["simclr"]["pretrain_s"] is None  # not needed, not run
    assert times["random"]["finetune_within_limit"] is True

    (bar,) = [x for x in lines if "bar" in x]
    rule = arm["relative_gain"] >= 0.10 and arm["paired_t_p_holm"] < 0.05
    assert bar["met"] is rule and bar["best"]["arm"] == "masked_semi"
    assert any("verdict" in x for x in lines)

    results = sorted((tmp_path / "le" / "study" / "cells").rglob("result.json"))
    assert len(results) == 6
    stamps = [p.stat().st_mtime_ns for p in results]
    again, err = _run(tmp_path, "--arms", "random,masked_semi", "--budgets", "4")
    assert "7 already done" in err  # 6 cells and their pretraining: nothing redone
    assert [p.stat().st_mtime_ns for p in results] == stamps
    assert [x for x in again if "per_seed" in x] == [x for x in lines if "per_seed" in x]


def test_bar_needs_gain_significance_and_seeds():
    bench = benchmark_module("label_efficiency")
    bar = bench.Bar()

    def line(arm: str, budget: int, gain: float, p: float, n: int = 5) -> dict:
        return {
            "dataset": "dsb2018",
            "metric": "aji",
            "arm": arm,
            "labelled_images": budget,
            "relative_gain": gain,
            "paired_t_p_holm": p,
            "paired_t_p": p / 2,
            "difference_ci": [0.01, 0.05],
            "n_pairs": n,
        }

    assert bench.bar_result(bar, [line("semi", 8, 0.12, 0.01)])["met"] is True
    assert bench.bar_result(bar, [line("semi", 16, 0.12, 0.01)])["met"] is True
    # the gain alone, the significance alone, too few seeds, or another budget: not met
    assert bench.bar_result(bar, [line("semi", 8, 0.12, 0.2)])["met"] is False
    assert bench.bar_result(bar, [line("semi", 8, 0.05, 0.001)])["met"] is False
    short = bench.bar_result(bar, [line("semi", 8, 0.12, 0.01, n=4)])
    assert short["met"] is False and "4 paired seeds" in short["reason"]
    assert bench.bar_result(bar, [line("semi", 32, 0.3, 0.001)])["met"] is False
    assert bench.bar_result(bar, [line("random", 8, 0.3, 0.001)])["met"] is False
    # the passing arm is named even when a larger, non-significant gain exists
    both = bench.bar_result(bar, [line("masked", 8, 0.30, 0.3), line("semi", 16, 0.11, 0.02)])
    assert both["met"] is True and both["best"]["arm"] == "semi"
    none = bench.bar_result(bar, [])
    assert none["met"] is False and "not measured" in none["reason"]
    assert math.isclose(bar.gain, 0.10) and bar.budgets == (8, 16) and bar.min_seeds == 5


def test_selection_lines_and_their_bar(tmp_path):
    bench = benchmark_module("label_efficiency")
    study = bench.smoke_study(tmp_path).model_copy(update={"seeds": list(range(10))})
    draws = [0.30, 0.50, 0.40, 0.45, 0.35, 0.42, 0.38, 0.44, 0.41, 0.39]  # random init, a draw per seed
    chosen = [0.47, 0.48, 0.49]  # typiclust's images, three training seeds
    rows = [finished_cell("synthetic", "random", 4, s, x) for s, x in enumerate(draws)]
    rows += [finished_cell("synthetic", "typiclust", 4, s, x) for s, x in enumerate(chosen)]
    (drawn, picked) = [x for x in bench.budget_lines(study, rows, "aji") if x.get("labelled_images") == 4][:2]
    assert (
        picked["arm"] == "typiclust" and "relative_gain" not in picked
    )  # not paired seed by seed with draws
    assert "the random draws" in picked["compared_with"]
    (line,) = bench.selection_lines(study, rows)
    assert line["n_draws"] == 10 and line["chosen_mean"] == pytest.approx(0.48)
    assert line["relative_gain_over_draws"] == pytest.approx(0.48 / np.mean(draws) - 1, abs=1e-4)
    assert line["welch_p"] == pytest.approx(
        stats.ttest_ind(chosen, draws, equal_var=False, alternative="greater").pvalue, abs=1e-4
    )
    assert line["worst_seed_at_draws_median"] is True and line["share_of_draws_beaten"] == pytest.approx(0.9)

    bar = bench.SelectionBar(dataset="synthetic", budgets=(4,))
    assert bench.selection_bar_result(bar, [line])["met"] is True
    # one bad training seed, too few draws, or too small a gain: each alone fails, and is named
    bad = bench.selection_bar_result(bar, [{**line, "worst_seed_at_draws_median": False}])
    assert bad["met"] is False and "below the draws' median" in bad["reason"]
    few = bench.selection_bar_result(bar, [{**line, "n_draws": 9}])
    assert few["met"] is False and "9 random draws" in few["reason"]
    small = bench.selection_bar_result(bar, [{**line, "relative_gain_over_draws": 0.09}])
    assert small["met"] is False and "gain" in small["reason"]
    weak = bench.selection_bar_result(bar, [{**line, "welch_p": 0.06}])
    assert weak["met"] is False and "Welch" in weak["reason"]
    lone = {**line, "welch_p": None, "chosen_per_seed": [0.5], "relative_gain_over_draws": 0.2}
    # a chosen row with one training seed cannot be judged, and must not crash the judging of the others
    assert bench.selection_bar_result(bar, [line, lone])["met"] is True
    assert "no Welch p over 1 training seed" in bench.selection_bar_result(bar, [lone])["reason"]
    assert (
        bench.selection_bar_result(bench.SelectionBar(budgets=(4,)), [line])["met"] is False
    )  # another dataset
    assert "not measured" in bench.selection_bar_result(bar, [])["reason"]


def test_against_pairs_the_same_cells_of_another_study(tmp_path):
    bench = benchmark_module("label_efficiency")
    study = bench.smoke_study(tmp_path)
    mine = [0.50, 0.55, 0.45]
    theirs = [0.40, 0.50, 0.44]
    rows = [finished_cell("synthetic", "random", 4, s, x) for s, x in enumerate(mine)]
    other = [finished_cell("synthetic", "random", 4, s, x) for s, x in enumerate(theirs)]
    other.append(
        finished_cell("synthetic", "random", 8, 0, 0.9)
    )  # no cell of this study to pair with: left out
    (line,) = bench.against_lines(study, rows, "aji", other, tmp_path / "other")
    assert (line["arm"], line["labelled_images"], line["seeds"]) == ("random", 4, [0, 1, 2])
    d = np.array(mine) - np.array(theirs)
    assert line["difference"] == pytest.approx(d.mean(), abs=1e-4)
    assert line["paired_t_p_greater"] == pytest.approx(
        stats.ttest_1samp(d, 0, alternative="greater").pvalue, abs=1e-4
    )
    assert line["relative"] == pytest.approx(np.mean(mine) / np.mean(theirs) - 1, abs=1e-4)


def test_modality_lines_split_each_cell_by_gray_and_colour_test_images(tmp_path):
    from sslseg.study.spec import study_dir

    bench = benchmark_module("label_efficiency")
    study = bench.smoke_study(tmp_path)
    assert bench.test_groups(study) == {}  # no separate test set: nothing to split
    group = {"a": "gray", "b": "gray", "c": "colour"}
    per_image = {0: {"a": 0.6, "b": 0.4, "c": 0.1}, 1: {"a": 0.7, "b": 0.5, "c": 0.3}}
    rows = []
    for seed, scores in per_image.items():
        rows.append(finished_cell("synthetic", "random", 4, seed, 0.0))
        cell = study_dir(study) / "cells" / rows[-1].key
        cell.mkdir(parents=True)
        (cell / "test_per_image.csv").write_text(
            "id,aji\n" + "".join(f"{k},{v}\n" for k, v in scores.items())
        )
    rows.append(finished_cell("synthetic", "random", 4, 2, 0.0))  # no per-image file: left out
    (line,) = bench.modality_lines(study, rows, "aji", group)
    assert line["test_images"] == {"colour": 1, "gray": 2}
    assert line["gray_per_seed"] == {"0": 0.5, "1": 0.6} and line["colour_per_seed"] == {"0": 0.1, "1": 0.3}
    assert line["gray_mean"] == pytest.approx(0.55) and line["colour_mean"] == pytest.approx(0.2)
