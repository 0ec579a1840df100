"""Helpers for multi-process (DDP) training: gathering embeddings so losses see the global batch.

`gather_with_grad` all-gathers forward and all-reduces (sums) the gradients backward, so each process
receives the gradient that every process's loss sends to its own samples. With DDP averaging parameter
gradients, a loss that is the mean over processes of per-process losses (NT-Xent over local queries and
global keys) or a global-batch statistic computed identically everywhere (Barlow Twins, VICReg) then has
exactly the gradient of the same loss on one process holding the global batch.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

from sslseg.errors import ConfigError


def world_size() -> int:
    """Number of training processes (1 without DDP)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's index (0 without DDP)."""
    return dist.get_rank() if world_size() > 1 else 0


class _GatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        dist.all_reduce(grad)
        return grad.chunk(dist.get_world_size())[dist.get_rank()]


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 with gradients flowing back to every process's slice (identity in one process).

    Every process must pass the same number of rows.
    """
    return x if world_size() == 1 else _GatherWithGrad.apply(x)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 without gradients (keys for momentum queues)."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def check_sync_batchnorm(enabled: bool, accelerator: str) -> None:
    """Fail early and clearly: torch's SyncBatchNorm only runs on GPUs, and would fail deep inside on CPU."""
    on_cpu = accelerator == "cpu" or (accelerator == "auto" and not torch.cuda.is_available())
    if enabled and on_cpu:
        raise ConfigError(
            "train.sync_batchnorm needs GPUs (torch's SyncBatchNorm does not run on CPU); "
            "turn it off for CPU processes"
        )
