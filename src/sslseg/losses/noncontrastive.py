"""Non-contrastive losses: BYOL's prediction loss, Barlow Twins' redundancy reduction and VICReg's
variance-invariance-covariance regularisation. None needs negatives; Barlow and VICReg need batch statistics.

Under DDP the batch statistics are taken over the global batch with `gather_with_grad`, whose backward
sums every process's gradient into each slice: with DDP's averaging this is exactly the single-process
gradient of the same global-batch loss (see `sslseg.distributed`).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F

from sslseg.distributed import gather_with_grad


def byol_loss(p: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """BYOL (Grill et al. 2020): 2 − 2·cos(p, z) averaged over the batch, i.e. the squared distance of the
    L2-normalised prediction `p` and target `z` (N×D). `z` is a target: no gradient flows into it."""
    return (2 - 2 * F.cosine_similarity(p, z.detach(), dim=1)).mean()


def barlow_twins_loss(z1: torch.Tensor, z2: torch.Tensor, lambda_offdiag: float = 0.0051) -> torch.Tensor:
    """Barlow Twins (Zbontar et al. 2021): Σ_i (1 − C_ii)² + λ Σ_{i≠j} C_ij², where C (D×D) is the
    cross-correlation of the two views' embeddings (N×D), each standardised over the global batch."""
    with _full_precision(z1):
        a, b = _standardise(_global(z1)), _standardise(_global(z2))
        c = a.T @ b / a.shape[0]
        on = (1 - c.diagonal()).pow(2).sum()
        off = _off_diagonal(c).pow(2).sum()
        return on + lambda_offdiag * off


class VICRegTerms(NamedTuple):
    """VICReg's three unweighted terms; variance and covariance are summed over both branches."""

    invariance: torch.Tensor
    variance: torch.Tensor
    covariance: torch.Tensor


def vicreg_terms(z1: torch.Tensor, z2: torch.Tensor, eps: float = 1e-4) -> VICRegTerms:
    """VICReg (Bardes et al. 2022): s = MSE(z1, z2); v(Z) = mean_j max(0, 1 − sqrt(Var z_j + eps));
    c(Z) = (1/D) Σ_{i≠j} Cov(Z)_ij². Var and Cov are unbiased (1/(N−1)) over the global batch."""
    with _full_precision(z1):
        z1, z2 = z1.float(), z2.float()
        invariance = F.mse_loss(z1, z2)  # per-sample, so the local mean is already exact under DDP
        g1, g2 = _global(z1), _global(z2)
        variance = _hinge_std(g1, eps) + _hinge_std(g2, eps)
        covariance = _covariance_penalty(g1) + _covariance_penalty(g2)
        return VICRegTerms(invariance, variance, covariance)


def vicreg_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """VICReg's loss λ·s(Z, Z') + μ·[v(Z) + v(Z')] + ν·[c(Z) + c(Z')] (the paper's defaults 25/25/1)."""
    t = vicreg_terms(z1, z2, eps)
    return sim_weight * t.invariance + var_weight * t.variance + cov_weight * t.covariance


# -- pieces ---------------------------------------------------------------------------------------------------
def _global(z: torch.Tensor) -> torch.Tensor:
    """The global batch in float32 (N×D), checked to have at least two samples for batch statistics."""
    g = gather_with_grad(z.float())
    if g.shape[0] < 2:
        raise ValueError(f"batch statistics need at least 2 samples, got a global batch of {g.shape[0]}")
    return g


def _standardise(z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """Zero mean, unit (biased) variance per dimension, as the paper's affine-free batch norm does."""
    return (z - z.mean(dim=0)) / torch.sqrt(z.var(dim=0, unbiased=False) + eps)


def _hinge_std(z: torch.Tensor, eps: float) -> torch.Tensor:
    return F.relu(1 - torch.sqrt(z.var(dim=0) + eps)).mean()


def _covariance_penalty(z: torch.Tensor) -> torch.Tensor:
    z = z - z.mean(dim=0)
    cov = z.T @ z / (z.shape[0] - 1)
    return _off_diagonal(cov).pow(2).sum() / z.shape[1]


def _off_diagonal(m: torch.Tensor) -> torch.Tensor:
    """The off-diagonal entries of a square matrix, flattened."""
    return m[~torch.eye(m.shape[0], dtype=torch.bool, device=m.device)]


def _full_precision(z: torch.Tensor) -> torch.autocast:
    """Autocast off: D×D correlations and square roots of small variances are unreliable in bf16/fp16."""
    return torch.autocast(device_type=z.device.type, enabled=False)
