"""Turn the study's stored results into answers: per dataset, encoder state and metric, the score curves over
the labelled budgets (label fractions or labelled image counts), the normalised label-efficiency integral
with one-sided tests against random init (paired by seed, Holm-corrected over pretrainings), relative gains,
the labels each pretraining saves, and the compute cost.

Labels are counted as annotated images: every image a cell used with its mask, training and validation
(`n_labelled_total` of its stored info), so "labels saved" never leaves out the validation images.

Everything here is computed from the rows of the results store; nothing is re-run.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np

from sslseg.study import stats
from sslseg.study.spec import BASELINE, StudyConfig
from sslseg.study.store import JobRow

# resampling two seeds gives three possible means: an interval from that would look far surer than it is
MIN_BOOTSTRAP = 3


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


def cell_budget(study: StudyConfig, row: JobRow) -> float | None:
    """A fine-tuning row's place on the study's budget axis: its label fraction, or its labelled image
    count (read from its config: the store's fraction column is empty for those cells)."""
    if study.budget_key == "label_fraction":
        return row.fraction
    value = ((row.config or {}).get("data") or {}).get("labelled_images")
    return None if value is None else int(value)


def budget_text(key: str, value: float) -> str:
    """A budget as words: "10% labels" or "8 labelled images"."""
    return f"{value:.0%} labels" if key == "label_fraction" else f"{int(value)} labelled images"


def _done_cells(rows: list[JobRow], dataset: str) -> list[JobRow]:
    return [r for r in rows if r.kind == "finetune" and r.dataset == dataset and r.status == "done"]


def annotated_counts(study: StudyConfig, rows: list[JobRow], dataset: str) -> dict[str, Any]:
    """The study's budget axis on one dataset and, per budget, how many images were annotated: the mean over
    seeds of the cells' `n_labelled_total` (training + validation images). None for a budget none of whose
    finished cells recorded it; `consistent` is False when cells of one budget and seed disagree (they
    should not: every initialisation of a seed uses the same labelled images)."""
    budgets = study.budgets
    seen: dict[tuple[float, int], set[int]] = {}
    for r in _done_cells(rows, dataset):
        b, n = cell_budget(study, r), (r.info or {}).get("n_labelled_total")
        if b in budgets and n is not None:
            seen.setdefault((b, r.seed), set()).add(int(n))
    annotated: list[float | None] = []
    for b in budgets:
        per_seed = [float(np.mean(sorted(seen[b, s]))) for s in study.seeds if (b, s) in seen]
        annotated.append(float(np.mean(per_seed)) if per_seed else None)
    ds = next(d for d in study.datasets if d.name == dataset)
    known = all(a is not None for a in annotated)
    return {
        "budget_key": study.budget_key,
        "budgets": budgets,
        "annotated": annotated,
        # labels saved are measured in annotated images where every budget has its count (and they rise)
        "counted": known and bool(np.all(np.diff(np.array(annotated, dtype=float)) > 0)),
        "consistent": all(len(v) == 1 for v in seen.values()),
        "validation": ds.validation,
    }


def accounting_text(axis: dict[str, Any]) -> str:
    """One sentence on what the "annotated images" and "labels saved" figures count."""
    if not axis["counted"]:
        return (
            "These results do not record how many images each run annotated (n_labelled_total), so label "
            "figures here are on the budget axis and leave the validation images out."
        )
    if axis["validation"] == "fixed":
        text = (
            "Annotated images count every mask a run used: its training images plus the fixed validation "
            "split (data.validation: fixed) that chose its epoch and thresholds, and labels used and saved "
            "are counted with those validation images."
        )
    else:
        text = (
            "Annotated images count every mask a run used, training and validation: validation images came "
            "out of each budget (data.validation: budget), so labels used and saved include them."
        )
    if not axis["consistent"]:
        text += " (Cells of one budget and seed recorded different counts: the axis shows their mean.)"
    return text


def score_table(
    study: StudyConfig, rows: list[JobRow], dataset: str, state: str, metric: str
) -> dict[str, np.ndarray]:
    """pretraining → seeds × budgets matrix of test scores (NaN where a cell is missing or failed)."""
    budgets, seeds = study.budgets, study.seeds
    col = {b: i for i, b in enumerate(budgets)}
    srow = {s: i for i, s in enumerate(seeds)}
    out: dict[str, np.ndarray] = {}
    for r in _done_cells(rows, dataset):
        b = cell_budget(study, r)
        if r.state != state or b not in col or r.seed not in srow:
            continue
        table = out.setdefault(r.pretraining, np.full((len(seeds), len(budgets)), np.nan))
        table[srow[r.seed], col[b]] = (r.metrics or {}).get(metric, np.nan)
    return out


def _finetune_seconds(rows: list[JobRow], dataset: str, state: str, pretraining: str) -> list[float]:
    return [
        r.total_seconds
        for r in rows
        if r.kind == "finetune"
        and r.status == "done"
        and (r.dataset, r.state, r.pretraining) == (dataset, state, pretraining)
    ]


def _pretrain_seconds(rows: list[JobRow], dataset: str, pretraining: str) -> float:
    for r in rows:
        if (
            r.kind == "pretrain"
            and r.status == "done"
            and (r.dataset, r.pretraining) == (dataset, pretraining)
        ):
            return r.total_seconds
    return 0.0  # random, ImageNet or a given weights file: no pretraining cost in this study


def reference_score(study: StudyConfig, rows: list[JobRow], dataset: str, metric: str) -> tuple[float, str]:
    """The full-label benchmark the integral is divided by: given in the study file, else random init's
    mean at the largest budget (fine-tuned if studied). Returns the score and where it came from."""
    ds = next(d for d in study.datasets if d.name == dataset)
    if metric in ds.reference_scores:
        return ds.reference_scores[metric], "given in the study file"
    state = "finetuned" if "finetuned" in study.encoder_states else study.encoder_states[0]
    table = score_table(study, rows, dataset, state, metric).get(BASELINE)
    value = (
        float(np.nanmean(table[:, -1])) if table is not None and np.isfinite(table[:, -1]).any() else np.nan
    )
    return value, f"random init, {state}, {budget_text(study.budget_key, study.budgets[-1])}"


def analyze_group(
    study: StudyConfig,
    rows: list[JobRow],
    dataset: str,
    state: str,
    metric: str,
    reference: float,
    axis: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Curves, integrals, tests, gains, labels saved and cost for one (dataset, state, metric).

    The integral runs over the budget axis (fractions or image counts, normalised by its range); labels
    saved are measured in annotated images (`axis`, from `annotated_counts`) where every budget has its
    count, else on the budget axis."""
    axis = axis or annotated_counts(study, rows, dataset)
    budgets = study.budgets
    # where random init reaches a score, and the share saved: in annotated images when they are known
    labels_x = axis["annotated"] if axis["counted"] else budgets
    tables = score_table(study, rows, dataset, state, metric)
    conf = study.analysis.confidence
    base = tables.get(BASELINE)
    base_mean = np.full(len(budgets), np.nan)
    if base is not None:
        with warnings.catch_warnings():  # a budget random init has no finished seed of yet stays NaN
            warnings.simplefilter("ignore", RuntimeWarning)
            base_mean = np.nanmean(base, axis=0)
    out: dict[str, Any] = {
        "budget_key": axis["budget_key"],
        "budgets": budgets,
        "annotated": axis["annotated"],
        "labels_x": labels_x,
        "labels_in_images": axis["counted"],
        "seeds": list(study.seeds),
        "reference": reference,
        "pretrainings": {},
    }
    rises = baseline_rises(base_mean)
    out["baseline_rises"] = rises
    for name in [p.name for p in study.pretrainings if p.name in tables]:
        t = tables[name]
        curve = [stats.mean_ci(t[:, j], conf) for j in range(len(budgets))]
        # one integral per seed, NaN where a seed misses a budget: kept in seed order for the paired tests
        integrals = np.array(
            [
                stats.normalized_integral(budgets, t[i], reference) if np.isfinite(t[i]).all() else np.nan
                for i in range(len(study.seeds))
            ]
            if np.isfinite(reference) and reference > 0
            else np.full(len(study.seeds), np.nan)
        )
        done = integrals[np.isfinite(integrals)]
        mean = np.array([c[0] for c in curve])
        known = bool(np.isfinite(base_mean).all())
        saved = stats.labels_saved(labels_x, base_mean, mean) if known else np.full(len(budgets), np.nan)
        entry: dict[str, Any] = {
            "mean": mean,
            "ci_low": [c[1] for c in curve],
            "ci_high": [c[2] for c in curve],
            "n_seeds": [int(np.isfinite(t[:, j]).sum()) for j in range(len(budgets))],
            "scores_per_seed": t,  # seeds × budgets, for the paired tests
            "integral_per_seed": integrals,
            "integral_n_seeds": len(done),
            "integral_mean": float(done.mean()) if len(done) else np.nan,
            "integral_ci": stats.bootstrap_ci(done, n_resamples=2000, confidence=conf)
            if len(done) >= MIN_BOOTSTRAP
            else (np.nan, np.nan),
            "relative_gain": stats.relative_gain(mean, base_mean),
            "labels_saved": saved,
            # the labels (on labels_x) random init needs for this score: inf beyond the studied range
            "random_needs": [stats.equivalent_fraction(labels_x, base_mean, float(m)) for m in mean]
            if known
            else np.full(len(budgets), np.nan),
            "labels_saved_reading": [
                saved_reading(rises, float(m), float(b), float(x))
                for m, b, x in zip(mean, base_mean, saved, strict=True)
            ],
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


def baseline_rises(base_mean: np.ndarray) -> bool:
    """Whether random init's mean curve rises from every budget to the next: only then does "random init
    needs n images for this score" read as more labels buying more, and a share of labels saved mean anything."""
    m = np.asarray(base_mean, dtype=float)
    return bool(len(m) >= 2 and np.isfinite(m).all() and np.all(np.diff(m) > 0))


# How to read one point estimate of labels saved (see `saved_reading`).
SAVED_READINGS = ("saved", "beyond_range", "not_better", "baseline_flat", "unknown")


def saved_reading(rises: bool, mean: float, base_mean: float, saved: float) -> str:
    """How a pretraining's labels-saved point estimate at one budget reads: "saved" (a share, with the
    images random init needs), "beyond_range" (random init never reaches that score within the studied
    budgets), "not_better" (not above random init there: no labels saved), "baseline_flat" (random init's
    curve does not rise, so the inverse is noise), "unknown" (a score is missing)."""
    if not (math.isfinite(mean) and math.isfinite(base_mean)):
        return "unknown"
    if not rises:
        return "baseline_flat"
    if mean <= base_mean:
        return "not_better"
    return "saved" if math.isfinite(saved) else "beyond_range"


def paired_comparison(method: np.ndarray, baseline: np.ndarray, confidence: float) -> dict[str, Any]:
    """The paired numbers of one comparison (arrays aligned by seed): mean difference, its bootstrap CI,
    and the one-sided paired t and Wilcoxon p-values before correction."""
    d = stats.paired_differences(method, baseline)
    return {
        "n_pairs": len(d),
        "difference_mean": float(d.mean()) if len(d) else np.nan,
        "difference_ci": stats.paired_diff_ci(method, baseline, confidence=confidence)
        if len(d) >= MIN_BOOTSTRAP
        else (np.nan, np.nan),
        "paired_t_p": stats.paired_t_greater(method, baseline),
        "wilcoxon_p": stats.wilcoxon_greater(method, baseline),
    }


def _holm_over(tests: list[dict[str, Any]], key: str) -> None:
    """Add `<key>_holm` to each test: Holm-corrected across the pretrainings compared."""
    adjusted = stats.holm([t[key] for t in tests]) if tests else []
    for t, p in zip(tests, adjusted, strict=True):
        t[f"{key}_holm"] = float(p)


def _add_tests(group: dict[str, Any], alpha: float, confidence: float) -> None:
    """Each pretraining against random init, Holm-corrected across the pretrainings compared (each test
    family separately):

    - on the label-efficiency integral: paired t and Wilcoxon over seeds (the main test), the bootstrap CI
      of the paired difference, and the unpaired Welch and permutation tests as a check;
    - at every label budget: the same paired tests on the scores;
    - for the labels saved at the smallest budget b₀: the pretraining at b₀ against random init at each
      budget b_k in increasing order, stopping at the first that is not significant (a fixed sequence, so
      no further correction): beating random init trained on b_k shows that random init needs more than
      b_k's annotated images, so more than 1 − n₀/n_k of the annotation is saved (n: annotated images,
      validation included, where known; else the budgets themselves).
    """
    entries = group["pretrainings"]
    budgets, labels_x = group["budgets"], group["labels_x"]
    names = [n for n in entries if n != BASELINE]
    if BASELINE not in entries:
        for n in names:
            entries[n]["test"] = {"significant": False}
        return
    base = entries[BASELINE]
    b_int, b_scores = base["integral_per_seed"], base["scores_per_seed"]

    integral = [paired_comparison(entries[n]["integral_per_seed"], b_int, confidence) for n in names]
    for n, t in zip(names, integral, strict=True):
        a_int = entries[n]["integral_per_seed"]
        t["welch_p"] = stats.welch_greater(a_int, b_int)
        t["permutation_p"] = stats.permutation_greater(a_int[np.isfinite(a_int)], b_int[np.isfinite(b_int)])
        t["welch_difference_ci"] = (
            stats.bootstrap_diff_ci(a_int, b_int, confidence=confidence)
            if min(np.isfinite(a_int).sum(), np.isfinite(b_int).sum()) >= MIN_BOOTSTRAP
            else (np.nan, np.nan)
        )
    for key in ("paired_t_p", "wilcoxon_p", "welch_p", "permutation_p"):
        _holm_over(integral, key)

    per_budget = [
        [paired_comparison(entries[n]["scores_per_seed"][:, j], b_scores[:, j], confidence) for n in names]
        for j in range(len(budgets))
    ]
    for tests in per_budget:
        for key in ("paired_t_p", "wilcoxon_p"):
            _holm_over(tests, key)

    # pretraining at the smallest budget against random init at each budget (k = 0 is the same budget)
    against = [
        [paired_comparison(entries[n]["scores_per_seed"][:, 0], b_scores[:, k], confidence) for n in names]
        for k in range(len(budgets))
    ]
    for tests in against:
        _holm_over(tests, "paired_t_p")

    for i, n in enumerate(names):
        t = integral[i]
        t["significant"] = bool(np.isfinite(t["paired_t_p_holm"]) and t["paired_t_p_holm"] < alpha)
        entries[n]["test"] = t
        budget = []
        for j in range(len(budgets)):
            b = per_budget[j][i]
            b["significant"] = bool(np.isfinite(b["paired_t_p_holm"]) and b["paired_t_p_holm"] < alpha)
            budget.append(b)
        entries[n]["budget_tests"] = budget
        reached = None  # the largest budget of random init this pretraining beats at f₀, in sequence
        for k in range(len(budgets)):
            p = against[k][i]["paired_t_p_holm"]
            if not (np.isfinite(p) and p < alpha):
                break
            reached = k
        entries[n]["labels_saved_supported"] = {
            "beats_random_at": None if reached is None else budgets[reached],
            # random init needs more than this (annotated images, or the budget where those are unknown)
            "random_needs_more_than": None if reached is None else labels_x[reached],
            "p_holm": None if reached is None else against[reached][i]["paired_t_p_holm"],
            "next_p_holm": against[reached + 1 if reached is not None else 0][i]["paired_t_p_holm"]
            if (reached is None or reached + 1 < len(budgets))
            else None,
            # more than this share of the annotation is saved (0: better at the same budget, size unknown)
            "more_than": None if reached is None else 1.0 - labels_x[0] / labels_x[reached],
        }
    for e in entries.values():
        e.pop("scores_per_seed", None)


def format_p(p: float) -> str:
    """A p-value for text: three significant digits, tiny ones as an upper bound ("< 0.0001")."""
    if p is None or not math.isfinite(p):
        return "–"
    return "< 0.0001" if p < 1e-4 else f"{p:.3g}"


def _eq(p: float) -> str:
    text = format_p(p)
    return text if text.startswith("<") else f"= {text}"


def count_text(x: float) -> str:
    """An image count for text: whole numbers plainly, a mean over seeds with one decimal."""
    return f"{x:.0f}" if abs(x - round(x)) < 1e-9 else f"{x:.1f}"


def budget_phrase(group: dict[str, Any], j: int) -> str:
    """Budget j of an analysed group in words, as annotated images where known: "10% of the labels
    (7 annotated images)", "8 annotated images" (training + validation), else "8 labelled images"."""
    b = group["budgets"][j]
    n = group["annotated"][j] if group["labels_in_images"] else None
    if group["budget_key"] == "label_fraction":
        return f"{b:.0%} of the labels" + (f" ({count_text(n)} annotated images)" if n is not None else "")
    return f"{count_text(n)} annotated images" if n is not None else f"{int(b)} labelled images"


PAIRED_MEANING = (
    "Paired: in each seed one set of images is labelled and every initialisation is trained on that same "
    "set, so each pretraining is compared with random init seed by seed, and the luck of which images "
    "were labelled cancels out."
)


def verdict(
    study: StudyConfig, dataset: str, group: dict[str, Any], metric: str, state: str
) -> dict[str, Any]:
    """The answer first: which pretraining to use on this data, how many labels it saves, how sure we are.

    Every claim is the one its own test supports: "use X" only when the paired test on the integral is
    significant after Holm correction, and annotation saved only as far as the paired tests at the smallest
    budget reach (see `_add_tests`)."""
    entries = group["pretrainings"]
    candidates = [(n, e) for n, e in entries.items() if n != BASELINE and np.isfinite(e["integral_mean"])]
    base = entries.get(BASELINE)
    if not candidates or base is None or not np.isfinite(base["integral_mean"]):
        return {
            "text": f"{dataset}: not enough finished cells to compare pretrainings yet.",
            "best": None,
            "significant": False,
            "labels_saved_claim": None,
        }
    best_name, best = max(candidates, key=lambda ne: ne[1]["integral_mean"])
    gain = best["integral_mean"] / base["integral_mean"] - 1
    test = best["test"]
    n = test["n_pairs"]
    lo, hi = test["difference_ci"]
    ci = f", 95% CI {lo:+.3f} to {hi:+.3f}" if np.isfinite(lo) and np.isfinite(hi) else ""
    seeds = f"{n} seed{'s' if n != 1 else ''}"
    numbers = (
        f"paired difference {test['difference_mean']:+.3f}{ci}; paired t-test p {_eq(test['paired_t_p_holm'])}, "
        f"Wilcoxon p {_eq(test['wilcoxon_p_holm'])} after Holm correction; {seeds}"
        if n >= 2
        else f"only {seeds} with every budget finished: a paired test needs at least 2"
    )
    if test["significant"]:
        head = (
            f"{dataset}: use {best_name}. Its label-efficiency integral of {metric} ({state} encoder) is "
            f"{gain:+.1%} over random init, significant in the paired comparison ({numbers})."
        )
    else:
        head = (
            f"{dataset}: no pretraining beats random init significantly on {metric} ({state} encoder). "
            f"The best, {best_name}, is {gain:+.1%} on the label-efficiency integral ({numbers}): more seeds "
            "or a larger pretraining budget would be needed to be sure."
        )
    floor, m = stats.wilcoxon_floor(n), len(candidates)
    if n >= 2 and floor * m >= study.analysis.alpha:
        head += (
            f" (The Wilcoxon test cannot reach p < {study.analysis.alpha:g} here: with {seeds} its smallest p "
            f"is 1/2^{n}, before correction for {m} pretraining{'s' if m > 1 else ''}.)"
        )
    budgets, labels_x = group["budgets"], group["labels_x"]
    at0 = budget_phrase(group, 0)  # the fewest labels: where pretraining matters most
    sup = best["labels_saved_supported"]
    claim = sup["more_than"]
    if claim is not None and claim > 0 and not group.get("baseline_rises", True):
        k = budgets.index(sup["beats_random_at"])
        saved_text = (
            f" With {at0} it beats random init trained on {budget_phrase(group, k)} (paired t-test, Holm p "
            f"{_eq(sup['p_holm'])}), but random init's mean does not rise with annotation over these budgets, "
            "so these results cannot say how much annotation it saves."
        )
    elif claim is not None and claim > 0:
        k = budgets.index(sup["beats_random_at"])
        tested = f"(paired t-test, Holm p {_eq(sup['p_holm'])})"
        if group["labels_in_images"]:
            needs = float(best["random_needs"][0])
            point = (
                f" (point estimate {needs:.0f})"
                if math.isfinite(needs) and needs > labels_x[k]
                else f" (random init does not reach that score within the {count_text(labels_x[-1])} studied)"
                if math.isinf(needs)
                else ""
            )
            saved_text = (
                f" With {at0} it beats random init trained on {budget_phrase(group, k)} {tested}: random init "
                f"needs more than {count_text(labels_x[k])} annotated images to match what {best_name} scores with "
                f"{count_text(labels_x[0])}{point}, so more than {claim:.0%} of the annotation saved."
            )
        else:
            estimate = float(best["labels_saved"][0]) if best["labels_saved"][0] is not None else math.nan
            point = f"; point estimate {estimate:.0%}" if np.isfinite(estimate) and estimate > claim else ""
            saved_text = (
                f" With {at0} it beats random init trained on {budget_phrase(group, k)} {tested}: more than "
                f"{claim:.0%} of the annotation saved{point}."
            )
    elif claim is not None:
        nxt = (
            f", but not random init trained on {budget_phrase(group, 1)} (Holm p {_eq(sup['next_p_holm'])}), "
            "so these seeds cannot tell how much annotation it saves"
            if len(budgets) > 1
            else ""
        )
        saved_text = (
            f" With {at0} it beats random init trained on the same images "
            f"(paired t-test, Holm p {_eq(sup['p_holm'])}){nxt}."
        )
    else:
        b = best["budget_tests"][0]
        p = b["paired_t_p_holm"]
        saved_text = (
            f" At {at0} its paired difference to random init is {b['difference_mean']:+.3f} "
            f"(Holm p {_eq(p)}): these seeds do not show that it needs fewer labels."
            if np.isfinite(b["difference_mean"]) and np.isfinite(p)
            else ""
        )
    cost = best["cost"]["factor"]
    cost_text = f" Compute cost: {cost:.1f}× random init's." if np.isfinite(cost) else ""
    return {
        "text": head + saved_text + cost_text,
        "best": best_name,
        "significant": test["significant"],
        # a share saved needs a rising random-init curve; "better at the same budget" (0) needs none
        "labels_saved_claim": claim if group.get("baseline_rises", True) or not claim else None,
    }


def analyze(study: StudyConfig, rows: list[JobRow]) -> dict[str, Any]:
    """The whole score analysis of a study as a JSON-ready dict."""
    from sslseg.segmentation.tasks import task_named  # torch and the networks: only when analysing

    result: dict[str, Any] = {"study": study.name, "datasets": {}}
    for ds in study.datasets:
        task = task_named(ds.task)
        metrics, primary = task.metrics, task.primary_metric
        groups: dict[str, dict[str, Any]] = {}
        references: dict[str, Any] = {}
        axis = annotated_counts(study, rows, ds.name)
        for metric in metrics:
            ref, source = reference_score(study, rows, ds.name, metric)
            references[metric] = {"score": ref, "source": source}
            for state in study.encoder_states:
                groups.setdefault(state, {})[metric] = analyze_group(
                    study, rows, ds.name, state, metric, ref, axis
                )
        main_state = "finetuned" if "finetuned" in study.encoder_states else study.encoder_states[0]
        result["datasets"][ds.name] = {
            "task": ds.task,
            "primary_metric": primary,
            "main_state": main_state,
            "budget_axis": axis,
            "accounting": accounting_text(axis),
            "references": references,
            "groups": groups,
            "verdict": verdict(study, ds.name, groups[main_state][primary], primary, main_state),
            "failed": [r.key for r in rows if r.dataset == ds.name and r.status == "failed"],
        }
    return _clean(result)


# ----------------------------------------------------------------------------------------- typed reading
# `analyze` writes the analysis as plain JSON (analysis.json); the report reads it through these classes, so a
# misspelt or missing field fails at one place instead of as a KeyError deep in a table.


@dataclass(frozen=True)
class PairedTest:
    """One pretraining against random init (on the integral or at one budget); p-values one-sided."""

    n_pairs: int | None = None
    difference_mean: float | None = None
    difference_ci: list[float | None] | None = None
    paired_t_p: float | None = None
    paired_t_p_holm: float | None = None
    wilcoxon_p: float | None = None
    wilcoxon_p_holm: float | None = None
    welch_p: float | None = None  # the unpaired checks: on the integral only
    welch_p_holm: float | None = None
    permutation_p: float | None = None
    permutation_p_holm: float | None = None
    welch_difference_ci: list[float | None] | None = None
    significant: bool = False


@dataclass(frozen=True)
class Cost:
    """Compute of one pretraining: its pretraining run, its mean fine-tuning run, and the factor over random init."""

    pretrain_seconds: float | None
    finetune_seconds_mean: float | None
    factor: float | None


@dataclass(frozen=True)
class SavedClaim:
    """How far the paired tests at the smallest budget support a claim of labels saved (see `_add_tests`)."""

    beats_random_at: float | None
    random_needs_more_than: float | None
    p_holm: float | None
    next_p_holm: float | None
    more_than: float | None


@dataclass(frozen=True)
class PretrainingResult:
    """One pretraining in one group: its curve over the budgets, integral, gains, tests and cost."""

    mean: list[float | None]
    ci_low: list[float | None]
    ci_high: list[float | None]
    n_seeds: list[int]
    integral_per_seed: list[float | None]
    integral_n_seeds: int
    integral_mean: float | None
    integral_ci: list[float | None]
    relative_gain: list[float | None]
    labels_saved: list[float | None]
    random_needs: list[float | None]
    cost: Cost
    labels_saved_reading: list[str] | None = None  # per budget, one of SAVED_READINGS
    # the comparisons with random init: none for random init itself, and no budget tests without it
    test: PairedTest | None = None
    budget_tests: list[PairedTest] | None = None
    labels_saved_supported: SavedClaim | None = None


@dataclass(frozen=True)
class Group:
    """One (dataset, encoder state, metric): the budget axis and every pretraining's results on it."""

    budget_key: str
    budgets: list[float]
    annotated: list[float | None]
    labels_x: list[float]
    labels_in_images: bool
    seeds: list[int]
    reference: float | None
    pretrainings: dict[str, PretrainingResult]
    baseline_rises: bool = True  # random init's mean rises with every budget (see `baseline_rises`)


@dataclass(frozen=True)
class BudgetAxis:
    """A dataset's budgets and the annotated images of each (see `annotated_counts`)."""

    budget_key: str
    budgets: list[float]
    annotated: list[float | None]
    counted: bool
    consistent: bool
    validation: str


@dataclass(frozen=True)
class Reference:
    """The score an integral is divided by, and where it came from."""

    score: float | None
    source: str


@dataclass(frozen=True)
class Verdict:
    """The answer for one dataset (see `verdict`)."""

    text: str
    best: str | None
    significant: bool
    labels_saved_claim: float | None


@dataclass(frozen=True)
class DatasetAnalysis:
    """Everything analysed on one dataset; `groups` is encoder state → metric → group."""

    task: str
    primary_metric: str
    main_state: str
    budget_axis: BudgetAxis
    accounting: str
    references: dict[str, Reference]
    groups: dict[str, dict[str, Group]]
    verdict: Verdict
    failed: list[str]


@dataclass(frozen=True)
class Analysis:
    """A study's whole analysis, read from the JSON form that `analyze` returns and analysis.json holds."""

    study: str
    datasets: dict[str, DatasetAnalysis]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Analysis:
        """The typed analysis of `analyze`'s JSON form; a field the classes do not know is an error."""
        return _typed(cls, data)


def _typed(kind: Any, value: Any) -> Any:
    """`value` (plain JSON) as `kind`: dataclasses, dict[str, X], list[X] and X | None, built recursively."""
    if value is None:
        return None
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        unknown = set(value) - set(hints)
        if unknown:
            raise ValueError(f"{kind.__name__}: unknown analysis fields {sorted(unknown)}")
        return kind(**{k: _typed(hints[k], v) for k, v in value.items()})
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is dict:
        return {k: _typed(args[1], v) for k, v in value.items()}
    if origin is list:
        return [_typed(args[0], v) for v in value]
    if origin in (typing.Union, types.UnionType):
        return _typed(next(a for a in args if a is not type(None)), value)
    return value
