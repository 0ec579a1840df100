"""What every SSL method shares: the encoder the U-Net will use, batched views, the common optimiser and
schedule, momentum-encoder helpers, divergence checks and the collapse monitor. A method only adds its
heads (`build`) and its loss (`ssl_loss`)."""

from __future__ import annotations

import copy
import warnings
from typing import Any, ClassVar

import lightning as L
import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from sslseg.augment.views import ViewMaker, Views
from sslseg.config import PretrainConfig, load_config
from sslseg.distributed import world_size
from sslseg.errors import TrainingDiverged
from sslseg.metrics.embeddings import effective_rank, embedding_std
from sslseg.nn.unet import build_encoder
from sslseg.optim import build_optimizer, cosine_momentum, warmup_cosine


class MethodParams(BaseModel):
    """Base of each method's own settings (temperatures, queue sizes, …); unknown keys are errors."""

    model_config = ConfigDict(extra="forbid")


class SSLMethod(L.LightningModule):
    """Base class: subclasses set `Params`, implement `build` and `ssl_loss`, and may override `after_step`."""

    Params: ClassVar[type[MethodParams]] = MethodParams
    n_views: ClassVar[int] = 2
    description: ClassVar[str] = ""
    # optimiser settings a method's paper prescribes (e.g. AdamW for masked modelling); the user's own
    # settings in `optim` still win. Everything else shares one optimiser and schedule.
    optim_defaults: ClassVar[dict[str, Any]] = {}

    def __init__(self, config: dict[str, Any], in_channels: int) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg = PretrainConfig.model_validate(config)
        self.params = load_config(
            self.Params, overrides=self.cfg.params, source=f"params of {self.cfg.method}"
        )
        self.in_channels = in_channels
        self.encoder = build_encoder(self.cfg.encoder, in_channels)
        self.view_maker = ViewMaker(self.cfg.views, in_channels)
        self.feature_dims: list[int] = list(self.encoder.out_channels)
        self._monitor: torch.Tensor | None = None
        self.build()

    # -- to implement -------------------------------------------------------------------------------------
    def build(self) -> None:
        """Create heads, momentum copies and queues."""

    def ssl_loss(self, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss of one batch of views, and embeddings (N×D) for the collapse monitor."""
        raise NotImplementedError

    def after_step(self) -> None:
        """Called after every optimiser step (momentum updates)."""

    def extra_weights(self) -> dict[str, nn.Module]:
        """Modules besides the encoder worth saving for fine-tuning, e.g. {"decoder": ...} (default none)."""
        return {}

    # -- shared helpers -------------------------------------------------------------------------------
    def pooled(self, x: torch.Tensor) -> torch.Tensor:
        """Global-average-pooled deepest encoder feature (N×C)."""
        return self.encoder(x)[-1].mean(dim=(2, 3))

    def momentum_copy(self, module: nn.Module) -> nn.Module:
        """A frozen copy of `module` to be updated as an exponential moving average."""
        target = copy.deepcopy(module)
        target.requires_grad_(False)
        return target

    @torch.no_grad()
    def ema_update(self, online: nn.Module, target: nn.Module, momentum: float) -> None:
        """target ← momentum · target + (1 − momentum) · online (parameters and buffers)."""
        for po, pt in zip(online.parameters(), target.parameters(), strict=True):
            pt.mul_(momentum).add_(po.detach(), alpha=1 - momentum)
        for bo, bt in zip(online.buffers(), target.buffers(), strict=True):
            bt.copy_(bo)

    def scheduled_momentum(self, base: float) -> float:
        """Momentum rising from `base` to 1 over the run (cosine), as BYOL/MoCo v3 schedule it."""
        total = self.trainer.estimated_stepping_batches if self._trainer is not None else 1
        return cosine_momentum(base, self.global_step, int(total))

    # -- Lightning ------------------------------------------------------------------------------------
    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        views = self.view_maker(batch, self.n_views)
        if self.cfg.train.channels_last:
            views.images = [v.contiguous(memory_format=torch.channels_last) for v in views.images]
        loss, embeddings = self.ssl_loss(views)
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"{self.cfg.method}: loss became {loss.item()} at step {self.global_step}; the last good "
                "checkpoint is kept. Lower optim.lr or check the images for NaN/inf values"
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=batch.shape[0])
        self._monitor = embeddings.detach()
        return loss

    def on_fit_start(self) -> None:
        if self.cfg.train.channels_last:  # NHWC convolutions: faster on recent CPUs and tensor-core GPUs
            self.to(memory_format=torch.channels_last)
        if self.cfg.train.compile:  # in place: parameter names, hence checkpoints and weights, stay the same
            self.encoder.compile(backend=self.cfg.train.compile_backend)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        self.after_step()

    def on_train_epoch_end(self) -> None:
        """Log embedding spread and effective rank; warn when they suggest collapse."""
        z = self._monitor
        if z is None or z.shape[0] < 2:
            return
        std, rank = embedding_std(z), effective_rank(z)
        self.log_dict({"monitor/embedding_std": std, "monitor/effective_rank": rank})
        dim = z.shape[1]
        if std < 0.2 / dim**0.5 or rank < 1.5:
            warnings.warn(
                f"{self.cfg.method}: embeddings look collapsed at epoch {self.current_epoch} "
                f"(per-dimension std {std:.4f}, healthy ≈ {1 / dim**0.5:.4f}; effective rank {rank:.1f}). "
                "Try a lower learning rate, a larger batch or stronger augmentation.",
                stacklevel=1,
            )

    def configure_optimizers(self) -> Any:
        global_batch = self.cfg.train.batch_size * world_size()
        opt = build_optimizer(self, self.cfg.optim, global_batch)
        total = int(self.trainer.estimated_stepping_batches)
        steps_per_epoch = max(1, total // max(1, self.trainer.max_epochs or 1))
        warmup = min(int(self.cfg.optim.warmup_epochs * steps_per_epoch), total // 2)
        sched = warmup_cosine(opt, max(warmup, 1), total, self.cfg.optim.min_lr_fraction)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
