"""PixPro (Xie et al. 2021): pixel-to-propagation consistency. Online pixel features, smoothed over similar
pixels by a propagation module, must agree with a momentum target's features of the pixels at the same
base-image place in the other view."""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from sslseg.augment.views import Views
from sslseg.losses.dense import hypercolumn, locations, pixel_consistency, pixpro_positives, propagate
from sslseg.methods.base import MethodParams, SSLMethod
from sslseg.nn.heads import conv_mlp


class PixProParams(MethodParams):
    # PixPro paper: projector 2048 → 256 (1×1 convs), PPM with γ = 2 and a one-layer transform, positives
    # closer than 0.7 feature-cell diagonals, target momentum 0.99 raised to 1 along a cosine.
    proj_hidden: int = 2048
    proj_dim: int = 256
    gamma: float = Field(2.0, gt=0, description="sharpness of the propagation similarity")
    threshold: float = Field(0.7, gt=0, description="positives: closer than this × the cell diagonal")
    momentum: float = 0.99
    # The paper matches on C5, a 7×7 grid of its 224-px views; on 96-px views C5 is 3×3, so we match on the
    # stride-16 grid (6×6) and concatenate the upsampled C5 so that the deepest stage is trained too.
    stage: int = Field(
        4, ge=2, le=5, description="matching grid: stride 2**stage (deeper stages concatenated)"
    )


class PixPro(SSLMethod):
    Params = PixProParams
    description = "dense, non-contrastive: propagated pixels agree with a momentum target at the same place"

    def build(self) -> None:
        p = self.params
        self.projector = conv_mlp(sum(self.feature_dims[p.stage :]), p.proj_hidden, p.proj_dim)
        self.ppm_transform = nn.Linear(p.proj_dim, p.proj_dim)  # g(·) of the PPM, one linear layer
        self.target_encoder = self.momentum_copy(self.encoder)
        self.target_projector = self.momentum_copy(self.projector)

    def ssl_loss(self, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        x = torch.cat(views.images)
        z = self.projector(hypercolumn(self.encoder(x), p.stage))
        h, w = z.shape[-2:]
        z = locations(z)
        y1, y2 = propagate(z, self.ppm_transform(z), p.gamma).chunk(2)
        with torch.no_grad():
            t1, t2 = locations(self.target_projector(hypercolumn(self.target_encoder(x), p.stage))).chunk(2)
        pos = pixpro_positives(
            views.boxes[0], views.flips[0], views.boxes[1], views.flips[1], h, w, p.threshold
        )
        # symmetrised as in the paper: each view's propagated pixels against the other view's target
        loss = pixel_consistency(y1, t2, pos) + pixel_consistency(y2, t1, pos.transpose(1, 2))
        return loss, z.chunk(2)[0].mean(dim=1)

    def after_step(self) -> None:
        m = self.scheduled_momentum(self.params.momentum)
        self.ema_update(self.encoder, self.target_encoder, m)
        self.ema_update(self.projector, self.target_projector, m)
