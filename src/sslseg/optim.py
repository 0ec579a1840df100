"""Optimisers and schedules shared by all SSL methods (one place, so every method is trained alike)."""

from __future__ import annotations

import math
from collections.abc import Callable

import timm.optim
import torch
from torch import nn

from sslseg.config import OptimConfig


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Decay weights of convolutions and linear layers only; biases and normalisation parameters are exempt."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def _lars(groups: list[dict], lr: float, momentum: float) -> torch.optim.Optimizer:
    """timm's LARS (You et al. 2017): weights get a layer-wise trust ratio even when weight decay is 0;
    biases and norms (no decay, ``always_adapt`` off) are plain SGD with momentum, as in SimCLR and BYOL."""
    groups[0]["always_adapt"] = True
    return timm.optim.Lars(groups, lr=lr, momentum=momentum)


FUSED_DEVICES = ("cpu", "cuda")  # where sslseg runs and torch has a fused AdamW kernel


def adamw(groups: list[dict], lr: float, weight_decay: float = 0.01) -> torch.optim.AdamW:
    """AdamW fused into one kernel where the parameters allow it (floating point, on the CPU or a GPU): on a
    CPU several times faster than the per-tensor loop torch picks there by default (benchmarks/
    optimizer_step.py), and the same update up to float rounding. Other parameters get torch's default."""
    params = [p for g in groups for p in g["params"]]
    fused = all(p.is_floating_point() and p.device.type in FUSED_DEVICES for p in params)
    return torch.optim.AdamW(groups, lr=lr, weight_decay=weight_decay, fused=fused or None)


# one entry per `optim.optimizer` value: (parameter groups, learning rate, momentum) -> optimiser
OPTIMIZERS: dict[str, Callable[[list[dict], float, float], torch.optim.Optimizer]] = {
    "sgd": lambda groups, lr, momentum: torch.optim.SGD(groups, lr=lr, momentum=momentum),
    "adamw": lambda groups, lr, momentum: adamw(groups, lr),
    "lars": _lars,
}


def build_optimizer(model: nn.Module, cfg: OptimConfig, batch_size: int) -> torch.optim.Optimizer:
    """The configured optimiser with the learning rate scaled linearly by the global batch size / 256."""
    lr = cfg.lr * batch_size / 256
    return OPTIMIZERS[cfg.optimizer](param_groups(model, cfg.weight_decay), lr, cfg.momentum)


def warmup_cosine(
    optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int, min_fraction: float
) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up then cosine decay to `min_fraction` of the base rate, stepped every batch."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return min_fraction + (1 - min_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def cosine_momentum(base: float, step: int, total_steps: int) -> float:
    """BYOL's target-momentum schedule: from `base` up to 1 along a cosine over training."""
    progress = min(1.0, step / max(1, total_steps))
    return 1 - (1 - base) * (math.cos(math.pi * progress) + 1) / 2
