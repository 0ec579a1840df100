"""Representation measures: CKA invariances, nearest-neighbour agreement (Omega) and its chance level, PCA."""

import numpy as np
import pytest
import torch

from sslseg.errors import ConfigError
from sslseg.metrics.embeddings import (
    chance_agreement,
    embedding_map,
    linear_cka,
    nearest_neighbour_agreement,
    pca_2d,
    rbf_cka,
)


def _features(n: int = 60, d: int = 12, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.normal(size=(n, 4)) @ rng.normal(size=(4, d)) + 0.3 * rng.normal(size=(n, d))


@pytest.mark.parametrize("cka", [linear_cka, rbf_cka])
def test_cka_of_a_representation_with_itself_is_one(cka):
    x = _features()
    assert cka(x, x) == pytest.approx(1.0, abs=1e-10)
    assert cka(torch.from_numpy(x).float(), x) == pytest.approx(1.0, abs=1e-6)  # tensors accepted


@pytest.mark.parametrize("cka", [linear_cka, rbf_cka])
def test_cka_is_invariant_to_orthogonal_transforms_and_isotropic_scaling(cka):
    x = _features()
    y = _features(seed=1)
    q, _ = np.linalg.qr(np.random.default_rng(2).normal(size=(12, 12)))
    reference = cka(x, y)
    assert cka(x @ q, y) == pytest.approx(reference, abs=1e-10)
    assert cka(7.5 * x, y) == pytest.approx(reference, abs=1e-10)
    assert cka(x + 3.0, y) == pytest.approx(reference, abs=1e-10)  # and to translation (centring)


def test_linear_cka_of_independent_features_is_small_and_allows_different_widths():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(2000, 8)), rng.normal(size=(2000, 5))
    assert linear_cka(x, y) < 0.02
    assert rbf_cka(x[:500], y[:500]) < 0.1  # the narrow kernel has a larger finite-sample bias
    # the Gram form (N ≤ D) and the feature form (N > D) give the same value
    z = x[:, :3] @ rng.normal(size=(3, 40)) + 0.1 * rng.normal(size=(2000, 40))
    few = linear_cka(x[:30], z[:30])  # N=30 ≤ D=40: Gram form
    xc, zc = x[:30] - x[:30].mean(0), z[:30] - z[:30].mean(0)
    feature_form = np.linalg.norm(zc.T @ xc) ** 2 / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(zc.T @ zc))
    assert few == pytest.approx(feature_form, rel=1e-10)


def test_rbf_cka_approaches_linear_cka_for_wide_kernels():
    x = _features()
    y = np.tanh(_features(seed=3))
    assert rbf_cka(x, y, sigma_fraction=200.0) == pytest.approx(linear_cka(x, y), abs=1e-3)


def test_cka_input_errors():
    with pytest.raises(ValueError, match="same samples"):
        linear_cka(np.zeros((5, 2)), np.zeros((4, 2)))
    with pytest.raises(ValueError, match="at least 2"):
        rbf_cka(np.zeros((1, 2)), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="N×D"):
        linear_cka(np.zeros(5), np.zeros((5, 1)))
    assert np.isnan(linear_cka(np.ones((5, 2)), _features(5, 3)))  # constant: undefined


def test_omega_is_one_for_separated_clusters_and_near_chance_for_random_labels():
    rng = np.random.default_rng(0)
    centres = rng.normal(scale=20.0, size=(3, 30))
    classes = np.repeat(["a", "b", "c"], 20)
    z = centres[np.repeat(np.arange(3), 20)] + rng.normal(size=(60, 30))
    assert nearest_neighbour_agreement(z, classes) == 1.0
    random_labels = rng.integers(0, 3, size=400)
    noise = rng.normal(size=(400, 30))
    omega = nearest_neighbour_agreement(noise, random_labels)
    assert omega == pytest.approx(chance_agreement(random_labels), abs=0.08)


def test_chance_agreement_by_hand():
    # 3 of class x, 1 of y: p_x (n_x − 1)/(N − 1) + p_y · 0 = 3/4 · 2/3 = 1/2
    assert chance_agreement(["x", "x", "x", "y"]) == pytest.approx(0.5)
    assert chance_agreement([1, 1]) == 1.0
    assert chance_agreement([1, 2, 3]) == 0.0
    with pytest.raises(ValueError):
        nearest_neighbour_agreement(np.zeros((3, 2)), [0, 1])


def test_omega_by_hand_on_a_line():
    z = np.array([[0.0], [1.0], [10.0], [12.0]])
    # neighbours: 0→1, 1→0, 2→3, 3→2
    assert nearest_neighbour_agreement(z, [0, 0, 1, 1]) == 1.0
    assert nearest_neighbour_agreement(z, [0, 1, 0, 1]) == 0.0
    assert nearest_neighbour_agreement(z, [0, 0, 1, 0]) == 0.5


def test_pca_2d_ratios_and_rank_one_data():
    coords, ratios = pca_2d(_features())
    assert coords.shape == (60, 2) and ratios.shape == (2,)
    assert ratios.sum() <= 1.0 + 1e-12 and ratios[0] >= ratios[1] >= 0
    t = np.linspace(-1, 1, 20)[:, None]
    rank1 = t @ np.array([[1.0, 2.0, -3.0]]) + 5.0
    coords, ratios = pca_2d(rank1)
    assert ratios[0] == pytest.approx(1.0) and ratios[1] == pytest.approx(0.0, abs=1e-12)
    assert np.allclose(np.abs(coords[:, 0]), np.abs(t[:, 0]) * np.sqrt(14.0))
    assert embedding_map(rank1).shape == (20, 2)
    one_dim = pca_2d(np.arange(5.0)[:, None])
    assert one_dim[0][:, 1].tolist() == [0.0] * 5  # axes beyond the rank are zero


def test_umap_map_needs_the_package_or_says_so():
    try:
        import umap  # noqa: F401
    except ImportError:
        with pytest.raises(ConfigError, match="pip install umap-learn"):
            embedding_map(_features(), method="umap")
    else:
        assert embedding_map(_features(), method="umap").shape == (60, 2)
    with pytest.raises(ValueError, match="unknown"):
        embedding_map(_features(), method="tsne")
