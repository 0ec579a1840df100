"""Barlow Twins (Zbontar et al. 2021): drive the cross-correlation of two views' embeddings to the identity,
making them invariant to augmentation and their dimensions non-redundant."""

from __future__ import annotations

import torch

from sslseg.augment.views import Views
from sslseg.losses import barlow_twins_loss
from sslseg.methods.base import MethodParams, SSLMethod
from sslseg.nn.heads import mlp


class BarlowTwinsParams(MethodParams):
    # λ ≈ 5·10⁻³ from the paper (0.0051 in its released setting). Its projector is 3 layers of 8192 on ResNet-50's 2048 features; for
    # resnet18's 512 features (and the small batches of biomedical data) we scale it to 3 × 2048.
    lambda_offdiag: float = 0.0051
    proj_hidden: int = 2048
    proj_dim: int = 2048
    proj_layers: int = 3


class BarlowTwins(SSLMethod):
    Params = BarlowTwinsParams
    description = "non-contrastive, global: cross-correlation of the two views pushed to the identity"

    def build(self) -> None:
        p = self.params
        self.projector = mlp(self.feature_dims[-1], p.proj_hidden, p.proj_dim, layers=p.proj_layers)

    def ssl_loss(self, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
        z1, z2 = self.projector(self.pooled(torch.cat(views.images))).chunk(2)
        return barlow_twins_loss(z1, z2, self.params.lambda_offdiag), z1
