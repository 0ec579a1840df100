"""Turn the study's stored results into answers: per dataset, encoder state and metric, the score curves over
the labelled budgets (label fractions or labelled image counts), the normalised label-efficiency integral
with one-sided tests against random init (paired by seed, Holm-corrected over pretrainings), relative gains,
the labels each pretraining saves, and the compute cost.

Labels are counted as annotated images: every image a cell used with its mask, training and validation
(`n_labelled_total` of its stored info), so "labels saved" never leaves out the validation images.

Everything here is computed from the rows of the results store; nothing is re-run. The verdict's words are
in `verdict.py`; the typed schema the report reads the result through is in `analysis_schema.py`.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from sslseg.study import stats
from sslseg.study.spec import BASELINE, StudyConfig
from sslseg.study.store import JobRow
from sslseg.study.verdict import accounting_text, verdict

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
    _add_tests(
        out, study.analysis.alpha, conf, {p.name for p in study.pretrainings if p.selection is not None}
    )
    return out


def baseline_rises(base_mean: np.ndarray) -> bool:
    """Whether random init's mean curve rises from every budget to the next: only then does "random init
    needs n images for this score" read as more labels buying more, and a share of labels saved mean anything."""
    m = np.asarray(base_mean, dtype=float)
    return bool(len(m) >= 2 and np.isfinite(m).all() and np.all(np.diff(m) > 0))


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


def _holm_over(tests: list[dict[str, Any]], key: str, families: list[list[int]]) -> None:
    """Add `<key>_holm` to each test: Holm-corrected within its family of pretrainings (`families`: the
    tests' indices, each family apart)."""
    for family in families:
        adjusted = stats.holm([tests[i][key] for i in family]) if family else []
        for i, p in zip(family, adjusted, strict=True):
            tests[i][f"{key}_holm"] = float(p)


def _add_tests(group: dict[str, Any], alpha: float, confidence: float, choosing: set[str]) -> None:
    """Each pretraining against random init, Holm-corrected across the pretrainings compared (each test
    separately; the rows that choose their images (`choosing`) form a family of their own, so that adding
    one does not weaken the tests of the rows that train on random init's draws):

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
    families = [[i for i, n in enumerate(names) if (n in choosing) is chosen] for chosen in (False, True)]

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
        _holm_over(integral, key, families)

    per_budget = [
        [paired_comparison(entries[n]["scores_per_seed"][:, j], b_scores[:, j], confidence) for n in names]
        for j in range(len(budgets))
    ]
    for tests in per_budget:
        for key in ("paired_t_p", "wilcoxon_p"):
            _holm_over(tests, key, families)

    # pretraining at the smallest budget against random init at each budget (k = 0 is the same budget)
    against = [
        [paired_comparison(entries[n]["scores_per_seed"][:, 0], b_scores[:, k], confidence) for n in names]
        for k in range(len(budgets))
    ]
    for tests in against:
        _holm_over(tests, "paired_t_p", families)

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
