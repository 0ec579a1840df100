"""benchmarks/peer_instance.py: without its peers it stops at once with one line naming the `[peers]`
extra; with them (pip install '.[peers]') its smoke run trains, predicts and scores every tool."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import BENCHMARKS, benchmark_module, run_benchmark_script

SRC = Path(__file__).resolve().parents[1] / "src"
METRICS = ("aji", "aji_plus", "pq", "ap@0.5", "dsb_score")


def _without(tmp_path: Path, module: str, present: tuple[str, ...] = ()) -> dict[str, str]:
    """An environment in which `import module` fails as it does where the package is not installed,
    whether or not this interpreter has it (a module of that name first on the path raises ImportError),
    and each of `present` imports (an empty module of that name), whether or not it is installed."""
    shadow = tmp_path / "shadow"
    for name, body in [(module, f'raise ImportError("No module named {module!r}")\n')] + [
        (p, "") for p in present
    ]:
        (shadow / name).mkdir(parents=True)
        (shadow / name / "__init__.py").write_text(body)
    path = os.pathsep.join([str(shadow), str(SRC), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


@pytest.mark.parametrize(
    ("tool", "module", "present"),
    [
        ("stardist", "stardist", ()),
        ("cellpose", "cellpose", ()),
        # stardist installed without tensorflow (pip's stardist does not require it): the tool is named,
        # not the module
        ("stardist", "tensorflow", ("stardist", "csbdeep")),
    ],
)
def test_a_missing_peer_stops_the_script_with_one_line_naming_the_extra(
    tmp_path: Path, tool: str, module: str, present: tuple[str, ...]
) -> None:
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / "peer_instance.py"), "--smoke", "--tools", f"sslseg,{tool}"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=tmp_path,
        env=_without(tmp_path, module, present),
    )
    assert done.returncode == 2, done.stderr[-2000:]
    assert done.stdout == ""  # nothing trained, nothing printed
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in done.stderr, done.stderr[-2000:]
    assert (
        "pip install '.[peers]'" in lines[0] and f"--tools {tool} " in lines[0] and f"({module}:" in lines[0]
    )
    assert not (tmp_path / "runs").exists()  # it stopped before writing anything


def test_the_smoke_run_scores_every_tool_and_compares_sslseg_with_each_peer(tmp_path: Path) -> None:
    pytest.importorskip("stardist")
    pytest.importorskip("cellpose")
    lines = run_benchmark_script("peer_instance.py", "--smoke", "--setting", "8", cwd=tmp_path, timeout=900)
    rows = {line["tool"]: line for line in lines if "tool" in line}
    assert set(rows) == {"sslseg", "stardist", "cellpose"}
    for tool, row in rows.items():
        assert row["benchmark"] == f"peer_instance/8/{tool}" and row["smoke"] is True
        for metric in METRICS:
            assert 0.0 <= row[metric] <= 1.0, (tool, metric, row[metric])
        # the same 8 images for every tool: 7 train and 1 validates (protocol budget), 3 test images
        assert (row["n_train"], row["n_val"], row["n_test"]) == (7, 1, 3)
        assert row["train_seconds"] > 0 and row["predict_seconds"] > 0
        assert row["by_kind"]["gray"]["n"] == 3 and "colour" not in row["by_kind"]  # synthetic: gray only
    # sslseg's tiny model finds some nuclei even after a single epoch (AJI 0.08 with --minutes 0.001, 0.08-0.12
    # at the smoke budget): 0 means its predictions were empty. The peers' smoke AJI (cellpose's is 0) cannot
    # tell an empty prediction apart
    assert rows["sslseg"]["aji"] > 0
    (comparison,) = [line for line in lines if line["benchmark"] == "peer_instance/8/comparison"]
    assert set(comparison["peers"]) == {"stardist", "cellpose"}
    for peer, verdict in comparison["peers"].items():
        diff = verdict["difference"]
        assert diff["aji"] == pytest.approx(rows["sslseg"]["aji"] - rows[peer]["aji"], abs=2e-4)
        expected = all(rows["sslseg"][m] >= rows[peer][m] for m in ("aji", "ap@0.5"))
        assert verdict["meets_bar"] is expected
    assert comparison["meets_bar"] is all(v["meets_bar"] for v in comparison["peers"].values())


def test_the_comparison_is_sslseg_minus_each_peer_and_its_bar_is_aji_and_ap_alone():
    # the smoke run cannot tell these apart: its PQ, AP@0.5 and DSB scores are all 0 after a 4 s budget
    comparison = benchmark_module("peer_instance").comparison
    base = dict.fromkeys(METRICS, 0.5)
    ours = {**base, "aji": 0.6, "pq": 0.4}
    line = comparison(
        "8",
        {
            "sslseg": ours,
            "stardist": base,  # sslseg ahead on AJI, level on AP@0.5, behind on PQ (not in the bar): met
            "cellpose": {**base, "aji": 0.65, "ap@0.5": 0.4},  # behind on AJI, ahead on AP@0.5: missed
        },
    )
    assert line["benchmark"] == "peer_instance/8/comparison"
    stardist, cellpose = line["peers"]["stardist"], line["peers"]["cellpose"]
    assert stardist["difference"] == pytest.approx(
        {"aji": 0.1, "aji_plus": 0.0, "pq": -0.1, "ap@0.5": 0.0, "dsb_score": 0.0}
    )
    assert cellpose["difference"] == pytest.approx(
        {"aji": -0.05, "aji_plus": 0.0, "pq": -0.1, "ap@0.5": 0.1, "dsb_score": 0.0}
    )
    assert stardist["meets_bar"] is True and cellpose["meets_bar"] is False and line["meets_bar"] is False
    behind_on_ap = comparison("all", {"sslseg": ours, "cellpose": {**base, "aji": 0.55, "ap@0.5": 0.51}})
    assert behind_on_ap["peers"]["cellpose"]["meets_bar"] is False and behind_on_ap["meets_bar"] is False
    assert comparison("all", {"sslseg": ours, "stardist": base})["meets_bar"] is True


def test_each_tool_is_scored_over_the_gray_and_the_colour_test_images_apart(tmp_path: Path):
    # issue 27: a default must hold on fluorescence and on stained images alike, so each tool's line splits
    # its scores by kind of test image, every image counted in its own kind only
    import numpy as np

    from sslseg.data.layouts.base import Sample
    from sslseg.data.splits import LabelBudget

    bench_module = benchmark_module("peer_instance")
    truth = np.zeros((8, 8), np.int32)
    truth[1:4, 1:4] = 1
    miss = np.zeros_like(truth)
    ids = ["g1", "g2", "c1"]
    bench = bench_module.Bench(
        setting="8",
        train_root=tmp_path,
        budget=LabelBudget("budget", [], [], [], []),
        samples={},
        test_samples=[Sample(id=i, image=tmp_path / f"{i}.png", label=None) for i in ids],
        truth=dict.fromkeys(ids, truth),
        seconds=1.0,
        out=tmp_path,
        smoke=True,
        draw_seed=0,
        images_csv=None,
        kind={"g1": "gray", "g2": "gray", "c1": "colour"},
    )
    means, by_kind = bench_module.score(bench, {"g1": truth, "g2": miss, "c1": truth})
    assert means["aji"] == pytest.approx(2 / 3)
    assert by_kind["gray"]["n"] == 2 and by_kind["gray"]["aji"] == pytest.approx(0.5)
    assert by_kind["colour"]["n"] == 1 and by_kind["colour"]["aji"] == pytest.approx(1.0)


def _tool_line(tool: str, setting: str = "8", **fields: object) -> str:
    """One tool's JSON line as the script prints it (the fields --compare reads or checks)."""
    import json

    row = {
        "benchmark": f"peer_instance/{setting}/{tool}",
        "tool": tool,
        "setting": setting,
        "smoke": False,
        **dict.fromkeys(METRICS, 0.5),
        "budget_seconds": 1800.0,
        "n_train": 7,
        "n_val": 1,
        "n_test": 65,
        "draw_seed": 0,
        "images_csv": None,
        "cores": 1,
        **fields,
    }
    return json.dumps(row)


def test_compare_joins_tools_run_apart_into_one_comparison_per_setting(tmp_path: Path):
    # tools run side by side, one per core, each print their own line; --compare must give what one run
    # of all of them would have printed
    compare_logs = benchmark_module("peer_instance").compare_logs
    (tmp_path / "a.jsonl").write_text(
        _tool_line("sslseg", aji=0.6) + "\n" + _tool_line("sslseg", "all", aji=0.7) + "\n"
    )
    (tmp_path / "b.log").write_text(
        "Epoch 1/400\n" + _tool_line("stardist", aji=0.55, **{"ap@0.5": 0.6}) + "\n"
    )
    (tmp_path / "c.jsonl").write_text(_tool_line("cellpose", "all", aji=0.65) + "\n")
    lines = {
        line["benchmark"]: line
        for line in compare_logs([tmp_path / n for n in ("a.jsonl", "b.log", "c.jsonl")])
    }
    assert set(lines) == {"peer_instance/8/comparison", "peer_instance/all/comparison"}
    eight = lines["peer_instance/8/comparison"]
    assert set(eight["peers"]) == {"stardist"}
    assert eight["peers"]["stardist"]["difference"]["aji"] == pytest.approx(0.05)
    assert eight["meets_bar"] is False  # behind on AP@0.5
    assert lines["peer_instance/all/comparison"]["peers"]["cellpose"]["meets_bar"] is True


@pytest.mark.parametrize(
    ("peer_fields", "message"),
    [
        ({"budget_seconds": 3600.0}, "differ in budget_seconds"),  # not an equal budget
        ({"cores": 2}, "differ in cores"),  # one tool had both cores
        ({"draw_seed": 1}, "differ in draw_seed"),  # other 8 images
        ({"setting": "all", "benchmark": "peer_instance/all/stardist"}, "needs sslseg and a peer"),
    ],
)
def test_compare_refuses_runs_that_were_not_alike(tmp_path: Path, peer_fields: dict, message: str):
    compare_logs = benchmark_module("peer_instance").compare_logs
    (tmp_path / "a.jsonl").write_text(_tool_line("sslseg") + "\n")
    (tmp_path / "b.jsonl").write_text(_tool_line("stardist", **peer_fields) + "\n")
    with pytest.raises(SystemExit, match=message):
        compare_logs([tmp_path / "a.jsonl", tmp_path / "b.jsonl"])


def test_compare_names_the_file_it_cannot_read(tmp_path: Path):
    compare_logs = benchmark_module("peer_instance").compare_logs
    (tmp_path / "bad.jsonl").write_text(_tool_line("sslseg") + "\n{not json\n")
    with pytest.raises(SystemExit, match=r"bad.jsonl:2 is not a JSON line"):
        compare_logs([tmp_path / "bad.jsonl"])
    with pytest.raises(SystemExit, match=r"cannot read .*missing.jsonl"):
        compare_logs([tmp_path / "missing.jsonl"])


def test_cellpose_gets_enough_epochs_to_leave_its_learning_rate_warm_up():
    # cellpose's learning rate rises from 0 over its first 10 epochs: one epoch of all 598 DSB2018 images
    # (about 25 min on one core) trained at a learning rate of 0 and segmented nothing
    module = benchmark_module("peer_instance")
    schedule, subset_epochs = module.cellpose_schedule, module.CELLPOSE_SUBSET_EPOCHS
    assert schedule(3600, 0.5, 7, 1) == (int(3600 // (0.5 * (7 + 1 / 30))), None)  # many whole epochs
    # 8 selected images at 3.17 s each: 80 whole epochs fit, and are kept, not 100 epochs of 5 of the 7
    assert schedule(1800, 3.17, 7, 1) == (80, None)
    n_epochs, per_epoch = schedule(1400, 2.46, 598, 40)  # the budget affords half an epoch of the whole set
    assert n_epochs == subset_epochs and per_epoch is not None and 1 <= per_epoch < 598
    assert n_epochs * 2.46 * (per_epoch + 40 / 30) <= 1400  # and it still fits the budget
    assert schedule(10, 2.46, 598, 40)[1] == 1  # less than an image per epoch: one-image epochs
