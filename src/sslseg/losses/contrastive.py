"""Contrastive losses: positives against in-batch or queued negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslseg.distributed import gather_with_grad, rank


def nt_xent(z1: torch.Tensor, z2: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """SimCLR's normalised-temperature cross-entropy over 2N views (the positive is in the denominator).

    Negatives are the other views of the global batch: under DDP embeddings are gathered across processes.
    """
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)  # float32 even under autocast
    a1, a2 = gather_with_grad(z1), gather_with_grad(z2)
    n = a1.shape[0]
    offset = rank() * z1.shape[0] if n != z1.shape[0] else 0
    z = torch.cat([z1, z2])  # local queries
    keys = torch.cat([a1, a2])  # global keys
    logits = z @ keys.T / temperature
    b = z1.shape[0]
    local = torch.arange(b, device=z.device) + offset
    self_idx = torch.cat([local, local + n])
    pos_idx = torch.cat([local + n, local])
    logits[torch.arange(2 * b, device=z.device), self_idx] = float("-inf")
    return F.cross_entropy(logits, pos_idx)


def info_nce(
    q: torch.Tensor, k: torch.Tensor, queue: torch.Tensor | None, temperature: float = 0.2
) -> torch.Tensor:
    """MoCo's InfoNCE: each query's positive is its key; negatives are the queue (K×D, already normalised)."""
    q, k = F.normalize(q.float(), dim=1), F.normalize(k.float(), dim=1)  # float32 even under autocast
    pos = (q * k).sum(dim=1, keepdim=True)
    neg = q @ queue.float().T if queue is not None and len(queue) else q.new_zeros(q.shape[0], 0)
    logits = torch.cat([pos, neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))
