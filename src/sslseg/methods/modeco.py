"""MoDeCo (the reference toolbox's multi-level MoCo): a MoCo term at every U-Net skip level of the encoder
(1×1-conv head, then global pooling) plus the usual global term, each with its own queue."""

from __future__ import annotations

import torch
from pydantic import Field, field_validator
from torch import nn

from sslseg.augment.views import Views
from sslseg.losses import info_nce
from sslseg.methods.base import MethodParams, SSLMethod
from sslseg.methods.moco import KeyQueue
from sslseg.nn.heads import conv_mlp, mlp

# the order of `level_weights`, as in the reference (global, layer4, layer3, layer2, layer1, stem)
TERMS = ("global", "stride32", "stride16", "stride8", "stride4", "stride2")


class MoDeCoParams(MethodParams):
    """Weights from the reference's MoDeCo; temperature, momentum and queue as MoCo v2 here (Chen et al. 2020)."""

    temperature: float = Field(0.2, gt=0)  # reference 0.07 (MoCo v1); MoCo v2's 0.2
    momentum: float = Field(0.99, ge=0, lt=1)  # reference 0.999; 0.99 suits our short runs (as MoCo here)
    queue_size: int = Field(4096, ge=1)
    proj_hidden: int = Field(2048, ge=1)  # global MLP; each level's 1×1-conv head keeps its own width
    proj_dim: int = Field(128, ge=1)
    # order: global, stride 32, 16, 8, 4, 2 (reference: global, layer4, layer3, layer2, layer1, stem)
    level_weights: list[float] = [1.0, 0.1, 0.1, 0.4, 0.7, 1.0]

    @field_validator("level_weights")
    @classmethod
    def _six_weights(cls, w: list[float]) -> list[float]:
        if len(w) != len(TERMS):
            raise ValueError(f"needs {len(TERMS)} weights, in the order {', '.join(TERMS)}; got {len(w)}")
        if any(x < 0 for x in w) or not any(x > 0 for x in w):
            raise ValueError("weights must be >= 0 with at least one > 0")
        return w


class MoDeCo(SSLMethod):
    Params = MoDeCoParams
    description = "contrastive, multi-level: MoCo at every U-Net skip level + global (reference's MoDeCo)"

    def build(self) -> None:
        p = self.params
        dims = self.feature_dims
        # feature-list index of each term (-1 … -5 = stride 32 … 2); the global term also reads the deepest
        index = dict(zip(TERMS, [-1, -1, -2, -3, -4, -5], strict=True))
        self.terms_on = [(n, index[n], w) for n, w in zip(TERMS, p.level_weights, strict=True) if w > 0]
        heads: dict[str, nn.Module] = {}
        for name, i, _ in self.terms_on:
            c = dims[i]
            heads[name] = (
                mlp(c, p.proj_hidden, p.proj_dim) if name == "global" else conv_mlp(c, c, p.proj_dim)
            )
        self.heads = nn.ModuleDict(heads)
        self.queues = nn.ModuleDict({n: KeyQueue(p.queue_size, p.proj_dim) for n, _, _ in self.terms_on})
        self.key_encoder = self.momentum_copy(self.encoder)
        self.key_heads = self.momentum_copy(self.heads)
        self.terms: dict[str, torch.Tensor] = {}

    def embed(self, encoder: nn.Module, heads: nn.ModuleDict, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """One pooled embedding per active term."""
        feats = encoder(x)
        out = {}
        for name, i, _ in self.terms_on:
            if name == "global":
                out[name] = heads[name](feats[i].mean(dim=(2, 3)))
            else:  # per-location head, then pooled: one vector per image and level
                out[name] = heads[name](feats[i]).mean(dim=(2, 3))
        return out

    def ssl_loss(self, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        q = self.embed(self.encoder, self.heads, views.images[0])
        with torch.no_grad():
            k = self.embed(self.key_encoder, self.key_heads, views.images[1])
        terms = {n: info_nce(q[n], k[n], self.queues[n].negatives(), p.temperature) for n in q}
        for n, queue in self.queues.items():
            queue.push(k[n])
        self.terms = {n: t.detach() for n, t in terms.items()}
        if self._trainer is not None:
            self.log_dict(
                {f"train/{n}": t for n, t in self.terms.items()}, batch_size=views.images[0].shape[0]
            )
        loss = torch.stack([w * terms[n] for n, _, w in self.terms_on]).sum()
        return loss, q[self.terms_on[0][0]]

    def after_step(self) -> None:
        m = self.params.momentum
        self.ema_update(self.encoder, self.key_encoder, m)
        self.ema_update(self.heads, self.key_heads, m)
