"""Helpers for multi-process (DDP) training: gathering embeddings so contrastive losses see every negative."""

from __future__ import annotations

import torch
import torch.distributed as dist


def world_size() -> int:
    """Number of training processes (1 without DDP)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0, keeping gradients for the local slice (a no-op in one process)."""
    if world_size() == 1:
        return x
    parts = [torch.zeros_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.detach().contiguous())
    parts[dist.get_rank()] = x
    return torch.cat(parts)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """All-gather along dim 0 without gradients (keys for momentum queues)."""
    if world_size() == 1:
        return x
    parts = [torch.zeros_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)
