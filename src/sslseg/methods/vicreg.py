"""VICReg (Bardes et al. 2022): invariance between views plus explicit variance and covariance
regularisation of each branch's embeddings, so no negatives, predictor or momentum encoder are needed."""

from __future__ import annotations

import torch

from sslseg.augment.views import Views
from sslseg.losses import vicreg_loss
from sslseg.methods.base import MethodParams, SSLMethod
from sslseg.nn.heads import mlp


class VICRegParams(MethodParams):
    # Loss weights λ/μ/ν = 25/25/1 and ε from the paper. Its expander is 3 layers of 8192 on
    # ResNet-50; for resnet18's 512 features we scale it to 3 × 2048.
    sim_weight: float = 25.0
    var_weight: float = 25.0
    cov_weight: float = 1.0
    eps: float = 1e-4
    expander_hidden: int = 2048
    expander_dim: int = 2048
    expander_layers: int = 3


class VICReg(SSLMethod):
    Params = VICRegParams
    description = "non-contrastive, global: invariance + variance + covariance regularisation"

    def build(self) -> None:
        p = self.params
        self.expander = mlp(
            self.feature_dims[-1], p.expander_hidden, p.expander_dim, layers=p.expander_layers
        )

    def ssl_loss(self, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        z1, z2 = self.expander(self.pooled(torch.cat(views.images))).chunk(2)
        loss = vicreg_loss(z1, z2, p.sim_weight, p.var_weight, p.cov_weight, p.eps)
        return loss, z1
