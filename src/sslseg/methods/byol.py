"""BYOL (Grill et al. 2020): an online encoder-projector-predictor regresses an EMA target's projection of the
other view; no negatives, collapse is avoided by the predictor and the slowly moving target."""

from __future__ import annotations

import torch

from sslseg.augment.views import Views
from sslseg.losses import byol_loss
from sslseg.methods.base import MethodParams, SSLMethod
from sslseg.nn.heads import mlp


class BYOLParams(MethodParams):
    # Head sizes from the BYOL paper: projector and predictor MLPs 4096 → 256.
    proj_hidden: int = 4096
    proj_dim: int = 256
    pred_hidden: int = 4096
    # Base target momentum, raised to 1 along a cosine. The paper's 0.996 suits 1000-epoch ImageNet runs; its
    # horizon 1/(1 − τ) = 250 steps is a large share of a short biomedical run, where the target would barely
    # move from its random start. 0.99 (horizon 100 steps; the paper's ablation finds 0.9–0.999 all work)
    # lets the target follow the online network within a few thousand steps.
    momentum: float = 0.99


class BYOL(SSLMethod):
    Params = BYOLParams
    description = "non-contrastive, global: predictor regresses an EMA target's projection"

    def build(self) -> None:
        p = self.params
        self.projector = mlp(self.feature_dims[-1], p.proj_hidden, p.proj_dim)
        self.predictor = mlp(p.proj_dim, p.pred_hidden, p.proj_dim)
        self.target_encoder = self.momentum_copy(self.encoder)
        self.target_projector = self.momentum_copy(self.projector)

    def ssl_loss(self, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
        x = torch.cat(views.images)
        z = self.projector(self.pooled(x))
        p1, p2 = self.predictor(z).chunk(2)
        with torch.no_grad():
            t1, t2 = self.target_projector(self.target_encoder(x)[-1].mean(dim=(2, 3))).chunk(2)
        # Symmetrised as in the paper: each view predicts the target's projection of the other.
        return byol_loss(p1, t2) + byol_loss(p2, t1), z.chunk(2)[0]

    def after_step(self) -> None:
        m = self.scheduled_momentum(self.params.momentum)
        self.ema_update(self.encoder, self.target_encoder, m)
        self.ema_update(self.projector, self.target_projector, m)
