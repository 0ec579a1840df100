"""Tests for sslseg.study.stats on constructed data with known answers."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as st

from sslseg.study.stats import (
    bootstrap_ci,
    bootstrap_diff_ci,
    cost_factor,
    equivalent_fraction,
    holm,
    labels_saved,
    mean_ci,
    normalized_integral,
    paired_diff_ci,
    paired_differences,
    paired_t_greater,
    permutation_greater,
    relative_gain,
    welch_greater,
    wilcoxon_floor,
    wilcoxon_greater,
)

BASE_F = [0.1, 0.5, 1.0]
BASE_S = [0.5, 0.7, 0.8]


# --- mean_ci -------------------------------------------------------------------------------------------


def test_mean_ci_matches_student_t():
    v = [0.6, 0.7, 0.8, 0.75]
    m, lo, hi = mean_ci(v)
    ref = st.t.interval(0.95, len(v) - 1, loc=np.mean(v), scale=st.sem(v))
    assert m == pytest.approx(np.mean(v))
    assert (lo, hi) == pytest.approx(ref)
    _, lo90, hi90 = mean_ci(v, confidence=0.90)
    assert lo < lo90 < m < hi90 < hi


def test_mean_ci_nan_and_degenerate():
    assert mean_ci([1.0, np.nan, 3.0])[0] == pytest.approx(2.0)
    m, lo, hi = mean_ci([0.4, np.nan])
    assert m == 0.4 and math.isnan(lo) and math.isnan(hi)
    assert all(math.isnan(x) for x in mean_ci([np.nan, np.nan]))
    assert all(math.isnan(x) for x in mean_ci([]))
    assert mean_ci([0.5, 0.5, 0.5]) == (0.5, 0.5, 0.5)


def test_mean_ci_errors():
    with pytest.raises(ValueError, match="1-D"):
        mean_ci([[1.0, 2.0]])
    with pytest.raises(ValueError, match="confidence"):
        mean_ci([1.0, 2.0], confidence=1.5)


# --- normalized_integral -------------------------------------------------------------------------------


def test_integral_constant_curve():
    assert normalized_integral([0.01, 0.1, 0.5, 1.0], [0.6] * 4, reference=0.8) == pytest.approx(0.75)


def test_integral_linear_curve_is_midpoint():
    f = np.array([0.0, 0.25, 0.5, 1.0])
    s = 0.2 + 0.6 * f
    assert normalized_integral(f, s, reference=1.0) == pytest.approx(0.5)
    assert normalized_integral(f, s, reference=0.5) == pytest.approx(1.0)


def test_integral_piecewise_by_hand():
    # area = 0.4*(0.5+0.7)/2 + 0.5*(0.7+0.8)/2 = 0.24 + 0.375 = 0.615 over width 0.9
    assert normalized_integral(BASE_F, BASE_S, reference=1.0) == pytest.approx(0.615 / 0.9)


def test_integral_clipping_with_lo_hi():
    # over [0.3, 0.75]: values 0.6 at 0.3, 0.7 at 0.5, 0.75 at 0.75
    area = 0.2 * (0.6 + 0.7) / 2 + 0.25 * (0.7 + 0.75) / 2
    got = normalized_integral(BASE_F, BASE_S, reference=0.8, lo=0.3, hi=0.75)
    assert got == pytest.approx(area / 0.45 / 0.8)
    # a sub-range inside one segment is its midpoint value
    assert normalized_integral(BASE_F, BASE_S, 1.0, lo=0.1, hi=0.3) == pytest.approx(0.55)


def test_integral_unsorted_and_single():
    assert normalized_integral([1.0, 0.1, 0.5], [0.8, 0.5, 0.7], 1.0) == pytest.approx(0.615 / 0.9)
    assert normalized_integral([0.2], [0.6], reference=0.8) == pytest.approx(0.75)
    assert normalized_integral(BASE_F, BASE_S, 1.0, lo=0.5, hi=0.5) == pytest.approx(0.7)


def test_integral_nan_score_propagates():
    assert math.isnan(normalized_integral(BASE_F, [0.5, np.nan, 0.8], 1.0))


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(fractions=[0.1, 0.1, 1.0], scores=[0.5, 0.6, 0.8], reference=1.0), "duplicate fraction"),
        (dict(fractions=BASE_F, scores=BASE_S, reference=0.0), "reference"),
        (dict(fractions=BASE_F, scores=BASE_S, reference=-1.0), "reference"),
        (dict(fractions=BASE_F, scores=BASE_S, reference=1.0, lo=0.05), "outside"),
        (dict(fractions=BASE_F, scores=BASE_S, reference=1.0, hi=1.5), "outside"),
        (dict(fractions=BASE_F, scores=BASE_S, reference=1.0, lo=0.6, hi=0.4), "exceed"),
        (dict(fractions=BASE_F, scores=BASE_S[:2], reference=1.0), "same length"),
        (dict(fractions=[], scores=[], reference=1.0), "empty"),
        (dict(fractions=[0.1, np.nan], scores=[0.5, 0.6], reference=1.0), "finite"),
        (dict(fractions=[[0.1, 0.5]], scores=[[0.5, 0.6]], reference=1.0), "1-D"),
    ],
)
def test_integral_errors(kwargs, match):
    with pytest.raises(ValueError, match=match):
        normalized_integral(**kwargs)


# --- welch / permutation -------------------------------------------------------------------------------


def test_welch_separated_and_identical():
    a, b = [0.80, 0.82, 0.81, 0.83], [0.60, 0.62, 0.61, 0.59]
    assert welch_greater(a, b) < 1e-4
    assert welch_greater(b, a) > 0.99
    assert welch_greater(a, a) == pytest.approx(0.5)


def test_welch_degenerate():
    assert math.isnan(welch_greater([0.8], [0.5, 0.6]))
    assert math.isnan(welch_greater([0.8, np.nan], [0.5, 0.6]))
    assert welch_greater([0.8, 0.8], [0.5, 0.5]) == 0.0
    assert welch_greater([0.5, 0.5], [0.8, 0.8]) == 1.0
    assert welch_greater([0.5, 0.5], [0.5, 0.5]) == 1.0
    assert 0.0 < welch_greater([0.8, 0.8], [0.5, 0.6]) < 0.2  # one zero variance: ordinary Welch


def test_permutation_exact_hand_worked():
    # 3 vs 3 fully separated: only 1 of C(6,3)=20 splits is as extreme
    assert permutation_greater([4, 5, 6], [1, 2, 3]) == pytest.approx(1 / 20)
    assert permutation_greater([1, 2, 3], [4, 5, 6]) == pytest.approx(1.0)
    # 1 vs 2: splits of {1,2,3} put 3, 2 or 1 alone; observed alone=2 → {3, 2} as extreme → 2/3
    assert permutation_greater([2], [1, 3]) == pytest.approx(2 / 3)
    # ties count: identical groups → every split is as extreme
    assert permutation_greater([0.5, 0.5], [0.5, 0.5]) == 1.0


def test_permutation_monte_carlo():
    rng = np.random.default_rng(1)
    a, b = rng.normal(1.0, 0.1, 10), rng.normal(0.0, 0.1, 10)  # C(20,10) = 184756 > 2000
    p = permutation_greater(a, b, n_resamples=2000, seed=3)
    assert p == pytest.approx(1 / 2001)  # correction keeps p > 0
    assert p == permutation_greater(a, b, n_resamples=2000, seed=3)
    same = permutation_greater(a, a, n_resamples=2000)
    assert same > 0.3


def test_permutation_degenerate_and_errors():
    assert math.isnan(permutation_greater([], [1.0, 2.0]))
    assert permutation_greater([4, 5, 6, np.nan], [1, 2, 3]) == pytest.approx(1 / 20)
    with pytest.raises(ValueError, match="n_resamples"):
        permutation_greater([1.0], [2.0], n_resamples=0)


# --- paired tests --------------------------------------------------------------------------------------

# per-seed integrals of a pretraining and of random init, seed by seed (seed 3 is noisy on both sides)
PAIRED_A = [0.712, 0.655, 0.801, 0.590, 0.744, 0.689]
PAIRED_B = [0.690, 0.641, 0.772, 0.601, 0.707, 0.660]


def test_paired_t_matches_scipy_and_the_formula():
    p = paired_t_greater(PAIRED_A, PAIRED_B)
    assert p == pytest.approx(st.ttest_rel(PAIRED_A, PAIRED_B, alternative="greater").pvalue, rel=1e-12)
    d = np.subtract(PAIRED_A, PAIRED_B)
    t = d.mean() / (d.std(ddof=1) / math.sqrt(len(d)))
    assert p == pytest.approx(st.t.sf(t, len(d) - 1), rel=1e-12)
    assert paired_t_greater(PAIRED_B, PAIRED_A) == pytest.approx(1 - p, rel=1e-12)


def test_wilcoxon_matches_scipy_and_exact_counts():
    p = wilcoxon_greater(PAIRED_A, PAIRED_B)
    assert p == pytest.approx(st.wilcoxon(PAIRED_A, PAIRED_B, alternative="greater").pvalue, rel=1e-12)
    # 5 positive differences: only 1 of the 2^5 sign patterns is as extreme
    assert wilcoxon_greater([1.1, 2.2, 3.3, 4.4, 5.5], [0, 0, 0, 0, 0]) == pytest.approx(1 / 32)
    assert wilcoxon_floor(5) == 1 / 32
    # smallest difference negative: W+ = 14 of 15; W+ ≥ 14 in 2 of 32 patterns
    assert wilcoxon_greater([-1, 2, 3, 4, 5], [0, 0, 0, 0, 0]) == pytest.approx(2 / 32)


def test_paired_tests_match_seeds_and_drop_incomplete_pairs():
    a, b = list(PAIRED_A), list(PAIRED_B)
    a[2], b[4] = np.nan, np.nan  # a failed cell on each side: seeds 2 and 4 leave both
    keep = [0, 1, 3, 5]
    ra, rb = np.take(PAIRED_A, keep), np.take(PAIRED_B, keep)
    np.testing.assert_allclose(paired_differences(a, b), ra - rb)
    assert paired_t_greater(a, b) == pytest.approx(st.ttest_rel(ra, rb, alternative="greater").pvalue)
    assert wilcoxon_greater(a, b) == pytest.approx(st.wilcoxon(ra, rb, alternative="greater").pvalue)
    with pytest.raises(ValueError, match="same length"):
        paired_t_greater(a, b[:-1])


def test_paired_tests_degenerate():
    assert math.isnan(paired_t_greater([0.8, np.nan], [0.5, 0.6]))  # one pair
    assert math.isnan(wilcoxon_greater([0.8], [0.5]))
    assert paired_t_greater([0.8, 0.9], [0.7, 0.8]) == 0.0  # the same gain every seed
    assert paired_t_greater([0.7, 0.8], [0.7, 0.8]) == 1.0
    assert wilcoxon_greater([0.7, 0.8], [0.7, 0.8]) == 1.0  # no nonzero difference: no evidence


def test_pairing_sees_a_consistent_gain_that_seed_noise_hides_from_welch():
    rng = np.random.default_rng(0)
    base = rng.normal(0.6, 0.08, 8)  # which images were labelled moves both sides alike
    method = base + 0.02 + rng.normal(0, 0.004, 8)
    assert paired_t_greater(method, base) < 1e-4
    assert welch_greater(method, base) > 0.2


def test_paired_bootstrap_ci_contains_the_true_difference_and_is_narrower_than_unpaired():
    rng = np.random.default_rng(1)
    base = rng.normal(0.6, 0.1, 10)
    true = 0.05
    method = base + true + rng.normal(0, 0.01, 10)
    lo, hi = paired_diff_ci(method, base)
    assert lo < true < hi
    assert lo > 0  # the gain is resolved
    ulo, uhi = bootstrap_diff_ci(method, base)
    assert ulo < 0 < uhi  # ignoring the pairing, it is not
    assert hi - lo < (uhi - ulo) / 5
    assert paired_diff_ci(method, base) == (lo, hi)  # seeded
    assert all(math.isnan(x) for x in paired_diff_ci([0.5, np.nan], [0.4, 0.3]))


# --- holm ----------------------------------------------------------------------------------------------


def test_holm_hand_worked():
    np.testing.assert_allclose(holm([0.01, 0.04, 0.03]), [0.03, 0.06, 0.06])
    np.testing.assert_allclose(holm([0.5, 0.9]), [1.0, 1.0])  # capped
    np.testing.assert_allclose(holm([0.02]), [0.02])
    assert holm([]).shape == (0,)
    # sorted 0.01·4 = 0.04, 0.02·3 = 0.06, 0.03·2 = 0.06, 0.04·1 = 0.04 → raised to 0.06 (monotone)
    np.testing.assert_allclose(holm([0.04, 0.01, 0.03, 0.02]), [0.06, 0.04, 0.06, 0.06])


def test_holm_nan_not_counted():
    out = holm([0.01, np.nan, 0.04, 0.03])
    assert math.isnan(out[1])
    np.testing.assert_allclose(out[[0, 2, 3]], [0.03, 0.06, 0.06])


def test_holm_errors():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        holm([0.1, 1.2])
    with pytest.raises(ValueError, match="1-D"):
        holm([[0.1]])


# --- bootstrap -----------------------------------------------------------------------------------------


def test_bootstrap_ci_contains_mean_and_narrows():
    rng = np.random.default_rng(0)
    small, large = rng.normal(0.7, 0.05, 5), rng.normal(0.7, 0.05, 200)
    lo_s, hi_s = bootstrap_ci(small)
    lo_l, hi_l = bootstrap_ci(large)
    assert lo_s <= small.mean() <= hi_s
    assert lo_l <= large.mean() <= hi_l
    assert hi_l - lo_l < hi_s - lo_s
    assert bootstrap_ci(small) == bootstrap_ci(small)  # seeded
    lo_m, hi_m = bootstrap_ci(large, statistic=np.median)
    assert lo_m <= np.median(large) <= hi_m


def test_bootstrap_degenerate_and_errors():
    assert all(math.isnan(x) for x in bootstrap_ci([0.5, np.nan]))
    assert all(math.isnan(x) for x in bootstrap_diff_ci([0.5], [0.1, 0.2]))
    with pytest.raises(ValueError, match="confidence"):
        bootstrap_ci([1.0, 2.0], confidence=0.0)


def test_bootstrap_diff_ci():
    a, b = [0.80, 0.82, 0.81, 0.83, 0.79], [0.60, 0.62, 0.61, 0.59, 0.63]
    lo, hi = bootstrap_diff_ci(a, b)
    assert 0.0 < lo <= np.mean(a) - np.mean(b) <= hi
    lo2, hi2 = bootstrap_diff_ci(a, a)
    assert lo2 <= 0.0 <= hi2


# --- relative gain, equivalent fraction, labels saved --------------------------------------------------


def test_relative_gain():
    out = relative_gain([0.6, 0.5, 0.3, 0.4], [0.5, 0.5, 0.0, np.nan])
    np.testing.assert_allclose(out[:2], [0.2, 0.0])
    assert np.isnan(out[2:]).all()
    with pytest.raises(ValueError, match="same length"):
        relative_gain([0.1, 0.2], [0.1])


def test_equivalent_fraction_by_hand():
    assert equivalent_fraction(BASE_F, BASE_S, 0.7) == pytest.approx(0.5)
    assert equivalent_fraction(BASE_F, BASE_S, 0.6) == pytest.approx(0.3)
    assert equivalent_fraction(BASE_F, BASE_S, 0.75) == pytest.approx(0.75)
    assert equivalent_fraction(BASE_F, BASE_S, 0.8) == pytest.approx(1.0)
    assert equivalent_fraction(BASE_F, BASE_S, 0.4) == pytest.approx(0.1)  # "at most" the smallest
    assert equivalent_fraction(BASE_F, BASE_S, 0.5) == pytest.approx(0.1)
    assert equivalent_fraction(BASE_F, BASE_S, 0.9) == math.inf
    assert math.isnan(equivalent_fraction(BASE_F, BASE_S, math.nan))
    assert equivalent_fraction([1.0, 0.1, 0.5], [0.8, 0.5, 0.7], 0.7) == pytest.approx(0.5)


def test_equivalent_fraction_non_monotone_baseline():
    f, s = [0.1, 0.5, 1.0], [0.5, 0.8, 0.7]  # running max: 0.5, 0.8, 0.8
    assert equivalent_fraction(f, s, 0.75) == pytest.approx(0.1 + 0.25 / 0.3 * 0.4)
    assert equivalent_fraction(f, s, 0.8) == pytest.approx(0.5)  # first reached, not the later dip
    assert equivalent_fraction(f, s, 0.81) == math.inf
    f2, s2 = [0.1, 0.3, 0.5], [0.6, 0.5, 0.8]  # dip after the first point flattens to 0.6
    assert equivalent_fraction(f2, s2, 0.7) == pytest.approx(0.4)


def test_equivalent_fraction_errors():
    with pytest.raises(ValueError, match="NaN"):
        equivalent_fraction(BASE_F, [0.5, np.nan, 0.8], 0.6)
    with pytest.raises(ValueError, match="duplicate fraction"):
        equivalent_fraction([0.1, 0.1], [0.5, 0.6], 0.55)


def test_labels_saved():
    # method: 0.7 at 0.1 → equivalent 0.5 → saved 0.8; 0.75 at 0.5 → eq 0.75 → 1/3; 0.9 at 1.0 → out of range
    out = labels_saved(BASE_F, BASE_S, [0.7, 0.75, 0.9])
    np.testing.assert_allclose(out[:2], [0.8, 1 - 0.5 / 0.75])
    assert math.isnan(out[2])
    # a method matching the baseline saves nothing; a worse one is negative
    np.testing.assert_allclose(labels_saved(BASE_F, BASE_S, BASE_S), [0.0, 0.0, 0.0], atol=1e-12)
    worse = labels_saved(BASE_F, BASE_S, [0.5, 0.6, 0.75])
    np.testing.assert_allclose(worse, [0.0, 1 - 0.5 / 0.3, 1 - 1.0 / 0.75])
    assert math.isnan(labels_saved(BASE_F, BASE_S, [np.nan, 0.7, 0.8])[0])
    with pytest.raises(ValueError, match="same length"):
        labels_saved(BASE_F, BASE_S, [0.7, 0.8])


# --- cost factor ---------------------------------------------------------------------------------------


def test_cost_factor():
    assert cost_factor(3600.0, 600.0, 600.0) == pytest.approx(7.0)
    assert cost_factor(0.0, [500.0, 700.0], [400.0, 800.0]) == pytest.approx(1.0)
    assert cost_factor([1000.0, 3000.0], [100.0], [300.0]) == pytest.approx(7.0)


@pytest.mark.parametrize(
    "args, match",
    [
        ((100.0, 10.0, 0.0), "positive mean"),
        ((100.0, [], 10.0), "non-empty"),
        ((-1.0, 10.0, 10.0), ">= 0"),
        ((100.0, [10.0, np.nan], 10.0), "finite"),
        ((100.0, [[10.0]], 10.0), "1-D"),
    ],
)
def test_cost_factor_errors(args, match):
    with pytest.raises(ValueError, match=match):
        cost_factor(*args)
