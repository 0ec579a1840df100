"""Prediction uncertainty from disagreement between several predictions of one image (test-time
augmentation, ensembles, MC dropout), and how well it tracks the real error over images."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from itertools import combinations

import numpy as np
from scipy.stats import spearmanr


def inverted_agreement(
    predictions: Sequence[np.ndarray], metric: Callable[[np.ndarray, np.ndarray], float]
) -> float:
    """1 − the mean of metric(pred_i, pred_j) over pairs i < j of T ≥ 2 label maps (the reference's
    formula): 0 when all predictions agree, larger as they disagree, for any agreement metric in [0, 1]."""
    if len(predictions) < 2:
        raise ValueError(f"inverted agreement needs at least 2 predictions, got {len(predictions)}")
    scores = [float(metric(a, b)) for a, b in combinations(predictions, 2)]
    return 1.0 - float(np.mean(scores))


def uncertainty_error_correlation(
    uncertainty: Sequence[float] | np.ndarray, error: Sequence[float] | np.ndarray
) -> dict[str, float]:
    """Spearman rank correlation of per-image uncertainty with per-image error, and its two-sided p-value:
    a useful uncertainty ranks the worst images highest (rho near 1). Pairs holding NaN are left out.

    Returns {"rho", "p_value", "n"}; rho and p_value are NaN when either side is constant."""
    u = np.asarray(uncertainty, dtype=np.float64).ravel()
    e = np.asarray(error, dtype=np.float64).ravel()
    if u.shape != e.shape:
        raise ValueError(f"{u.size} uncertainty values for {e.size} errors")
    keep = np.isfinite(u) & np.isfinite(e)
    u, e = u[keep], e[keep]
    if u.size < 3:
        raise ValueError(f"a rank correlation needs at least 3 images with finite values, got {u.size}")
    if np.ptp(u) == 0 or np.ptp(e) == 0:
        return {"rho": float("nan"), "p_value": float("nan"), "n": int(u.size)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = spearmanr(u, e)
    return {"rho": float(result.statistic), "p_value": float(result.pvalue), "n": int(u.size)}
