"""Inverted agreement of several predictions, and its rank correlation with the error."""

import numpy as np
import pytest

from sslseg.metrics import aji
from sslseg.metrics.uncertainty import inverted_agreement, uncertainty_error_correlation


def _accuracy(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.mean(a == b))


def test_identical_predictions_have_zero_inverted_agreement():
    labels = np.zeros((16, 16), np.int32)
    labels[2:6, 2:6] = 1
    labels[9:14, 8:12] = 2
    assert inverted_agreement([labels, labels.copy(), labels.copy()], aji) == 0.0


def test_inverted_agreement_by_hand():
    a = np.array([0, 0, 0, 0])
    b = np.array([0, 0, 1, 1])  # acc(a, b) = 0.5
    c = np.array([0, 1, 1, 1])  # acc(a, c) = 0.25, acc(b, c) = 0.75
    assert inverted_agreement([a, b, c], _accuracy) == pytest.approx(1.0 - (0.5 + 0.25 + 0.75) / 3)
    assert inverted_agreement([a, b], _accuracy) == pytest.approx(0.5)
    with pytest.raises(ValueError, match="at least 2"):
        inverted_agreement([a], _accuracy)


def test_inverted_agreement_calls_the_metric_on_pairs_i_before_j():
    seen = []
    inverted_agreement(["p0", "p1", "p2"], lambda x, y: seen.append((x, y)) or 1.0)
    assert seen == [("p0", "p1"), ("p0", "p2"), ("p1", "p2")]


def test_spearman_sign_and_nan_handling():
    u = np.array([0.1, 0.2, 0.3, 0.4, 0.5, 0.6])
    assert uncertainty_error_correlation(u, u**2)["rho"] == pytest.approx(1.0)
    down = uncertainty_error_correlation(u, -u)
    assert down["rho"] == pytest.approx(-1.0) and down["p_value"] < 0.01 and down["n"] == 6
    with_nan = uncertainty_error_correlation(np.append(u, 0.7), np.append(u, np.nan))
    assert with_nan["n"] == 6 and with_nan["rho"] == pytest.approx(1.0)
    assert np.isnan(uncertainty_error_correlation(u, np.ones(6))["rho"])
    with pytest.raises(ValueError):
        uncertainty_error_correlation(u[:2], u[:2])
    with pytest.raises(ValueError):
        uncertainty_error_correlation(u, u[:5])
