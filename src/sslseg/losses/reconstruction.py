"""Reconstruction losses for masked image modelling: MAE's per-patch normalised pixel targets and a squared
error counted only on the masked pixels."""

from __future__ import annotations

import torch


def patch_normalise(x: torch.Tensor, patch: int, eps: float) -> torch.Tensor:
    """Each patch×patch tile of B×C×H×W shifted to zero mean and scaled by sqrt(var + eps), the statistics
    taken over its pixels and channels together (MAE's norm_pix target, population variance)."""
    b, c, h, w = x.shape
    if h % patch or w % patch:
        raise ValueError(f"image {h}×{w} is not a whole number of {patch}×{patch} patches")
    tiles = x.reshape(b, c, h // patch, patch, w // patch, patch)
    mean = tiles.mean(dim=(1, 3, 5), keepdim=True)
    var = tiles.var(dim=(1, 3, 5), keepdim=True, unbiased=False)
    return ((tiles - mean) / (var + eps).sqrt()).reshape(b, c, h, w)


def masked_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked pixels only (mask B×1×H×W bool, all channels); 0 if none is masked.

    Unmasked pixels take no part, not even as NaN/inf: their prediction is free.
    """
    # select before squaring so a NaN at an unmasked pixel cannot reach the gradient either
    diff = torch.where(mask, pred - target, torch.zeros((), dtype=pred.dtype, device=pred.device))
    count = mask.sum() * pred.shape[1]
    return diff.square().sum() / count.clamp_min(1)
