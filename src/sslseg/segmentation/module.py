"""The Lightning module that fine-tunes a U-Net for semantic or instance segmentation."""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterator
from typing import Any

import lightning as L
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from sslseg.augment.segmentation import augment_batch, cutmix, photometric, random_d4
from sslseg.config import FinetuneConfig
from sslseg.data.datasets import LoadedSample
from sslseg.errors import TrainingDiverged
from sslseg.nn.unet import build_unet, encoder_of, freeze
from sslseg.optim import adamw, warmup_cosine
from sslseg.segmentation.engines import NetworkRunner
from sslseg.segmentation.inference import predict_probabilities, probabilities_to_labels
from sslseg.segmentation.tasks import Task, task_named
from sslseg.weights import decoder_beside, load_decoder, load_encoder


def score_labels(pred: Any, labels: Any, cfg: FinetuneConfig) -> dict[str, float]:
    """The task's metrics of one prediction against native-resolution labels."""
    return task_named(cfg.data.task).scores(pred, labels, cfg)


class ValidationImages(Dataset):
    """Whole validation images, one per step, scored at native resolution like the test set."""

    def __init__(self, samples: list[LoadedSample]) -> None:
        self.samples = samples

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> int:
        return index


class SegmentationModule(L.LightningModule):
    """U-Net + task loss; validation runs the full inference path and logs `val/score`."""

    def __init__(self, config: dict[str, Any], in_channels: int, load_init: bool = True) -> None:
        super().__init__()
        self.save_hyperparameters()
        self.cfg = FinetuneConfig.model_validate(config)
        self.task: Task = task_named(self.cfg.data.task)
        m = self.cfg.model
        self.net = build_unet(
            m.encoder,
            in_channels,
            self.task.output_channels(self.cfg),
            m.decoder_channels,
            imagenet=load_init and m.init == "imagenet",
        )
        self.decoder_init: str | None = None  # the pretrained decoder loaded with the encoder, if any
        if load_init and m.init not in ("random", "imagenet"):
            encoder_meta = load_encoder(encoder_of(self.net), m.init, m.encoder, in_channels)
            pretrained_bright = bool(encoder_meta.get("bright_objects", False))
            if pretrained_bright != self.cfg.data.bright_objects:
                warnings.warn(
                    f"{m.init} was pretrained with data.bright_objects={pretrained_bright} but fine-tuning "
                    f"uses {self.cfg.data.bright_objects}: the encoder will see some images inverted from how "
                    "it learned them",
                    stacklevel=2,
                )
            decoder = decoder_beside(m.init)
            if decoder is not None:
                load_decoder(
                    self.net.decoder, decoder, m.encoder, in_channels, m.decoder_channels, encoder_meta
                )
                self.decoder_init = str(decoder)
        if m.frozen:
            freeze(encoder_of(self.net))
        self.val_samples: list[LoadedSample] = []
        # semi-supervised fine-tuning (cfg.semi): batches of unlabeled crops, and the mean teacher, kept out
        # of the module's state (a list hides it from state_dict) so checkpoints hold the student alone
        self.unlabeled_loader: DataLoader | None = None
        self._unlabeled: Iterator[torch.Tensor] | None = None
        self._rampup_steps: float | None = None  # steps over which the unlabeled weight rises, set once
        self._teacher: list[torch.nn.Module] = []

    def train(self, mode: bool = True) -> SegmentationModule:
        super().train(mode)
        if self.cfg.model.frozen:
            encoder_of(self.net).eval()  # frozen means BatchNorm statistics frozen too
        return self

    def probabilities(
        self, image: np.ndarray, native_shape: tuple[int, int], runner: NetworkRunner | None = None
    ) -> torch.Tensor:
        """Class/instance maps at `native_shape` for one prepared C×H×W image, by the checkpoint's own
        inference settings (tiling, test-time augmentation, object-size rescaling); `runner` runs the
        network by another engine (`sslseg.segmentation.engines`), default PyTorch."""
        cfg = self.cfg
        return predict_probabilities(
            runner if runner is not None else self.net,
            image,
            self.task,
            native_shape,
            cfg.inference,
            cfg.data.measured_object_size,  # with object_size_um the image comes at its working scale
            cfg.model.instance_head,
        )

    def segment(
        self, image: np.ndarray, native_shape: tuple[int, int], runner: NetworkRunner | None = None
    ) -> np.ndarray:
        """The label map of one prepared image: `probabilities` (by `runner`, default PyTorch), then the
        checkpoint's post-processing."""
        cfg = self.cfg
        probs = self.probabilities(image, native_shape, runner)
        return probabilities_to_labels(probs, self.task, cfg.postprocess, cfg.model.instance_head)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def loss(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """The task's loss: Dice + cross-entropy (semantic) or the instance head's loss, in float32 even
        under bf16 autocast (its sums over many pixels need the mantissa)."""
        return self.task.loss(logits.float(), target, self.cfg)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> torch.Tensor:
        train = self.cfg.train
        images, targets = augment_batch(
            *batch, gamma=train.gamma_jitter, shuffle_channels=train.shuffle_channels
        )
        if train.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        loss = self.loss(self(images), targets)
        if self.cfg.semi.enabled and self.unlabeled_loader is not None:
            loss = loss + self._unlabeled_loss(images.shape[0])
        if not torch.isfinite(loss):
            raise TrainingDiverged(
                f"training loss became {loss.item()} at step {self.global_step}; the last good checkpoint "
                "is kept. Lower train.lr or check the input images for NaN/inf values"
            )
        self.log("train/loss", loss, prog_bar=True, batch_size=images.shape[0])
        return loss

    def _next_unlabeled(self) -> torch.Tensor:
        assert self.unlabeled_loader is not None
        if self._unlabeled is not None:
            batch = next(self._unlabeled, None)
            if batch is not None:
                return batch
        self._unlabeled = iter(self.unlabeled_loader)  # not started yet, or exhausted
        return next(self._unlabeled)

    def teacher(self) -> torch.nn.Module:
        """The mean teacher: an EMA of the student's weights, started from the student (also on resume)."""
        if not self._teacher:
            teacher = copy.deepcopy(self.net).eval()
            teacher.requires_grad_(False)
            self._teacher.append(teacher)
        return self._teacher[0]

    def _unlabeled_loss(self, batch_size: int) -> torch.Tensor:
        """The consistency loss on one batch of unlabeled crops, ramped up over `semi.rampup` of the run."""
        semi = self.cfg.semi
        weak, _ = random_d4(self._next_unlabeled().to(self.device, torch.float32))
        with torch.no_grad():
            teacher_probs = self.task.activate(self.teacher()(weak))
        if semi.cutmix:  # the teacher labels whole crops; the student sees them mixed
            weak, teacher_probs = cutmix(weak, teacher_probs)
        strong = photometric(weak, semi.strong_intensity, semi.strong_noise, semi.strong_gamma)
        student = self(strong).float()  # float32 consistency, as the supervised loss
        loss, used = self.task.consistency(student, teacher_probs.float(), self.cfg)
        if self._rampup_steps is None:  # the trainer's step estimate is not free: read it once
            self._rampup_steps = max(semi.rampup * int(self.trainer.estimated_stepping_batches), 1.0)
        ramp = min(1.0, self.global_step / self._rampup_steps)
        self.log("train/unlabeled_loss", loss, batch_size=batch_size)
        self.log("train/confident_share", used, batch_size=batch_size)
        return semi.weight * ramp * loss

    def on_fit_start(self) -> None:
        if self.cfg.train.channels_last:  # NHWC convolutions: faster on recent CPUs and tensor-core GPUs
            self.net.to(memory_format=torch.channels_last)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if not (self.cfg.semi.enabled and self._teacher):
            return
        decay = self.cfg.semi.ema_decay
        with torch.no_grad():
            teacher = self._teacher[0]
            for t, s in zip(teacher.parameters(), self.net.parameters(), strict=True):
                t.lerp_(s.detach(), 1.0 - decay)
            for t, s in zip(teacher.buffers(), self.net.buffers(), strict=True):
                t.copy_(s)

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        s = self.val_samples[int(batch[0])]
        scores = score_labels(self.segment(s.image, s.native_shape), s.labels, self.cfg)
        # under DDP each process scores its share of the images: the epoch's score is the mean over all
        self.log(
            "val/score",
            scores[self.task.primary_metric],
            prog_bar=True,
            batch_size=1,
            sync_dist=True,
        )

    def configure_optimizers(self) -> Any:
        lr = self.cfg.train.lr
        encoder = [p for p in encoder_of(self.net).parameters() if p.requires_grad]
        ids = {id(p) for p in encoder}
        rest = [p for p in self.parameters() if p.requires_grad and id(p) not in ids]
        groups = [{"params": rest, "lr": lr}]
        if encoder:  # a frozen encoder has nothing to optimise
            groups.append({"params": encoder, "lr": lr * self.cfg.train.encoder_lr_scale})
        opt = adamw(groups, lr=lr, weight_decay=self.cfg.train.weight_decay)
        # optimiser steps of the whole run: under DDP each process takes its share of an epoch's crops
        total = int(self.trainer.estimated_stepping_batches)
        # one factor for every group, so the encoder keeps its scale; ends at 1e-6 for the default lr
        sched = warmup_cosine(opt, max(min(total // 20, 200), 1), total, min_fraction=1e-3)
        return {"optimizer": opt, "lr_scheduler": {"scheduler": sched, "interval": "step"}}
