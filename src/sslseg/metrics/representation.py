"""Measures of learned representations: collapse diagnostics for SSL embeddings."""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
