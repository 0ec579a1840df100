"""SimCLR (Chen et al. 2020): two views, a projection MLP, NT-Xent against the rest of the batch."""

from __future__ import annotations

import torch

from sslseg.augment.views import Views
from sslseg.losses import nt_xent
from sslseg.methods.base import MethodParams, SSLMethod
from sslseg.nn.heads import mlp


class SimCLRParams(MethodParams):
    temperature: float = 0.2
    proj_hidden: int = 2048
    proj_dim: int = 128


class SimCLR(SSLMethod):
    Params = SimCLRParams
    description = "contrastive, global: NT-Xent over in-batch negatives"

    def build(self) -> None:
        p = self.params
        self.projector = mlp(self.feature_dims[-1], p.proj_hidden, p.proj_dim)

    def ssl_loss(self, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat(views.images)
        z = self.projector(self.pooled(x))
        z1, z2 = z.chunk(2)
        return nt_xent(z1, z2, self.params.temperature), z1
