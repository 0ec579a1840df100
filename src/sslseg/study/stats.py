"""Statistics for label-efficiency studies: compare SSL pretrainings against random initialisation.

Pure numpy/scipy. Seeds that failed may be recorded as NaN: the per-group functions drop NaNs, the paired
functions drop every pair with a NaN on either side; curve functions (fractions, scores) refuse NaN
fractions and let NaN scores propagate.

In a study one seed fixes one labelled subset (and one training seed) for every initialisation, so the
main comparison is paired by seed: the paired t-test and the Wilcoxon signed-rank test on the per-seed
differences, and a bootstrap CI of their mean. The unpaired Welch and permutation tests stay as a check.
"""

from __future__ import annotations

import itertools
import math
import warnings
from collections.abc import Callable, Sequence

import numpy as np
from scipy import stats as _st

ArrayLike = Sequence[float] | np.ndarray


def _vec(x: ArrayLike | float, name: str, *, dropna: bool = False) -> np.ndarray:
    """1-D float array from `x`, with a clear error otherwise; optionally without NaNs."""
    a = np.asarray(x, dtype=float)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    return a[~np.isnan(a)] if dropna else a


def _same_length(a: np.ndarray, b: np.ndarray, na: str, nb: str) -> None:
    if len(a) != len(b):
        raise ValueError(f"{na} and {nb} must have the same length, got {len(a)} and {len(b)}")


def _check_confidence(confidence: float) -> None:
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")


def _curve(fractions: ArrayLike, scores: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate a score-vs-fraction curve and return it sorted by fraction."""
    f, s = _vec(fractions, "fractions"), _vec(scores, "scores")
    _same_length(f, s, "fractions", "scores")
    if len(f) == 0:
        raise ValueError("fractions must not be empty")
    if not np.all(np.isfinite(f)):
        raise ValueError("fractions must be finite")
    order = np.argsort(f, kind="stable")
    f, s = f[order], s[order]
    dup = f[1:][np.diff(f) == 0]
    if len(dup):
        raise ValueError(f"duplicate fraction {dup[0]}: average the seeds per fraction first")
    return f, s


def mean_ci(values: ArrayLike, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean and Student-t confidence interval over seeds (NaNs ignored).

    With fewer than two values there is no spread to estimate, so the bounds are NaN."""
    _check_confidence(confidence)
    v = _vec(values, "values", dropna=True)
    if len(v) == 0:
        return math.nan, math.nan, math.nan
    m = float(v.mean())
    if len(v) < 2:
        return m, math.nan, math.nan
    half = float(_st.t.ppf(0.5 + confidence / 2, len(v) - 1) * v.std(ddof=1) / math.sqrt(len(v)))
    return m, m - half, m + half


def normalized_integral(
    fractions: ArrayLike,
    scores: ArrayLike,
    reference: float,
    lo: float | None = None,
    hi: float | None = None,
) -> float:
    """Area under the piecewise-linear score-vs-fraction curve over [lo, hi], divided by (hi − lo) and by
    the full-label `reference` score: the mean normalised score over that label range (1.0 = full-label)."""
    if not reference > 0:
        raise ValueError(f"reference must be > 0, got {reference}")
    f, s = _curve(fractions, scores)
    lo = float(f[0]) if lo is None else float(lo)
    hi = float(f[-1]) if hi is None else float(hi)
    if lo > hi:
        raise ValueError(f"lo ({lo}) must not exceed hi ({hi})")
    if lo < f[0] or hi > f[-1]:
        raise ValueError(f"[lo, hi] = [{lo}, {hi}] lies outside the studied fractions [{f[0]}, {f[-1]}]")
    if lo == hi:  # degenerate range (e.g. a single fraction): the curve's value there
        return float(np.interp(lo, f, s)) / reference
    x = np.concatenate([[lo], f[(f > lo) & (f < hi)], [hi]])
    y = np.interp(x, f, s)
    area = float(np.sum(np.diff(x) * (y[1:] + y[:-1]) / 2))
    return area / (hi - lo) / reference


def welch_greater(method: ArrayLike, baseline: ArrayLike) -> float:
    """One-sided Welch t-test p-value for H1 "mean(method) > mean(baseline)" (NaNs dropped).

    Fewer than two values on a side → NaN. If both sides have zero variance the t statistic is undefined
    (0/0 or ±inf) and scipy returns NaN; the difference is then deterministic, so p = 0.0 if the method's
    mean is higher, else 1.0."""
    a, b = _vec(method, "method", dropna=True), _vec(baseline, "baseline", dropna=True)
    if len(a) < 2 or len(b) < 2:
        return math.nan
    if np.ptp(a) == 0 and np.ptp(b) == 0:
        return 0.0 if a.mean() > b.mean() else 1.0
    with warnings.catch_warnings():  # scipy flags a constant side as "nearly identical"; the test is fine
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        return float(_st.ttest_ind(a, b, equal_var=False, alternative="greater").pvalue)


def mann_whitney_greater(method: ArrayLike, baseline: ArrayLike) -> float:
    """One-sided Mann–Whitney U p-value for H1 "method's values tend to exceed baseline's" (NaNs dropped;
    NaN with an empty side): the rank test beside Welch's, for few values that need not be normal."""
    a, b = _vec(method, "method", dropna=True), _vec(baseline, "baseline", dropna=True)
    if len(a) == 0 or len(b) == 0:
        return math.nan
    return float(_st.mannwhitneyu(a, b, alternative="greater").pvalue)


def paired_differences(method: ArrayLike, baseline: ArrayLike) -> np.ndarray:
    """method − baseline per seed (the two arrays aligned by seed), leaving out seeds missing on either side."""
    a, b = _vec(method, "method"), _vec(baseline, "baseline")
    _same_length(a, b, "method", "baseline")
    d = a - b
    return d[np.isfinite(d)]


def paired_t_greater(method: ArrayLike, baseline: ArrayLike) -> float:
    """One-sided paired t-test p-value for H1 "mean(method − baseline) > 0" over seeds (aligned by seed).

    Fewer than two complete pairs → NaN. Differences without spread (up to rounding) make t undefined or
    meaningless; the difference is then deterministic, so p = 0.0 if it is positive, else 1.0 (as `welch_greater` does)."""
    d = paired_differences(method, baseline)
    if len(d) < 2:
        return math.nan
    if np.ptp(d) <= 1e-12 * max(1.0, float(np.abs(d).max())):  # equal up to float rounding of a − b
        return 0.0 if d.mean() > 0 else 1.0
    with warnings.catch_warnings():  # nearly constant differences: scipy warns, the p-value is still right
        warnings.filterwarnings("ignore", "Precision loss", RuntimeWarning)
        return float(_st.ttest_1samp(d, 0.0, alternative="greater").pvalue)


def wilcoxon_greater(method: ArrayLike, baseline: ArrayLike) -> float:
    """One-sided Wilcoxon signed-rank p-value for "method tends to exceed baseline" over seeds (aligned by
    seed): no assumption of normal differences, but with n pairs it can never go below 1 / 2**n.

    Zero differences are dropped (scipy's default); fewer than two complete pairs → NaN; no nonzero
    difference at all → 1.0 (no evidence either way)."""
    d = paired_differences(method, baseline)
    if len(d) < 2:
        return math.nan
    if not np.any(d != 0):
        return 1.0
    return float(_st.wilcoxon(d, alternative="greater").pvalue)


def wilcoxon_floor(n_pairs: int) -> float:
    """The smallest one-sided p-value the signed-rank test can give with n pairs (all differences positive)."""
    return 0.5**n_pairs if n_pairs >= 1 else math.nan


def paired_diff_ci(
    method: ArrayLike, baseline: ArrayLike, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of the mean paired difference: seeds are resampled whole, each with both
    of its scores, so the seed-to-seed variation shared by both sides cancels. < 2 pairs → NaN bounds."""
    return bootstrap_ci(paired_differences(method, baseline), np.mean, n_resamples, confidence, seed)


def permutation_greater(
    method: ArrayLike, baseline: ArrayLike, n_resamples: int = 10000, seed: int = 0
) -> float:
    """One-sided permutation p-value for mean(method) − mean(baseline) > 0 (NaNs dropped).

    Exact over all C(n_a+n_b, n_a) relabelings when that is ≤ n_resamples (observed split included),
    otherwise Monte-Carlo with the (count+1)/(n_resamples+1) correction. Empty side → NaN."""
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be >= 1, got {n_resamples}")
    a, b = _vec(method, "method", dropna=True), _vec(baseline, "baseline", dropna=True)
    if len(a) == 0 or len(b) == 0:
        return math.nan
    pooled, na = np.concatenate([a, b]), len(a)
    observed = a.mean() - b.mean()
    tol = 1e-12 * max(1.0, abs(observed))  # equal splits must count despite float rounding

    def diffs(idx_a: np.ndarray) -> np.ndarray:
        sum_a = pooled[idx_a].sum(axis=1)
        return sum_a / na - (pooled.sum() - sum_a) / len(b)

    if math.comb(len(pooled), na) <= n_resamples:
        idx = np.array(list(itertools.combinations(range(len(pooled)), na)))
        return float(np.mean(diffs(idx) >= observed - tol))
    rng = np.random.default_rng(seed)
    idx = np.argsort(rng.random((n_resamples, len(pooled))), axis=1)[:, :na]
    count = int(np.sum(diffs(idx) >= observed - tol))
    return (count + 1) / (n_resamples + 1)


def holm(pvalues: ArrayLike) -> np.ndarray:
    """Holm–Bonferroni adjusted p-values (step-down, monotone, capped at 1), in the input order.

    NaNs pass through and do not count towards the number of tests m."""
    p = _vec(pvalues, "pvalues")
    if np.any((p < 0) | (p > 1)):
        raise ValueError("p-values must lie in [0, 1]")
    out = np.full_like(p, np.nan)
    valid = np.flatnonzero(~np.isnan(p))
    order = valid[np.argsort(p[valid], kind="stable")]
    m = len(order)
    adjusted = np.maximum.accumulate((m - np.arange(m)) * p[order])
    out[order] = np.minimum(adjusted, 1.0)
    return out


def bootstrap_ci(
    values: ArrayLike,
    statistic: Callable[[np.ndarray], float] = np.mean,
    n_resamples: int = 2000,
    confidence: float = 0.95,
    seed: int = 0,
) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of `statistic` over values (NaNs dropped; < 2 → NaN)."""
    _check_confidence(confidence)
    v = _vec(values, "values", dropna=True)
    if len(v) < 2:
        return math.nan, math.nan
    idx = np.random.default_rng(seed).integers(0, len(v), size=(n_resamples, len(v)))
    boot = np.array([statistic(v[i]) for i in idx], dtype=float)
    lo, hi = np.quantile(boot, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def bootstrap_diff_ci(
    a: ArrayLike, b: ArrayLike, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0
) -> tuple[float, float]:
    """Percentile bootstrap CI of mean(a) − mean(b), resampling each group independently (unpaired).

    NaNs dropped; fewer than two values in either group → NaN bounds."""
    _check_confidence(confidence)
    x, y = _vec(a, "a", dropna=True), _vec(b, "b", dropna=True)
    if len(x) < 2 or len(y) < 2:
        return math.nan, math.nan
    rng = np.random.default_rng(seed)
    mx = x[rng.integers(0, len(x), size=(n_resamples, len(x)))].mean(axis=1)
    my = y[rng.integers(0, len(y), size=(n_resamples, len(y)))].mean(axis=1)
    lo, hi = np.quantile(mx - my, [(1 - confidence) / 2, (1 + confidence) / 2])
    return float(lo), float(hi)


def relative_gain(method: ArrayLike, baseline: ArrayLike) -> np.ndarray:
    """Elementwise method / baseline − 1; NaN where the baseline is 0 or NaN."""
    m, b = _vec(method, "method"), _vec(baseline, "baseline")
    _same_length(m, b, "method", "baseline")
    bad = (b == 0) | np.isnan(b)
    with np.errstate(divide="ignore", invalid="ignore"):
        out = m / np.where(bad, 1.0, b) - 1.0
    out[bad] = np.nan
    return out


def equivalent_fraction(fractions: ArrayLike, baseline_scores: ArrayLike, score: float) -> float:
    """Label fraction at which the baseline curve first reaches `score`.

    The curve is piecewise linear through the baseline's mean scores, made non-decreasing by a running
    maximum so the inverse exists. A score at or below the curve's first point returns the smallest
    fraction (read "at most"); a score above the curve's maximum returns inf (never reached in range)."""
    f, s = _curve(fractions, baseline_scores)
    if np.any(np.isnan(s)):
        raise ValueError("baseline_scores must not contain NaN")
    if math.isnan(score):
        return math.nan
    c = np.maximum.accumulate(s)
    if score <= c[0]:
        return float(f[0])
    if score > c[-1]:
        return math.inf
    i = int(np.argmax(c >= score))  # first point reaching score; i >= 1 and c[i-1] < score <= c[i]
    return float(f[i - 1] + (score - c[i - 1]) / (c[i] - c[i - 1]) * (f[i] - f[i - 1]))


def labels_saved(fractions: ArrayLike, baseline_scores: ArrayLike, method_scores: ArrayLike) -> np.ndarray:
    """Per fraction f_i: 1 − f_i / equivalent_fraction(method score s_i), the share of labels the method
    saves against the baseline (negative: it needs more).

    NaN where the baseline never reaches s_i in the studied range (print it as "> range"). Where s_i is at
    or below the baseline's first point the equivalent fraction is an upper bound, so the value is too."""
    f, m = _vec(fractions, "fractions"), _vec(method_scores, "method_scores")
    _same_length(f, m, "fractions", "method_scores")
    out = np.empty(len(f))
    for i, (fi, si) in enumerate(zip(f, m, strict=True)):
        eq = equivalent_fraction(f, baseline_scores, float(si))
        out[i] = math.nan if math.isinf(eq) or math.isnan(eq) else 1.0 - fi / eq
    return out


def cost_factor(
    pretrain_seconds: float | ArrayLike,
    finetune_seconds: float | ArrayLike,
    baseline_finetune_seconds: float | ArrayLike,
) -> float:
    """(pretraining time + mean fine-tuning time of the method) / mean fine-tuning time of random init:
    the compute price of the pretraining, as a multiple of training from scratch (means over sequences)."""
    means = []
    for x, name in (
        (pretrain_seconds, "pretrain_seconds"),
        (finetune_seconds, "finetune_seconds"),
        (baseline_finetune_seconds, "baseline_finetune_seconds"),
    ):
        v = _vec(np.atleast_1d(np.asarray(x, dtype=float)), name)
        if len(v) == 0 or not np.all(np.isfinite(v)) or np.any(v < 0):
            raise ValueError(f"{name} must be non-empty, finite and >= 0")
        means.append(float(v.mean()))
    if means[2] <= 0:
        raise ValueError("baseline_finetune_seconds must have a positive mean")
    return (means[0] + means[1]) / means[2]
