"""DetCo (Xie et al. 2021): MoCo at the four deepest encoder stages, contrasting whole views and 3×3 jigsaws
of them (global-global, local-local and local-to-global), the stage losses weighted shallow to deep."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pydantic import Field, field_validator
from torch import nn

from sslseg.augment.views import Views
from sslseg.losses import info_nce
from sslseg.methods.base import MethodParams, SSLMethod
from sslseg.methods.moco import KeyQueue
from sslseg.nn.heads import mlp

GRID = 3  # the jigsaw is 3×3 tiles


class DetCoParams(MethodParams):
    """Defaults from DetCo (Xie et al. 2021) unless noted; it builds on MoCo v2 (Chen et al. 2020)."""

    temperature: float = Field(0.2, gt=0)  # MoCo v2's 0.2
    momentum: float = Field(0.99, ge=0, lt=1)  # paper 0.999; 0.99 suits our far shorter runs (as MoCo here)
    queue_size: int = Field(4096, ge=1)  # paper 65536; our datasets hold hundreds to thousands of images
    proj_hidden: int = Field(2048, ge=1)
    proj_dim: int = Field(128, ge=1)
    stage_weights: list[float] = [0.1, 0.4, 0.7, 1.0]  # stride 4, 8, 16, 32 (the paper's res2…res5)
    # tile side as a fraction of the view side: the paper's 64-px tiles from 256-px images
    tile_fraction: float = Field(0.25, gt=0, le=1 / GRID)

    @field_validator("stage_weights")
    @classmethod
    def _four_weights(cls, w: list[float]) -> list[float]:
        if len(w) != 4:
            raise ValueError(f"needs 4 weights, one per stage (stride 4, 8, 16, 32), got {len(w)}")
        if any(x < 0 for x in w) or not any(x > 0 for x in w):
            raise ValueError("weights must be >= 0 with at least one > 0")
        return w


def jigsaw(x: torch.Tensor, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Resize B×C×H×W images to 3·tile, cut them into 9 tiles and shuffle each image's tiles independently.

    Returns tiles B×9×C×tile×tile and perm B×9: tile j of image b is grid cell perm[b, j] (row-major).
    """
    b, c = x.shape[:2]
    side = GRID * tile
    if x.shape[-2:] != (side, side):
        x = F.interpolate(x, size=(side, side), mode="bilinear", align_corners=False, antialias=True)
    grid = (
        x.reshape(b, c, GRID, tile, GRID, tile).permute(0, 2, 4, 1, 3, 5).reshape(b, GRID**2, c, tile, tile)
    )
    perm = torch.rand(b, GRID**2, device=x.device).argsort(dim=1)
    return grid[torch.arange(b, device=x.device)[:, None], perm], perm


class DetCo(SSLMethod):
    Params = DetCoParams
    description = "contrastive, multi-level: global + 3×3-jigsaw MoCo at the 4 deepest stages"

    def build(self) -> None:
        p = self.params
        # (index into the encoder's feature list, name, weight) of the active stages; -4 … -1 = stride 4 … 32
        self.stages = [
            (i, f"stride{2 ** (len(self.feature_dims) + i)}", w)
            for i, w in zip(range(-4, 0), p.stage_weights, strict=True)
            if w > 0
        ]
        heads: dict[str, nn.Module] = {}
        self.queues = nn.ModuleDict()
        for i, name, _ in self.stages:
            c = self.feature_dims[i]
            heads[f"{name}_global"] = mlp(c, p.proj_hidden, p.proj_dim)
            heads[f"{name}_local"] = mlp(GRID**2 * c, p.proj_hidden, p.proj_dim)
            for kind in ("global", "local"):
                self.queues[f"{name}_{kind}"] = KeyQueue(p.queue_size, p.proj_dim)
        self.heads = nn.ModuleDict(heads)
        self.key_encoder = self.momentum_copy(self.encoder)
        self.key_heads = self.momentum_copy(self.heads)
        self.terms: dict[str, torch.Tensor] = {}

    def embed(self, encoder: nn.Module, heads: nn.ModuleDict, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Global and jigsaw embeddings of views x at every active stage."""
        b = x.shape[0]
        tiles, _ = jigsaw(x, max(2, round(self.params.tile_fraction * x.shape[-1])))
        whole, local = encoder(x), encoder(tiles.flatten(0, 1))
        out = {}
        for i, name, _ in self.stages:
            out[f"{name}_global"] = heads[f"{name}_global"](whole[i].mean(dim=(2, 3)))
            # the 9 pooled tile features side by side, in shuffled order
            out[f"{name}_local"] = heads[f"{name}_local"](local[i].mean(dim=(2, 3)).reshape(b, -1))
        return out

    def ssl_loss(self, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        q = self.embed(self.encoder, self.heads, views.images[0])
        with torch.no_grad():
            k = self.embed(self.key_encoder, self.key_heads, views.images[1])
        neg = {n: queue.negatives() for n, queue in self.queues.items()}
        terms, weighted = {}, []
        for _, name, w in self.stages:
            g, lo = f"{name}_global", f"{name}_local"
            stage = {
                f"{name}/g2g": info_nce(q[g], k[g], neg[g], p.temperature),
                f"{name}/l2l": info_nce(q[lo], k[lo], neg[lo], p.temperature),
                f"{name}/l2g": info_nce(q[lo], k[g], neg[g], p.temperature),
            }
            weighted.append(w * sum(stage.values()))
            terms.update(stage)
        for n, queue in self.queues.items():
            queue.push(k[n])
        self.terms = {n: t.detach() for n, t in terms.items()}
        if self._trainer is not None:
            self.log_dict(
                {f"train/{n}": t for n, t in self.terms.items()}, batch_size=views.images[0].shape[0]
            )
        deepest = self.stages[-1][1]  # the collapse monitor watches the deepest active global embedding
        return torch.stack(weighted).sum(), q[f"{deepest}_global"]

    def after_step(self) -> None:
        m = self.params.momentum
        self.ema_update(self.encoder, self.key_encoder, m)
        self.ema_update(self.heads, self.key_heads, m)
