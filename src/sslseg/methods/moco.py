"""MoCo v2 (Chen et al. 2020): a momentum key encoder and a queue of past keys as negatives."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from sslseg.augment.views import Views
from sslseg.distributed import gather_no_grad
from sslseg.losses import info_nce
from sslseg.methods.base import MethodParams, SSLMethod
from sslseg.nn.heads import mlp


class MoCoParams(MethodParams):
    temperature: float = 0.2
    momentum: float = 0.99
    queue_size: int = Field(4096, ge=1)
    proj_hidden: int = 2048
    proj_dim: int = 128


class KeyQueue(nn.Module):
    """A ring buffer of L2-normalised keys (K×D), starting from random unit vectors as in MoCo."""

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        self.register_buffer("keys", F.normalize(torch.randn(size, dim), dim=1))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))

    def negatives(self) -> torch.Tensor:
        return self.keys.clone()  # a snapshot: push() edits the buffer before backward

    @torch.no_grad()
    def push(self, keys: torch.Tensor) -> None:
        keys = F.normalize(gather_no_grad(keys), dim=1)[: len(self.keys)]
        n, size, p = keys.shape[0], len(self.keys), int(self.ptr)
        idx = (torch.arange(n, device=keys.device) + p) % size
        self.keys[idx] = keys.to(self.keys.dtype)
        self.ptr.fill_((p + n) % size)


class MoCo(SSLMethod):
    Params = MoCoParams
    description = "contrastive, global: momentum key encoder + queue of negatives"

    def build(self) -> None:
        p = self.params
        self.projector = mlp(self.feature_dims[-1], p.proj_hidden, p.proj_dim)
        self.key_encoder = self.momentum_copy(self.encoder)
        self.key_projector = self.momentum_copy(self.projector)
        self.queue = KeyQueue(p.queue_size, p.proj_dim)

    def keys(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            return self.key_projector(self.key_encoder(x)[-1].mean(dim=(2, 3)))

    def ssl_loss(self, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
        q = self.projector(self.pooled(views.images[0]))
        k = self.keys(views.images[1])
        loss = info_nce(q, k, self.queue.negatives(), self.params.temperature)
        self.queue.push(k)
        return loss, q

    def after_step(self) -> None:
        m = self.params.momentum
        self.ema_update(self.encoder, self.key_encoder, m)
        self.ema_update(self.projector, self.key_projector, m)
