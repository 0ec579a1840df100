"""Turn the study's stored results into answers: per dataset, encoder state and metric, the score curves over
label fractions, the normalised label-efficiency integral with one-sided tests against random init (Holm-
corrected over pretrainings), relative gains, the labels each pretraining saves, and the compute cost.

Everything here is computed from the rows of the results store; nothing is re-run.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sslseg.study import stats
from sslseg.study.spec import BASELINE, StudyConfig

INSTANCE_METRICS = ("aji", "aji_plus", "pq", "dsb_score", "f1@0.5")
SEMANTIC_METRICS = ("dice", "iou")
# resampling two seeds gives three possible means: an interval from that would look far surer than it is
MIN_BOOTSTRAP = 3


def primary_metric(task: str) -> str:
    return "aji" if task == "instance" else "dice"


def _clean(x: Any) -> Any:
    """NaN/inf → None, numpy → Python, so the analysis is plain JSON."""
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, list | tuple | np.ndarray):
        return [_clean(v) for v in x]
    if isinstance(x, np.generic):
        x = x.item()
    if isinstance(x, float) and not math.isfinite(x):
        return None
    return x


def score_table(
    rows: list[dict[str, Any]],
    dataset: str,
    state: str,
    metric: str,
    fractions: list[float],
    seeds: list[int],
) -> dict[str, np.ndarray]:
    """pretraining → seeds × fractions matrix of test scores (NaN where a cell is missing or failed)."""
    col = {f: i for i, f in enumerate(fractions)}
    srow = {s: i for i, s in enumerate(seeds)}
    out: dict[str, np.ndarray] = {}
    for r in rows:
        if r["kind"] != "finetune" or r["dataset"] != dataset or r["state"] != state or r["status"] != "done":
            continue
        if r["fraction"] not in col or r["seed"] not in srow:
            continue
        table = out.setdefault(r["pretraining"], np.full((len(seeds), len(fractions)), np.nan))
        table[srow[r["seed"]], col[r["fraction"]]] = (r["metrics"] or {}).get(metric, np.nan)
    return out


def _finetune_seconds(rows: list[dict[str, Any]], dataset: str, state: str, pretraining: str) -> list[float]:
    return [
        r["seconds"]["total"]
        for r in rows
        if r["kind"] == "finetune"
        and r["status"] == "done"
        and (r["dataset"], r["state"], r["pretraining"]) == (dataset, state, pretraining)
    ]


def _pretrain_seconds(rows: list[dict[str, Any]], dataset: str, pretraining: str) -> float:
    for r in rows:
        if (
            r["kind"] == "pretrain"
            and r["status"] == "done"
            and (r["dataset"], r["pretraining"])
            == (
                dataset,
                pretraining,
            )
        ):
            return float(r["seconds"]["total"])
    return 0.0  # random, ImageNet or a given weights file: no pretraining cost in this study


def reference_score(
    study: StudyConfig, rows: list[dict[str, Any]], dataset: str, metric: str
) -> tuple[float, str]:
    """The full-label benchmark the integral is divided by: given in the study file, else random init's
    mean at the largest label fraction (fine-tuned if studied). Returns the score and where it came from."""
    ds = next(d for d in study.datasets if d.name == dataset)
    if metric in ds.reference_scores:
        return ds.reference_scores[metric], "given in the study file"
    fractions = sorted(study.label_fractions)
    state = "finetuned" if "finetuned" in study.encoder_states else study.encoder_states[0]
    table = score_table(rows, dataset, state, metric, fractions, study.seeds).get(BASELINE)
    value = (
        float(np.nanmean(table[:, -1])) if table is not None and np.isfinite(table[:, -1]).any() else np.nan
    )
    return value, f"random init, {state}, {fractions[-1]:.0%} labels"


def analyze_group(
    study: StudyConfig, rows: list[dict[str, Any]], dataset: str, state: str, metric: str, reference: float
) -> dict[str, Any]:
    """Curves, integrals, tests, gains, labels saved and cost for one (dataset, state, metric)."""
    fractions = sorted(study.label_fractions)
    tables = score_table(rows, dataset, state, metric, fractions, study.seeds)
    conf = study.analysis.confidence
    base = tables.get(BASELINE)
    base_mean = np.nanmean(base, axis=0) if base is not None else np.full(len(fractions), np.nan)
    out: dict[str, Any] = {"fractions": fractions, "reference": reference, "pretrainings": {}}
    for name in [p.name for p in study.pretrainings if p.name in tables]:
        t = tables[name]
        curve = [stats.mean_ci(t[:, j], conf) for j in range(len(fractions))]
        complete = [i for i in range(len(study.seeds)) if np.isfinite(t[i]).all()]
        integrals = (
            [stats.normalized_integral(fractions, t[i], reference) for i in complete]
            if np.isfinite(reference) and reference > 0
            else []
        )
        mean = np.array([c[0] for c in curve])
        entry: dict[str, Any] = {
            "mean": mean,
            "ci_low": [c[1] for c in curve],
            "ci_high": [c[2] for c in curve],
            "n_seeds": [int(np.isfinite(t[:, j]).sum()) for j in range(len(fractions))],
            "integral_per_seed": integrals,
            "integral_mean": float(np.mean(integrals)) if integrals else np.nan,
            "integral_ci": stats.bootstrap_ci(integrals, n_resamples=2000, confidence=conf)
            if len(integrals) >= MIN_BOOTSTRAP
            else (np.nan, np.nan),
            "relative_gain": stats.relative_gain(mean, base_mean),
            "labels_saved": stats.labels_saved(fractions, base_mean, mean)
            if np.isfinite(base_mean).all()
            else np.full(len(fractions), np.nan),
        }
        ft = _finetune_seconds(rows, dataset, state, name)
        base_ft = _finetune_seconds(rows, dataset, state, BASELINE)
        pre = _pretrain_seconds(rows, dataset, name)
        entry["cost"] = {
            "pretrain_seconds": pre,
            "finetune_seconds_mean": float(np.mean(ft)) if ft else np.nan,
            "factor": stats.cost_factor(pre, ft, base_ft) if ft and base_ft else np.nan,
        }
        out["pretrainings"][name] = entry
    _add_tests(out, study.analysis.alpha, conf)
    return out


def _add_tests(group: dict[str, Any], alpha: float, confidence: float) -> None:
    """One-sided Welch and permutation tests of each pretraining's integrals against random init's,
    Holm-corrected over the pretrainings compared (each test family separately)."""
    entries = group["pretrainings"]
    base = entries.get(BASELINE, {}).get("integral_per_seed", [])
    names = [n for n in entries if n != BASELINE]
    welch = [stats.welch_greater(entries[n]["integral_per_seed"], base) for n in names]
    perm = [stats.permutation_greater(entries[n]["integral_per_seed"], base) for n in names]
    welch_holm = stats.holm(welch) if names else []
    perm_holm = stats.holm(perm) if names else []
    for i, n in enumerate(names):
        diff = (
            stats.bootstrap_diff_ci(entries[n]["integral_per_seed"], base, confidence=confidence)
            if min(len(base), len(entries[n]["integral_per_seed"])) >= MIN_BOOTSTRAP
            else (np.nan, np.nan)
        )
        entries[n]["test"] = {
            "welch_p": welch[i],
            "welch_p_holm": welch_holm[i],
            "permutation_p": perm[i],
            "permutation_p_holm": perm_holm[i],
            "difference_ci": diff,
            "significant": bool(np.isfinite(welch_holm[i]) and welch_holm[i] < alpha),
        }


def verdict(
    study: StudyConfig, dataset: str, group: dict[str, Any], metric: str, state: str
) -> dict[str, Any]:
    """The answer first: which pretraining to use on this data, how many labels it saves, how sure we are."""
    entries = group["pretrainings"]
    candidates = [(n, e) for n, e in entries.items() if n != BASELINE and np.isfinite(e["integral_mean"])]
    base = entries.get(BASELINE)
    if not candidates or base is None or not np.isfinite(base["integral_mean"]):
        return {"text": f"{dataset}: not enough finished cells to compare pretrainings yet.", "best": None}
    best_name, best = max(candidates, key=lambda ne: ne[1]["integral_mean"])
    gain = best["integral_mean"] / base["integral_mean"] - 1
    test = best["test"]
    fractions = group["fractions"]
    saved_text = ""
    f, s = fractions[0], float(best["labels_saved"][0])  # the fewest labels: where pretraining matters most
    top = fractions[-1]
    if not np.isfinite(s) and np.isfinite(best["mean"][0]) and top > f:  # above all random init reached
        saved_text = (
            f" With {f:.0%} of the labels it scores above random init at {top:.0%}: more than "
            f"{1 - f / top:.0%} of the annotation saved."
        )
    elif np.isfinite(s) and s > 0:
        saved_text = (
            f" With {f:.0%} of the labels it scores what random init needs {f / (1 - s):.0%} for: "
            f"{s:.0%} of the annotation saved."
        )
    elif np.isfinite(s):
        saved_text = f" At {f:.0%} labels it saves no annotation over random init."
    if saved_text and not test["significant"]:
        saved_text = saved_text.rstrip(".") + " (on the mean scores, within the seeds' noise)."
    n = len(best["integral_per_seed"])
    if test["significant"]:
        head = (
            f"{dataset}: use {best_name}. Its label-efficiency integral of {metric} ({state} encoder) is "
            f"{gain:+.1%} over random init, significant after Holm correction (Welch p = {test['welch_p_holm']:.3g}, "
            f"permutation p = {test['permutation_p_holm']:.3g}, {n} seeds)."
        )
    else:
        head = (
            f"{dataset}: no pretraining beats random init significantly on {metric} ({state} encoder). "
            f"The best, {best_name}, is {gain:+.1%} on the label-efficiency integral, but Holm-corrected "
            f"Welch p = {test['welch_p_holm']:.3g} with {n} seeds: more seeds or a larger pretraining budget "
            "would be needed to be sure."
        )
    cost = best["cost"]["factor"]
    cost_text = f" Compute cost: {cost:.1f}× random init's." if np.isfinite(cost) else ""
    return {"text": head + saved_text + cost_text, "best": best_name, "significant": test["significant"]}


def analyze(study: StudyConfig, rows: list[dict[str, Any]]) -> dict[str, Any]:
    """The whole score analysis of a study as a JSON-ready dict."""
    result: dict[str, Any] = {"study": study.name, "datasets": {}}
    for ds in study.datasets:
        metrics = INSTANCE_METRICS if ds.task == "instance" else SEMANTIC_METRICS
        primary = primary_metric(ds.task)
        groups: dict[str, dict[str, Any]] = {}
        references: dict[str, Any] = {}
        for metric in metrics:
            ref, source = reference_score(study, rows, ds.name, metric)
            references[metric] = {"score": ref, "source": source}
            for state in study.encoder_states:
                groups.setdefault(state, {})[metric] = analyze_group(study, rows, ds.name, state, metric, ref)
        main_state = "finetuned" if "finetuned" in study.encoder_states else study.encoder_states[0]
        result["datasets"][ds.name] = {
            "task": ds.task,
            "primary_metric": primary,
            "main_state": main_state,
            "references": references,
            "groups": groups,
            "verdict": verdict(study, ds.name, groups[main_state][primary], primary, main_state),
            "failed": [r["key"] for r in rows if r["dataset"] == ds.name and r["status"] == "failed"],
        }
    return _clean(result)
