"""Measures on embedding matrices (one row per sample): collapse diagnostics for SSL embeddings, CKA
similarity between two embeddings, nearest-neighbour class agreement ("Omega") and 2-D maps for plots; and
how far fine-tuning moved the weights."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from scipy.spatial.distance import pdist, squareform

from sslseg.errors import ConfigError


@torch.no_grad()
def embedding_std(z: torch.Tensor) -> float:
    """Mean per-dimension standard deviation of L2-normalised embeddings (N×D).

    Healthy embeddings spread over the sphere give about 1/sqrt(D); collapse to one point gives 0.
    """
    return float(F.normalize(z.float(), dim=1).std(dim=0).mean())


@torch.no_grad()
def effective_rank(z: torch.Tensor) -> float:
    """exp(entropy) of the normalised singular values of centred embeddings (Roy & Vetterli 2007), in [1, D]."""
    z = z.float() - z.float().mean(dim=0, keepdim=True)
    s = torch.linalg.svdvals(z)
    if s.sum() <= 0:
        return 1.0
    p = s / s.sum()
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


# ---------------------------------------------------------------------------------------------------------
# Comparing and probing representations (numpy, float64). Inputs are N×D matrices: one row per sample.
# ---------------------------------------------------------------------------------------------------------

Matrix = np.ndarray | torch.Tensor


def _as_matrix(a: Matrix, name: str) -> np.ndarray:
    """An N×D float64 numpy copy of a numpy array or torch tensor, refusing non-finite values."""
    if isinstance(a, torch.Tensor):
        a = a.detach().cpu().double().numpy()
    m = np.asarray(a, dtype=np.float64)
    if m.ndim != 2:
        raise ValueError(f"{name} must be an N×D matrix, got shape {m.shape}")
    if not np.isfinite(m).all():
        raise ValueError(f"{name} holds NaN or infinite values")
    return m


def _pair(x: Matrix, y: Matrix) -> tuple[np.ndarray, np.ndarray]:
    x, y = _as_matrix(x, "x"), _as_matrix(y, "y")
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"x and y must describe the same samples: {x.shape[0]} vs {y.shape[0]} rows")
    if x.shape[0] < 2:
        raise ValueError(f"CKA needs at least 2 samples, got {x.shape[0]}")
    return x, y


def _centre_kernel(k: np.ndarray) -> np.ndarray:
    """H K H with H = I − 11ᵀ/N: remove row and column means of a kernel matrix."""
    return k - k.mean(axis=0, keepdims=True) - k.mean(axis=1, keepdims=True) + k.mean()


def _hsic_ratio(kc: np.ndarray, lc: np.ndarray) -> float:
    """HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) for centred kernels; NaN when either is constant."""
    den = np.linalg.norm(kc) * np.linalg.norm(lc)
    return float(np.sum(kc * lc) / den) if den > 0 else float("nan")


def linear_cka(x: Matrix, y: Matrix) -> float:
    """Linear CKA (Kornblith et al. 2019) of N×D1 and N×D2 features, in [0, 1]: 1 for representations
    equal up to rotation and isotropic scale. NaN when either representation is constant over samples."""
    x, y = _pair(x, y)
    x = x - x.mean(axis=0)
    y = y - y.mean(axis=0)
    if x.shape[0] <= max(x.shape[1], y.shape[1]):  # few samples: the N×N Gram form is cheaper, same value
        return _hsic_ratio(x @ x.T, y @ y.T)
    den = np.linalg.norm(x.T @ x) * np.linalg.norm(y.T @ y)  # ‖YᵀX‖²_F / (‖XᵀX‖_F ‖YᵀY‖_F)
    return float(np.linalg.norm(y.T @ x) ** 2 / den) if den > 0 else float("nan")


def _rbf_kernel(x: np.ndarray, sigma_fraction: float) -> np.ndarray:
    d2 = squareform(pdist(x, "sqeuclidean"))
    median = float(np.median(np.sqrt(d2[np.triu_indices(len(x), k=1)])))
    if median <= 0:
        return np.ones_like(d2)  # all samples identical (or mostly): a constant kernel, CKA undefined
    sigma = sigma_fraction * median
    return np.exp(-d2 / (2.0 * sigma * sigma))


def rbf_cka(x: Matrix, y: Matrix, sigma_fraction: float = 0.5) -> float:
    """CKA with Gaussian kernels, bandwidth = sigma_fraction × the median pairwise distance of each
    representation; captures non-linear similarity and tends to linear CKA as sigma_fraction grows."""
    if sigma_fraction <= 0:
        raise ValueError(f"sigma_fraction must be > 0, got {sigma_fraction}")
    x, y = _pair(x, y)
    return _hsic_ratio(
        _centre_kernel(_rbf_kernel(x, sigma_fraction)), _centre_kernel(_rbf_kernel(y, sigma_fraction))
    )


def _classes(classes: Sequence[object] | np.ndarray, n: int | None = None) -> np.ndarray:
    c = np.asarray(classes)
    if c.ndim != 1:
        raise ValueError(f"classes must be one label per sample (1-D), got shape {c.shape}")
    if n is not None and len(c) != n:
        raise ValueError(f"{len(c)} class labels for {n} embeddings")
    if len(c) < 2:
        raise ValueError(f"need at least 2 samples, got {len(c)}")
    return c


def _principal_axes(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Scores (U·S) and singular values of centred data, with a deterministic sign per axis."""
    z = z - z.mean(axis=0)
    u, s, vt = np.linalg.svd(z, full_matrices=False)
    signs = np.sign(vt[np.arange(len(vt)), np.abs(vt).argmax(axis=1)])  # largest loading positive
    signs[signs == 0] = 1.0
    return u * s * signs, s


def nearest_neighbour_agreement(
    embeddings: Matrix, classes: Sequence[object] | np.ndarray, pca_dims: int = 10
) -> float:
    """The reference's "Omega": fraction of samples whose Euclidean nearest neighbour (itself excluded)
    has the same class, after plain PCA (centred, not standardised, as the reference) to
    min(pca_dims, N−1, D) dimensions. Compare it with `chance_agreement(classes)`."""
    z = _as_matrix(embeddings, "embeddings")
    c = _classes(classes, len(z))
    if pca_dims < 1:
        raise ValueError(f"pca_dims must be >= 1, got {pca_dims}")
    scores, _ = _principal_axes(z)
    scores = scores[:, : min(pca_dims, len(z) - 1, z.shape[1])]
    d = squareform(pdist(scores, "sqeuclidean"))
    np.fill_diagonal(d, np.inf)
    neighbour = d.argmin(axis=1)  # ties: the lowest index
    return float(np.mean(c[neighbour] == c))


def chance_agreement(classes: Sequence[object] | np.ndarray) -> float:
    """Omega expected when the neighbour is a random other sample: Σ_c p_c (n_c − 1)/(N − 1)."""
    c = _classes(classes)
    n = len(c)
    _, counts = np.unique(c, return_counts=True)
    return float(np.sum(counts / n * (counts - 1) / (n - 1)))


def pca_2d(embeddings: Matrix) -> tuple[np.ndarray, np.ndarray]:
    """2-D PCA coordinates (N×2) and the explained-variance ratios of the two axes, for scatter plots.

    Axes beyond the data's rank are zero; each axis's sign makes its largest loading positive."""
    z = _as_matrix(embeddings, "embeddings")
    if len(z) < 2:
        raise ValueError(f"PCA needs at least 2 samples, got {len(z)}")
    scores, s = _principal_axes(z)
    total = float(np.sum(s**2))
    ratios = s**2 / total if total > 0 else np.zeros_like(s)
    coords = np.zeros((len(z), 2))
    ratio2 = np.zeros(2)
    k = min(2, scores.shape[1])
    coords[:, :k] = scores[:, :k]
    ratio2[:k] = ratios[:k]
    return coords, ratio2


def embedding_map(embeddings: Matrix, method: Literal["pca", "umap"] = "pca", seed: int = 0) -> np.ndarray:
    """N×2 map of embeddings for plotting: PCA (always available) or UMAP (needs `umap-learn`)."""
    if method == "pca":
        return pca_2d(embeddings)[0]
    if method != "umap":
        raise ValueError(f"unknown embedding map method '{method}'; choose 'pca' or 'umap'")
    try:
        import umap
    except ImportError:
        raise ConfigError("UMAP maps need the umap-learn package: pip install umap-learn") from None
    z = _as_matrix(embeddings, "embeddings")
    if len(z) < 3:
        raise ValueError(f"UMAP needs at least 3 samples, got {len(z)}")
    reducer = umap.UMAP(n_components=2, n_neighbors=min(15, len(z) - 1), random_state=seed)
    return np.asarray(reducer.fit_transform(z), dtype=np.float64)


# State-dict entries that are buffers updated without gradients, not learned weights.
_STAT_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


def _learned(state: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {
        k: v
        for k, v in state.items()
        if k.startswith(prefix) and torch.is_floating_point(v) and not k.endswith(_STAT_SUFFIXES)
    }


def weight_change(
    initial: dict[str, torch.Tensor],
    final: dict[str, torch.Tensor],
    prefixes: Sequence[str] = ("encoder.", "decoder."),
) -> dict[str, float]:
    """Relative L2 distance travelled per parameter group, ‖w_f − w_i‖ / ‖w_i‖ over all floating-point
    entries whose state-dict key starts with the prefix (BatchNorm running statistics left out).

    Unlike the reference's step-to-step change of Σ|w|, this sees direction, not just size. Keys are those
    of the U-Net's own state dict (`module.net.state_dict()`); for a Lightning checkpoint's "state_dict"
    use prefixes ("net.encoder.", "net.decoder."). A zero initial norm gives inf (or 0 if unchanged)."""
    out: dict[str, float] = {}
    for prefix in prefixes:
        a, b = _learned(initial, prefix), _learned(final, prefix)
        missing = sorted(a.keys() ^ b.keys())
        if missing:
            raise ValueError(f"weights under '{prefix}' are in only one of the state dicts: {missing[:5]}")
        if not a:
            raise ValueError(f"no floating-point weights start with '{prefix}'")
        wrong = [k for k in a if a[k].shape != b[k].shape]
        if wrong:
            raise ValueError(f"weights change shape between the state dicts: {wrong[:5]}")
        moved = sum(float(((b[k].double().cpu() - a[k].double().cpu()) ** 2).sum()) for k in a)
        base = sum(float((a[k].double().cpu() ** 2).sum()) for k in a)
        if base > 0:
            out[prefix] = (moved / base) ** 0.5
        else:
            out[prefix] = float("inf") if moved > 0 else 0.0
    return out
