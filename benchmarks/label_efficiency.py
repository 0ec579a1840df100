"""Do the unlabeled images pay at a handful of labels? (issue 13's evidence.)

Runs the study presets `studies/label_efficiency_dsb2018.yaml` (instance, AJI on stage1_test) and
`studies/label_efficiency_ph2.yaml` (semantic, Dice) through the study runner: 4, 8, 16 and 32 annotated
images (every mask a run sees, validation included), five seeds, and the presets' arms — random init, the two best
SSL pretrainings of RESULTS.md (masked image modelling and SimCLR, 400 steps), semi-supervised (mean-teacher)
fine-tuning from random init, the same with CutMix and a Dice term in its unlabeled loss (`semi_mix`), and
masked pretraining + semi-supervised fine-tuning, and chosen images (issue 28: typiclust on image
descriptors, on a random-init embedding and on masked's encoder; probcover; typiclust's images with
masked's initialisation and with self-training). Each seed fixes
one labelled subset for every drawing arm, so those arms are compared with random init seed by seed; an arm
that chooses its images keeps them for every seed and is set against random init's draws instead.

The study is resumable: a run does the cells not done yet (of the chosen subset) and stops cleanly when
killed, so the evidence can be gathered over several sessions, e.g.

    python benchmarks/label_efficiency.py --dataset dsb2018 --budgets 8,16 --arms random,semi
    python benchmarks/label_efficiency.py --dataset dsb2018 --dry-run        # cells left, minutes per arm
    python benchmarks/label_efficiency.py --dataset all --summary-only       # the figures so far, no training
    python benchmarks/label_efficiency.py --smoke                            # tiny synthetic data, seconds
    python benchmarks/label_efficiency.py --summary-only --out runs/a --against runs/b   # same draws, paired

Every run ends with JSON lines over all the cells stored so far: per dataset, arm and budget the mean
score, the paired difference to random init with its bootstrap CI and one-sided paired t and Wilcoxon
p-values (sslseg.study.stats via sslseg.study.analyze, Holm-corrected across the drawing arms at each
budget, the choosing arms a family apart), the wall time of each arm against its limits (pretraining ≤ 60
min, a fine-tuning ≤ 15 min), the study's verdict, and whether the bar is met: on DSB2018 with 8 or 16 annotated images, one arm ≥ +10 % relative
AJI over random init with a paired p < 0.05 (Holm) over ≥ 5 seeds. For an arm that chooses its images:
its scores against the random draws (one-sided Welch and Mann–Whitney p, the share of draws beaten, its worst
seed against their median) and issue 28's bar (≥ +10 % over the mean of ≥ 10 draws, Welch p < 0.05, no
training seed below the draws' median). `--against FOLDER` pairs each cell with the same cell (same seed,
so the same images) of another study folder, e.g. another schedule. `sslseg report <study folder>` draws
the full report of the same cells. Where the test set mixes gray and colour images (DSB2018: 53 and 12),
each arm's scores are also given over each kind apart.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from _common import colour_or_gray, emit, hardware, means_by_kind

from sslseg.config import deep_merge, parse_overrides
from sslseg.study.analyze import analyze_group, annotated_counts, cell_budget, reference_score, score_table
from sslseg.study.estimate import estimate_jobs
from sslseg.study.runner import run_study, with_store
from sslseg.study.spec import BASELINE, Job, StudyConfig, expand, load_study, select_jobs, study_dir
from sslseg.study.store import JobRow, existing_backend, read_rows
from sslseg.study.verdict import verdict

ROOT = Path(__file__).resolve().parents[1]
PRESETS = {
    "dsb2018": ROOT / "studies" / "label_efficiency_dsb2018.yaml",
    "ph2": ROOT / "studies" / "label_efficiency_ph2.yaml",
}
PRETRAIN_LIMIT_S = 60 * 60  # the budget for one pretraining on the 2-core CPU
FINETUNE_LIMIT_S = 15 * 60  # and for one fine-tuning
STATE = "finetuned"


@dataclasses.dataclass(frozen=True)
class _BarScope:
    """What a bar is about: a relative `gain` in `metric` on `dataset` at one of `budgets`, significant
    below `alpha`."""

    dataset: str = "dsb2018"
    metric: str = "aji"
    budgets: tuple[int, ...] = (8, 16)
    gain: float = 0.10
    alpha: float = 0.05

    def covers(self, line: dict[str, Any]) -> bool:
        """Whether a result line is one this bar judges (its dataset, metric and a budget of the bar)."""
        return (
            line.get("dataset") == self.dataset
            and line.get("metric") == self.metric
            and line.get("labelled_images") in self.budgets
        )


@dataclasses.dataclass(frozen=True)
class Bar(_BarScope):
    """The issue's bar: an arm beats random init by `gain` relative on `metric` at one of `budgets`, with a
    paired one-sided t-test p below `alpha` after Holm correction across the arms, over ≥ `min_seeds`."""

    min_seeds: int = 5

    def text(self) -> str:
        return (
            f"{self.dataset}: an arm ≥ +{self.gain:.0%} relative {self.metric} over random init at "
            f"{' or '.join(map(str, self.budgets))} annotated images, paired t p < {self.alpha:g} (Holm across "
            f"the arms), ≥ {self.min_seeds} seeds"
        )


def smoke_study(out: Path) -> StudyConfig:
    """The presets' shape on tiny synthetic nuclei (written once under `out`), sized to run in about a minute."""
    from sslseg.data.synth import write_synthetic_dataset

    data = out / "data"
    if not (data / "images").is_dir():
        write_synthetic_dataset(data, n_images=16, size=48, seed=0)
    preset = load_study(PRESETS["dsb2018"])
    tree = {
        "name": "label-efficiency-smoke",
        "output": str(out / "study"),
        "encoder": "resnet18",
        "datasets": [
            {
                "name": "synthetic",
                "train": str(data),
                "task": "instance",
                "val_fraction": 0.0,
                "test_fraction": 0.25,
            }
        ],
        # the arms of the real presets, so the smoke run covers each kind of row
        "pretrainings": [p.model_dump(mode="json", exclude_defaults=True) for p in preset.pretrainings],
        "labelled_images": [4, 8],
        "seeds": [0, 1, 2],
        "pretrain": {"views": {"size": 32}, "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8}},
        "finetune": {
            "model": {"decoder_channels": [16, 16, 8, 8, 8]},
            "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "crop_size": 32},
            "semi": {"batch_size": 2},
        },
        "analysis": {"representation": False, "uncertainty": False},
        "keep_weights": "none",
    }
    return StudyConfig.model_validate(tree)


def _parse_list(text: str | None, kind: type, what: str, valid: list[Any]) -> list[Any]:
    """A comma-separated subset of `valid` (all of them when not given); anything else is an error."""
    if text is None:
        return list(valid)
    try:
        chosen = [kind(x) for x in text.split(",") if x.strip()]
    except ValueError:
        sys.exit(f"--{what}: expected a comma-separated list, got {text!r}")
    bad = [x for x in chosen if x not in valid]
    if bad or not chosen:
        sys.exit(f"--{what}: {bad or text!r} not in the study; choose from {','.join(map(str, valid))}")
    return chosen


def selected_cells(study: StudyConfig, arms: list[str], budgets: list[int], seeds: list[int]) -> list[Job]:
    """The fine-tuning cells of the study in the chosen arms, budgets and seeds."""
    return [
        j
        for j in expand(study)
        if j.kind == "finetune" and j.pretraining in arms and j.labelled_images in budgets and j.seed in seeds
    ]


def _stored_rows(study: StudyConfig) -> list[dict[str, Any]]:
    """The study's rows as the store gives them (none before the first run)."""
    folder = study_dir(study)
    if existing_backend(folder) is None:
        return []
    return read_rows(folder, [j.key for j in expand(study)], with_store(study).store)


def _round(x: Any, digits: int = 4) -> Any:
    if isinstance(x, float | np.floating):
        return round(float(x), digits) if np.isfinite(x) else None
    if isinstance(x, list | tuple | np.ndarray):
        return [_round(v, digits) for v in x]
    return x


def estimate_lines(study: StudyConfig, cells: list[Job]) -> list[dict[str, Any]]:
    """Per arm: estimated seconds of its pretraining and of one fine-tuning cell, and of the work left in
    the chosen cells (finished jobs count their measured time); each job's estimate goes to stderr. Step
    times are measured on this machine now (sslseg.study.estimate), so a busy machine inflates them."""
    jobs = expand(study)
    keep = set(select_jobs(jobs, [j.key for j in cells]))
    chosen = [j for j in jobs if j.key in keep]
    rows = _stored_rows(study)
    done = {r["key"] for r in rows if r["status"] == "done"}
    seconds = estimate_jobs(chosen, rows)
    for j in chosen:
        status = "done" if j.key in done else "to run"
        print(f"{j.key:50s} {status:7s} {seconds[j.key] / 60:7.1f} min", file=sys.stderr, flush=True)
    lines = []
    ds = study.datasets[0].name
    for arm in dict.fromkeys(j.pretraining for j in cells):
        mine = [j for j in cells if j.pretraining == arm]
        pre = next((j.depends_on for j in mine if j.depends_on), None)
        left = sum(seconds[j.key] for j in mine if j.key not in done) + (
            seconds[pre] if pre and pre not in done else 0.0
        )
        per_cell = {
            b: float(np.mean([seconds[j.key] for j in mine if j.labelled_images == b]))
            for b in sorted({j.labelled_images for j in mine})
        }
        lines.append(
            {
                "benchmark": "label_efficiency",
                "estimate": True,
                "dataset": ds,
                "arm": arm,
                "pretraining": pre,
                "pretrain_s": _round(seconds[pre], 0) if pre else 0,
                "finetune_s_per_cell": {str(b): _round(s, 0) for b, s in per_cell.items()},
                "cells": len(mine),
                "cells_left": sum(j.key not in done for j in mine),
                "left_s": _round(left, 0),
                "note": "pretraining shared by the arms of one method: counted in each" if pre else None,
            }
        )
    total = sum(seconds[k] for k in keep if k not in done)
    lines.append(
        {"benchmark": "label_efficiency", "estimate": True, "dataset": ds, "left_s": _round(total, 0)}
    )
    return lines


def budget_lines(study: StudyConfig, rows: list[JobRow], metric: str) -> list[dict[str, Any]]:
    """Per arm and budget: the mean score, and against random init the paired difference (bootstrap CI),
    relative gain over the paired seeds, one-sided paired t and Wilcoxon p (raw and Holm across the arms)."""
    ds = study.datasets[0].name
    axis = annotated_counts(study, rows, ds)
    ref, _ = reference_score(study, rows, ds, metric)
    group = analyze_group(study, rows, ds, STATE, metric, ref, axis)
    tables = score_table(study, rows, ds, STATE, metric)
    base = tables.get(BASELINE)
    choosing = {p.name for p in study.pretrainings if p.selection is not None}
    out = []
    for arm, entry in group["pretrainings"].items():
        table = tables[arm]
        for j, budget in enumerate(study.budgets):
            scores = table[:, j]
            line: dict[str, Any] = {
                "benchmark": "label_efficiency",
                "dataset": ds,
                "arm": arm,
                "labelled_images": int(budget),
                "annotated_images": axis["annotated"][j],
                "metric": metric,
                "mean": _round(float(np.nanmean(scores)) if np.isfinite(scores).any() else np.nan),
                "n_seeds": int(np.isfinite(scores).sum()),
                "per_seed": dict(zip(map(str, study.seeds), _round(scores.tolist()), strict=True)),
            }
            if arm in choosing:  # other images than random init's seed by seed: set against the draws instead
                line["compared_with"] = "the random draws (its selection line)"
            elif arm != BASELINE and base is not None:
                test = entry["budget_tests"][j]
                paired = np.isfinite(scores) & np.isfinite(base[:, j])
                rel = (
                    float(scores[paired].mean() / base[paired, j].mean() - 1)
                    if paired.any() and base[paired, j].mean() > 0
                    else np.nan
                )
                line.update(
                    random_mean_paired=_round(float(base[paired, j].mean()) if paired.any() else np.nan),
                    n_pairs=test["n_pairs"],
                    difference=_round(test["difference_mean"]),
                    difference_ci=_round(list(test["difference_ci"])),
                    relative_gain=_round(rel),
                    paired_t_p=_round(test["paired_t_p"]),
                    paired_t_p_holm=_round(test["paired_t_p_holm"]),
                    wilcoxon_p=_round(test["wilcoxon_p"]),
                    wilcoxon_p_holm=_round(test["wilcoxon_p_holm"]),
                )
            out.append(line)
    line = {
        "benchmark": "label_efficiency",
        "dataset": ds,
        "verdict": verdict(study, ds, group, metric, STATE)["text"],
    }
    return [*out, line]


@dataclasses.dataclass(frozen=True)
class SelectionBar(_BarScope):
    """Issue 28's bar for chosen images: their mean over training seeds is ≥ `gain` relative above the mean of
    ≥ `min_draws` random draws (random init, each seed another draw) at one of `budgets`, one-sided Welch
    p < `alpha`, and their worst training seed is at or above the draws' median (no bad draw)."""

    min_draws: int = 10

    def text(self) -> str:
        return (
            f"{self.dataset}: chosen images ≥ +{self.gain:.0%} relative {self.metric} over the mean of "
            f"≥ {self.min_draws} random draws at {' or '.join(map(str, self.budgets))} annotated images, "
            f"one-sided Welch p < {self.alpha:g}, worst training seed at or above the draws' median"
        )


def selection_lines(study: StudyConfig, rows: list[JobRow]) -> list[dict[str, Any]]:
    """Per selection row and budget: the chosen images' scores over training seeds against the random
    draws (sslseg.study.selection_analysis, as the report shows them)."""
    from sslseg.study.selection_analysis import selection_against_draws

    out = []
    for c in selection_against_draws(study, rows):
        mean, lo, hi = c.draws_ci
        out.append(
            {
                "benchmark": "label_efficiency",
                "dataset": c.dataset,
                "arm": c.row,
                "selection": c.selection,
                "labelled_images": c.budget,
                "metric": c.metric,
                "chosen_per_seed": _round(c.scores),
                "chosen_mean": _round(c.mean),
                "draws": _round(c.draws),
                "n_draws": len(c.draws),
                "draws_mean_ci": _round([mean, lo, hi]),
                "draws_median": _round(float(np.median(c.draws))),
                "relative_gain_over_draws": _round(c.mean / mean - 1) if mean > 0 else None,
                "welch_p": _round(c.welch_p),
                "mann_whitney_p": _round(c.mann_whitney_p),
                "share_of_draws_beaten": _round(c.share_beaten),
                "worst_seed_at_draws_median": c.worst_at_median,
            }
        )
    return out


def _finished_cells(rows: list[JobRow]) -> list[JobRow]:
    """The finished fine-tuning cells of the encoder state this benchmark reads."""
    return [r for r in rows if r.kind == "finetune" and r.status == "done" and r.state == STATE]


def against_lines(
    study: StudyConfig, rows: list[JobRow], metric: str, other: list[JobRow], other_folder: Path
) -> list[dict[str, Any]]:
    """Per arm and budget, the same cells (same seed, so the same draw of images) in another study folder —
    another schedule, precision or code — paired seed by seed: this run's score minus the other's, with its
    CI and one-sided p that this run scores higher."""
    from sslseg.study.stats import paired_diff_ci, paired_t_greater, wilcoxon_greater

    ds = study.datasets[0]
    theirs = {r.key: r for r in other if r.status == "done" and r.metrics and metric in r.metrics}
    pairs: dict[tuple[str, int], list[tuple[int, float, float]]] = {}
    for r in _finished_cells(rows):
        o = theirs.get(r.key)
        if o is None or not r.metrics:
            continue
        budget = cell_budget(study, r)
        pairs.setdefault((r.pretraining, int(budget or 0)), []).append(
            (r.seed, float(r.metrics[metric]), float(o.metrics[metric]))  # type: ignore[index]
        )
    out = []
    for (arm, budget), cells in sorted(pairs.items()):
        cells.sort()
        mine = np.array([c[1] for c in cells])
        base = np.array([c[2] for c in cells])
        lo, hi = paired_diff_ci(mine, base) if len(cells) > 1 else (np.nan, np.nan)
        out.append(
            {
                "benchmark": "label_efficiency",
                "dataset": ds.name,
                "arm": arm,
                "labelled_images": budget,
                "metric": metric,
                "against": str(other_folder),
                "seeds": [c[0] for c in cells],
                "this_run": _round(mine.tolist()),
                "other_run": _round(base.tolist()),
                "difference": _round(float((mine - base).mean())),
                "difference_ci": _round([lo, hi]),
                "relative": _round(float(mine.mean() / base.mean() - 1)) if base.mean() > 0 else None,
                "paired_t_p_greater": _round(paired_t_greater(mine, base)) if len(cells) > 1 else None,
                "wilcoxon_p_greater": _round(wilcoxon_greater(mine, base)) if len(cells) > 1 else None,
            }
        )
    return out


def test_groups(study: StudyConfig) -> dict[str, str]:
    """The study's test images as gray or colour (their effective channels), where its test set mixes the
    two (DSB2018: 53 gray fluorescence, 12 stained colour); otherwise none."""
    from sslseg.data.layouts import find_samples

    ds = study.datasets[0]
    if ds.test is None:
        return {}
    group = colour_or_gray(find_samples(ds.test, layout=ds.test_layout))
    return group if len(set(group.values())) > 1 else {}


def modality_lines(
    study: StudyConfig, rows: list[JobRow], metric: str, group: dict[str, str]
) -> list[dict[str, Any]]:
    """Per arm and budget, the mean test score over the gray and over the colour test images apart, per seed
    (from each cell's test_per_image.csv): where a mixed test set's variance comes from."""
    import csv

    cells: dict[tuple[str, int], dict[int, dict[str, float]]] = {}
    for r in _finished_cells(rows):
        path = study_dir(study) / "cells" / r.key / "test_per_image.csv"
        if not path.is_file():
            continue
        with path.open(newline="") as f:
            scores = [(x["id"], {metric: float(x[metric])}) for x in csv.DictReader(f)]
        by = {g: v[metric] for g, v in means_by_kind(scores, group, [metric]).items()}
        cells.setdefault((r.pretraining, int(cell_budget(study, r) or 0)), {})[int(r.seed or 0)] = by
    out = []
    for (arm, budget), seeds in sorted(cells.items()):
        line: dict[str, Any] = {
            "benchmark": "label_efficiency",
            "dataset": study.datasets[0].name,
            "arm": arm,
            "labelled_images": budget,
            "metric": metric,
            "test_images": {g: sum(v == g for v in group.values()) for g in sorted(set(group.values()))},
        }
        for g in sorted(set(group.values())):
            per = {str(k): _round(v[g]) for k, v in sorted(seeds.items())}
            line[f"{g}_per_seed"] = per
            line[f"{g}_mean"] = _round(float(np.mean([v[g] for v in seeds.values()])))
        out.append(line)
    return out


def selection_bar_result(bar: SelectionBar, lines: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether a selection line meets `bar`, naming the best candidate and why not when none does."""
    out: dict[str, Any] = {"benchmark": "label_efficiency", "selection_bar": bar.text()}
    measured = [x for x in lines if bar.covers(x) and x.get("relative_gain_over_draws") is not None]
    if not measured:
        return {**out, "met": False, "reason": "not measured yet: no chosen images beside random draws here"}

    def failures(x: dict[str, Any]) -> list[str]:
        why = []
        if x["n_draws"] < bar.min_draws:
            why.append(f"{x['n_draws']} random draws (≥ {bar.min_draws} needed)")
        if x["relative_gain_over_draws"] < bar.gain:
            why.append(f"gain {x['relative_gain_over_draws']:+.1%} (≥ +{bar.gain:.0%} needed)")
        if x["welch_p"] is None:  # one training seed of the chosen images: no spread to test
            why.append(f"no Welch p over {len(x['chosen_per_seed'])} training seed")
        elif not x["welch_p"] < bar.alpha:
            why.append(f"Welch p {x['welch_p']:.3g} (< {bar.alpha:g} needed)")
        if not x["worst_seed_at_draws_median"]:
            why.append("a training seed below the draws' median")
        return why

    passing = [x for x in measured if not failures(x)]
    best = max(passing or measured, key=lambda x: x["relative_gain_over_draws"])
    keys = ("arm", "selection", "labelled_images", "relative_gain_over_draws", "n_draws", "welch_p")
    out.update(met=bool(passing), best={k: best.get(k) for k in keys})
    if not passing:
        out["reason"] = "; ".join(failures(best))
    return out


def bar_result(bar: Bar, lines: list[dict[str, Any]]) -> dict[str, Any]:
    """Whether the bar is met by the per-budget lines of its dataset, with the arm and budget that meets it
    (or the best candidate), and why not when it is not."""
    candidates = [x for x in lines if bar.covers(x) and x.get("arm") not in (None, BASELINE)]
    out: dict[str, Any] = {"benchmark": "label_efficiency", "bar": bar.text()}
    measured = [x for x in candidates if x.get("relative_gain") is not None]
    if not measured:
        return {**out, "met": False, "reason": "not measured yet: no arm has paired seeds at these budgets"}

    def meets(x: dict[str, Any]) -> bool:
        p = x.get("paired_t_p_holm")
        return (
            x["n_pairs"] >= bar.min_seeds
            and x["relative_gain"] >= bar.gain
            and p is not None
            and p < bar.alpha
        )

    passing = [x for x in measured if meets(x)]
    best = max(passing or measured, key=lambda x: x["relative_gain"])
    keys = (
        "arm",
        "labelled_images",
        "relative_gain",
        "difference_ci",
        "n_pairs",
        "paired_t_p",
        "paired_t_p_holm",
    )
    out.update(met=bool(passing), best={k: best.get(k) for k in keys})
    if not passing:
        fewest = min(x["n_pairs"] for x in measured)
        out["reason"] = (
            f"only {fewest} paired seeds at some budget (≥ {bar.min_seeds} needed)"
            if fewest < bar.min_seeds and best["relative_gain"] >= bar.gain
            else "no arm reaches the gain with a significant paired test"
        )
    return out


def time_lines(study: StudyConfig, rows: list[JobRow]) -> list[dict[str, Any]]:
    """Per arm: its pretraining's wall time and its fine-tuning cells' (mean, max, per budget), each against
    the issue's limits."""
    ds = study.datasets[0].name
    jobs = [j for j in expand(study) if j.kind == "finetune"]
    by_key = {r.key: r for r in rows if r.status == "done"}
    out = []
    for arm in [p.name for p in study.pretrainings]:
        mine = [j for j in jobs if j.pretraining == arm]
        pre = next((j.depends_on for j in mine if j.depends_on), None)
        pre_s = by_key[pre].total_seconds if pre in by_key else None
        cells = [(j, by_key[j.key].total_seconds) for j in mine if j.key in by_key]
        secs = [s for _, s in cells]
        per_budget = {
            str(int(b)): _round(float(np.mean([s for j, s in cells if j.labelled_images == b])), 1)
            for b in study.budgets
            if any(j.labelled_images == b for j, _ in cells)
        }
        out.append(
            {
                "benchmark": "label_efficiency",
                "dataset": ds,
                "arm": arm,
                "pretraining": pre,
                "pretrain_s": _round(pre_s, 1),
                "pretrain_within_limit": None if pre is None or pre_s is None else pre_s <= PRETRAIN_LIMIT_S,
                "cells_done": len(cells),
                "cells": len(mine),
                "finetune_s_mean": _round(float(np.mean(secs)), 1) if secs else None,
                "finetune_s_max": _round(float(np.max(secs)), 1) if secs else None,
                "finetune_s_per_budget": per_budget,
                "finetune_within_limit": (max(secs) <= FINETUNE_LIMIT_S) if secs else None,
                "limits_s": {"pretrain": PRETRAIN_LIMIT_S, "finetune": FINETUNE_LIMIT_S},
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dataset", default="dsb2018", choices=[*PRESETS, "all"])
    ap.add_argument(
        "--budgets", help="labelled-image budgets to run, e.g. 8,16 (default: all of the study's)"
    )
    ap.add_argument("--arms", help="arms (study pretraining rows) to run, e.g. random,semi (default: all)")
    ap.add_argument("--seeds", help="seeds to run, e.g. 0,1,2 (default: all of the study's)")
    ap.add_argument("--workers", type=int, default=1, help="parallel workers sharing the cores")
    ap.add_argument("--out", type=Path, help="study folder (default: the preset's output)")
    ap.add_argument("--set", dest="set_", action="append", default=[], help="study override, key=value")
    ap.add_argument("--dry-run", action="store_true", help="the chosen cells' estimated minutes; no training")
    ap.add_argument(
        "--summary-only", action="store_true", help="the figures of the stored cells; no training"
    )
    ap.add_argument(
        "--against",
        type=Path,
        help="another study folder: pair its cells with this one's, seed by seed (e.g. another schedule)",
    )
    ap.add_argument("--smoke", action="store_true", help="the presets' arms on tiny synthetic data (seconds)")
    args = ap.parse_args(argv)

    overrides = parse_overrides(args.set_)
    if args.smoke:
        out = args.out or Path("runs/label-efficiency-smoke")
        studies = [
            StudyConfig.model_validate(deep_merge(smoke_study(out).model_dump(mode="json"), overrides))
        ]
        bar = Bar(dataset="synthetic", budgets=(4, 8), min_seeds=3)
        selection_bar = SelectionBar(dataset="synthetic", budgets=(4, 8), min_draws=3)
    else:
        names = list(PRESETS) if args.dataset == "all" else [args.dataset]
        if args.out is not None and len(names) > 1:
            sys.exit("--out names one study folder: give it with a single --dataset")
        if args.out is not None:
            overrides = {**overrides, "output": str(args.out)}
        studies = [load_study(PRESETS[n], overrides) for n in names]
        bar, selection_bar = Bar(), SelectionBar()

    for study in studies:
        from sslseg.segmentation.tasks import task_named

        ds = study.datasets[0]
        metric = task_named(ds.task).primary_metric
        if study.budget_key != "labelled_images":
            sys.exit(f"{study.name}: this benchmark needs a labelled_images budget axis")
        arms = _parse_list(args.arms, str, "arms", [p.name for p in study.pretrainings])
        budgets = _parse_list(args.budgets, int, "budgets", [int(b) for b in study.budgets])
        seeds = _parse_list(args.seeds, int, "seeds", list(study.seeds))
        cells = selected_cells(study, arms, budgets, seeds)
        if args.dry_run:
            for line in estimate_lines(study, cells):
                emit(**line)
            continue
        t0 = time.perf_counter()
        if not args.summary_only:
            summary = run_study(study, workers=args.workers, only=[j.key for j in cells])
            if summary.counts["failed"]:
                print(f"{study.name}: {summary.counts['failed']} job(s) failed", file=sys.stderr, flush=True)
        rows = [JobRow.from_row(r) for r in _stored_rows(study)]  # typed once, as the analysis reads them
        done = [r for r in rows if r.kind == "finetune" and r.status == "done"]
        emit(
            benchmark="label_efficiency",
            dataset=ds.name,
            study_dir=str(study_dir(study)),
            cells_done=len(done),
            cells=sum(j.kind == "finetune" for j in expand(study)),
            failed=[r.key for r in rows if r.status == "failed"],
            this_run_s=round(time.perf_counter() - t0, 1),
            validation=ds.validation,
            val_fraction=ds.val_fraction,
            hardware=hardware(),
        )
        lines = budget_lines(study, rows, metric)
        for line in lines:
            emit(**line)
        for line in time_lines(study, rows):
            emit(**line)
        if args.against is not None:
            if existing_backend(args.against) is None:
                sys.exit(f"--against {args.against}: no study results there (results.sqlite or store/)")
            other = [JobRow.from_row(r) for r in read_rows(args.against)]
            for line in against_lines(study, rows, metric, other, args.against):
                emit(**line)
        group = test_groups(study)
        for line in modality_lines(study, rows, metric, group) if group else []:
            emit(**line)
        chosen = selection_lines(study, rows)
        for line in chosen:
            emit(**line)
        if ds.name == bar.dataset:
            emit(**bar_result(bar, lines))
        if chosen and ds.name == selection_bar.dataset:
            emit(**selection_bar_result(selection_bar, chosen))
    return 0


if __name__ == "__main__":
    sys.exit(main())
