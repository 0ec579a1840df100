"""DenseCL (Wang et al. 2021): MoCo v2 plus a dense branch. A 1×1-conv head embeds every location of a
feature map; each query location's positive is the key-view location whose backbone feature is most similar,
its negatives a separate queue of pooled dense keys of other images."""

from __future__ import annotations

import torch
from pydantic import Field

from sslseg.augment.views import Views
from sslseg.losses import info_nce
from sslseg.losses.dense import densecl_dense_loss, hypercolumn, locations
from sslseg.methods.moco import KeyQueue, MoCo, MoCoParams
from sslseg.nn.heads import conv_mlp


class DenseCLParams(MoCoParams):
    # DenseCL paper: MoCo v2's global branch (T = 0.2, 128-d embeddings), a dense head 2048 → 128 on C5 and
    # λ = 0.5 between the global and dense losses. Its queues hold 65536 keys; ours default to MoCo's 4096.
    # Momentum: the paper's 0.999 averages the key encoder over ~1000 steps, a large share of a short
    # biomedical run, so the keys would come from a near-random network for most of it; 0.99 (~100 steps)
    # lets the key encoder follow the query encoder within a few thousand steps.
    momentum: float = 0.99
    dense_weight: float = Field(0.5, ge=0, le=1, description="λ: loss = (1 − λ)·global + λ·dense")
    dense_hidden: int = 2048
    dense_dim: int = 128
    stage: int = Field(
        5,
        ge=2,
        le=5,
        description="encoder stage of the dense head and matching (stride 2**stage; 5 = deepest, the "
        "paper's C5); deeper stages are upsampled and concatenated. 4 gives a finer grid on small views",
    )


class DenseCL(MoCo):
    Params = DenseCLParams
    description = (
        "contrastive, dense: MoCo v2 + per-location InfoNCE, positives matched by feature similarity"
    )

    def build(self) -> None:
        super().build()
        p = self.params
        self.dense_head = conv_mlp(sum(self.feature_dims[p.stage :]), p.dense_hidden, p.dense_dim)
        self.key_dense_head = self.momentum_copy(self.dense_head)
        self.dense_queue = KeyQueue(p.queue_size, p.dense_dim)

    def ssl_loss(self, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        fq = self.encoder(views.images[0])
        hq = hypercolumn(fq, p.stage)
        q = self.projector(fq[-1].mean(dim=(2, 3)))
        rq = self.dense_head(hq)
        with torch.no_grad():
            fk = self.key_encoder(views.images[1])
            hk = hypercolumn(fk, p.stage)
            k = self.key_projector(fk[-1].mean(dim=(2, 3)))
            rk = self.key_dense_head(hk)
        global_loss = info_nce(q, k, self.queue.negatives(), p.temperature)
        # correspondence from the backbone features of the two views, as the paper extracts it
        dense_loss = densecl_dense_loss(
            locations(rq),
            locations(rk),
            locations(hq.detach()),
            locations(hk),
            self.dense_queue.negatives(),
            p.temperature,
        )
        self.queue.push(k)
        self.dense_queue.push(rk.mean(dim=(2, 3)))
        return (1 - p.dense_weight) * global_loss + p.dense_weight * dense_loss, q

    def after_step(self) -> None:
        super().after_step()
        self.ema_update(self.dense_head, self.key_dense_head, self.params.momentum)
