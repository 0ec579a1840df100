"""The one Lightning Trainer set-up of pretraining and fine-tuning: devices, nodes, strategy, precision,
atomic checkpoints, and the checks that fail early on settings that cannot run.

Under several processes (DDP on one machine, or one task per GPU on several nodes under SLURM) every process
builds the same trainer; Lightning reads its rank from the launcher (its own subprocesses, or SLURM's
SLURM_PROCID/SLURM_LOCALID/SLURM_NODEID), and the callers let the process of global rank 0 alone write results.
"""

from __future__ import annotations

from pathlib import Path
from typing import Protocol

import lightning as L
import torch
from lightning.pytorch.loggers import Logger

from sslseg.device import cpu_has_native_bf16
from sslseg.distributed import check_sync_batchnorm
from sslseg.rundir import AtomicCheckpointIO


class TrainerSettings(Protocol):
    """What the builder reads of a run's `train` settings (PretrainTrainConfig and TrainConfig both have it)."""

    epochs: int
    accelerator: str
    devices: int | str
    num_nodes: int
    strategy: str
    precision: str
    sync_batchnorm: bool
    deterministic: bool


def resolve_precision(setting: str, accelerator: str = "auto") -> str:
    """The Lightning precision of a `train.precision` setting: 'auto' is bf16-mixed where the hardware
    computes bfloat16 natively (a GPU, or a CPU with AVX512-BF16/AMX: ~1.4x faster steps, RESULTS.md),
    else 32-true."""
    if setting != "auto":
        return setting
    on_gpu = torch.cuda.is_available() and accelerator in ("auto", "gpu", "cuda")
    return "bf16-mixed" if on_gpu or cpu_has_native_bf16() else "32-true"


def check_trainer_settings(train: TrainerSettings) -> None:
    """The checks of the trainer settings that need this machine (the config checked the rest, e.g. that
    several nodes need a distributed strategy); callers run them before any image is read."""
    check_sync_batchnorm(train.sync_batchnorm, train.accelerator)


def build_trainer(
    train: TrainerSettings,
    out: Path,
    callbacks: list[L.Callback],
    logger: Logger | list[Logger],
    progress: bool,
    log_every_n_steps: int,
) -> L.Trainer:
    """The Lightning Trainer of a run from its `train` settings: checkpoints written atomically, no sanity
    validation, no model summary; `callbacks` and `logger` are the caller's (who ran
    `check_trainer_settings` first)."""
    return L.Trainer(
        max_epochs=train.epochs,
        accelerator=train.accelerator,
        devices=train.devices,
        num_nodes=train.num_nodes,
        strategy=train.strategy,
        precision=resolve_precision(train.precision, train.accelerator),
        sync_batchnorm=train.sync_batchnorm,
        deterministic=train.deterministic,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],
        logger=logger,
        default_root_dir=out,
        enable_progress_bar=progress,
        enable_model_summary=False,
        log_every_n_steps=log_every_n_steps,
        num_sanity_val_steps=0,
    )
