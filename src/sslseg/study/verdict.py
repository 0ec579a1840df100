"""The verdict in words: which pretraining to use, how many labels it saves and how sure we are, read off the
groups `analyze` computes, with the wording helpers (p-values, image counts, budgets) the report shares.

Nothing here computes a number: every figure it states was computed and tested in `sslseg.study.analyze`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from sslseg.study import stats
from sslseg.study.spec import BASELINE, StudyConfig


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
    budget reach (see `analyze._add_tests`)."""
    entries = group["pretrainings"]
    # rows that choose their images train on other images than random init's seed by seed: not a paired
    # comparison of initialisations; the selection section sets them against the random draws instead
    choosing = {p.name for p in study.pretrainings if p.selection is not None}
    candidates = [
        (n, e)
        for n, e in entries.items()
        if n != BASELINE and n not in choosing and np.isfinite(e["integral_mean"])
    ]
    base = entries.get(BASELINE)
    if not candidates or base is None or not np.isfinite(base["integral_mean"]):
        # the study's rows, not those with results: a pretraining without a finished cell is still compared
        only_choosing = base is not None and all(p.name in choosing | {BASELINE} for p in study.pretrainings)
        return {
            "text": f"{dataset}: this study compares ways of choosing the images to annotate, not pretrainings: "
            "see the section on chosen images against random draws."
            if only_choosing
            else f"{dataset}: not enough finished cells to compare pretrainings yet.",
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
