"""Where do annotations matter, and how long must a few-label model train? (issue 28, step 0.)

Runs `studies/label_curve_dsb2018.yaml` through the study runner: random init at 4–64 annotated DSB2018
images, trained for 400, 1000, 2000 and 4000 steps, three draws of the annotated images each. Every cell is
validated each epoch on one fixed protocol-validation slice of stage1_train that no cell ever annotates.

The schedule is chosen on that slice alone: per budget, the shortest schedule whose mean validation score
at its last epoch (what the schedule gives without validation, as the presets train it; the best of its
epochs would favour long schedules, which have more noisy epochs to pick from) over the draws is within
`--tolerance` (1 %) of the best schedule's. Then, and only then, the test score
(AJI on the 65 stage1_test images) is read at the chosen schedule: the label curve, and what 8 → 64
annotated images buy there. Resumable, in pieces:

    python benchmarks/label_curve.py --budgets 8 --seeds 0          # one draw of 8 images, four schedules
    python benchmarks/label_curve.py --summary-only                 # the figures of the cells done so far
    python benchmarks/label_curve.py --smoke                        # tiny synthetic data, about a minute

Prints JSON lines: per budget and schedule the draws done and the mean validation and test scores, per
budget the chosen schedule, and the curve at it.
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path
from typing import Any

import numpy as np
from _common import emit, hardware

from sslseg.study.runner import run_study, with_store
from sslseg.study.spec import StudyConfig, expand, load_study, study_dir
from sslseg.study.store import JobRow, existing_backend, read_rows

ROOT = Path(__file__).resolve().parents[1]
PRESET = ROOT / "studies" / "label_curve_dsb2018.yaml"
METRIC = "aji"


def steps_of(row: JobRow) -> int:
    """The optimiser steps a cell's schedule trains (epochs × steps per epoch)."""
    train = (row.config or {})["train"]
    return int(train["epochs"]) * int(train["steps_per_epoch"])


def last_val_score(row: JobRow) -> float | None:
    """The validation score of a cell's last epoch: recorded by the run (`last_val_score`), or for cells run
    before it was, read from the run's own per-epoch log (`logs/**/metrics.csv`, resumed parts included)."""
    info = row.info or {}
    if info.get("last_val_score") is not None:
        return float(info["last_val_score"])
    folder = Path(str((row.config or {}).get("output", "")))
    last: tuple[int, float] | None = None
    # parts in the order they were written: where a killed run logged an epoch its resumed part ran again,
    # the later row (the run that went on) wins
    parts = (
        sorted(folder.glob("logs/**/metrics.csv"), key=lambda p: p.stat().st_mtime_ns) if folder.name else []
    )
    for log in parts:
        for line in csv.DictReader(log.read_text().splitlines()):
            if line.get("val/score"):
                epoch = int(float(line["epoch"]))
                if last is None or epoch >= last[0]:
                    last = (epoch, float(line["val/score"]))
    return None if last is None else last[1]


def choose_schedule(val_means: dict[int, float], tolerance: float = 0.01) -> int:
    """The shortest schedule whose mean validation score is within `tolerance` (relative) of the best one's."""
    if not val_means:
        raise ValueError("no schedule has a validation score yet")
    best = max(val_means.values())
    return min(s for s, v in val_means.items() if v >= best * (1 - tolerance))


def summary(rows: list[JobRow], tolerance: float = 0.01, metric: str = METRIC) -> list[dict[str, Any]]:
    """JSON lines of the done cells: scores per budget and schedule, the schedule chosen on validation per
    budget (among schedules with as many draws as the best-covered one), and the test curve at it."""
    done = [r for r in rows if r.kind == "finetune" and r.status == "done" and r.metrics]
    table: dict[int, dict[int, list[tuple[float, float, int]]]] = {}
    for r in done:
        n = int((r.info or {}).get("n_labelled_train") or 0)
        val = last_val_score(
            r
        )  # the best epoch's would favour long schedules: more epochs, more noise to pick
        test = r.metrics.get(metric)
        if val is None or test is None:
            continue
        table.setdefault(n, {}).setdefault(steps_of(r), []).append((float(val), float(test), r.seed or 0))
    lines: list[dict[str, Any]] = []
    curve: dict[int, dict[str, Any]] = {}
    for n in sorted(table):
        for steps, cells in sorted(table[n].items()):
            lines.append(
                {
                    "benchmark": "label_curve",
                    "annotated_train": n,
                    "steps": steps,
                    "draws": sorted(c[2] for c in cells),
                    "val_last_epoch_mean": round(float(np.mean([c[0] for c in cells])), 4),
                    "test_mean_not_used_for_choice": round(float(np.mean([c[1] for c in cells])), 4),
                }
            )
        most = max(len(c) for c in table[n].values())
        complete = {
            s: float(np.mean([c[0] for c in cells])) for s, cells in table[n].items() if len(cells) == most
        }
        chosen = choose_schedule(complete, tolerance)
        tests = [c[1] for c in table[n][chosen]]
        curve[n] = {
            "steps": chosen,
            "draws": len(tests),
            "test_mean": round(float(np.mean(tests)), 4),
            "test_sd": round(float(np.std(tests, ddof=1)), 4) if len(tests) > 1 else None,
        }
        lines.append({"benchmark": "label_curve", "annotated_train": n, "chosen_on_validation": curve[n]})
    if 8 in curve and 64 in curve:
        gain = curve[64]["test_mean"] / curve[8]["test_mean"] - 1
        lines.append({"benchmark": "label_curve", "gain_8_to_64": round(gain, 4), "metric": metric})
    return lines


def smoke_study(out: Path) -> StudyConfig:
    """The preset's shape on tiny synthetic nuclei (written once under `out`)."""
    from sslseg.data.synth import write_synthetic_dataset

    data = out / "data"
    if not (data / "images").is_dir():
        write_synthetic_dataset(data, n_images=16, size=48, seed=0)
    tree = load_study(PRESET).model_dump(mode="json", exclude_defaults=True)
    tree.update(
        name="label-curve-smoke",
        output=str(out / "study"),
        labelled_images=[2, 4],
        seeds=[0, 1],
        datasets=[
            {
                "name": "synthetic",
                "train": str(data),
                "task": "instance",
                "validation": "fixed",
                "val_fraction": 0.2,
                "test_fraction": 0.25,
            }
        ],
        pretrainings=[
            {"name": "random", "init": "random", "finetune": {"train": {"epochs": 1}}},
            {"name": "steps4", "init": "random", "finetune": {"train": {"epochs": 2}}},
        ],
        finetune={
            "model": {"decoder_channels": [16, 16, 8, 8, 8]},
            "train": {"steps_per_epoch": 2, "batch_size": 2, "crop_size": 32, "patience": 1000},
        },
    )
    return StudyConfig.model_validate(tree)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--budgets", help="annotated images, e.g. 8,16 (default: all of the preset)")
    ap.add_argument("--seeds", help="draws, e.g. 0,1 (default: all)")
    ap.add_argument("--arms", help="schedules by arm name, e.g. random,steps2000 (default: all)")
    ap.add_argument("--tolerance", type=float, default=0.01, help="relative gap to the best validation score")
    ap.add_argument("--summary-only", action="store_true", help="no training: the figures so far")
    ap.add_argument(
        "--workers", type=int, default=1, help="parallel workers sharing the cores (one thread each)"
    )
    ap.add_argument("--smoke", type=Path, help="run the preset's shape on tiny synthetic data in this folder")
    args = ap.parse_args(argv)
    study = smoke_study(args.smoke) if args.smoke else load_study(PRESET)
    pick = {
        "labelled_images": [int(x) for x in args.budgets.split(",")] if args.budgets else study.budgets,
        "seed": [int(x) for x in args.seeds.split(",")] if args.seeds else study.seeds,
        "pretraining": args.arms.split(",") if args.arms else [p.name for p in study.pretrainings],
    }
    cells = [
        j.key
        for j in expand(study)
        if j.kind == "finetune" and all(getattr(j, k) in v for k, v in pick.items())
    ]
    if not cells:
        sys.exit(f"no cell of the study matches {pick}")
    emit(benchmark="label_curve", machine=hardware(), cells=len(cells), study=str(study_dir(study)))
    if not args.summary_only:
        run_study(study, workers=args.workers, progress=False, only=cells)
    folder = study_dir(study)
    rows = [] if existing_backend(folder) is None else read_rows(folder, None, with_store(study).store)
    for line in summary([JobRow.from_row(r) for r in rows], args.tolerance):
        emit(**line)
    return 0


if __name__ == "__main__":
    sys.exit(main())
