"""Projection, prediction and dense heads shared by the SSL methods."""

from __future__ import annotations

from torch import nn


def mlp(in_dim: int, hidden: int, out: int, layers: int = 2, last_bn: bool = False) -> nn.Sequential:
    """Linear-BN-ReLU blocks then a final linear layer (optionally BN without affine, as in BYOL/SimSiam)."""
    mods: list[nn.Module] = []
    dim = in_dim
    for _ in range(layers - 1):
        mods += [nn.Linear(dim, hidden, bias=False), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True)]
        dim = hidden
    mods.append(nn.Linear(dim, out, bias=not last_bn))
    if last_bn:
        mods.append(nn.BatchNorm1d(out, affine=False))
    return nn.Sequential(*mods)


def conv_mlp(in_dim: int, hidden: int, out: int) -> nn.Sequential:
    """A per-location MLP (1×1 convolutions) for dense, pixel-level embeddings."""
    return nn.Sequential(
        nn.Conv2d(in_dim, hidden, 1, bias=False),
        nn.BatchNorm2d(hidden),
        nn.ReLU(inplace=True),
        nn.Conv2d(hidden, out, 1),
    )
