"""Pretrain a segmentation encoder with a self-supervised method on unlabeled images.

Outputs: Lightning checkpoints (last, for --resume), `encoder.safetensors` with its JSON sidecar (what
`sslseg finetune --init` loads), the resolved config and the logs fine-tuning writes too (CSV; TensorBoard
and MLflow when installed, see `sslseg.rundir.run_loggers`).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import DataLoader

import sslseg
from sslseg.atomic import write_json, write_text
from sslseg.config import PretrainConfig, load_config, to_yaml
from sslseg.data.datasets import RandomBaseCrops, load_unlabeled, read_images
from sslseg.data.heldout import drop_heldout, heldout_index
from sslseg.data.layouts import find_samples
from sslseg.data.splits import load_split
from sslseg.errors import ConfigError
from sslseg.methods import get_method
from sslseg.methods.base import SSLMethod
from sslseg.oom import explain_out_of_memory
from sslseg.rundir import (
    RandomStateCheckpoint,
    last_checkpoint,
    prepare_run_dir,
    run_loggers,
)
from sslseg.trainer import build_trainer, check_trainer_settings
from sslseg.weights import save_encoder


@dataclass
class PretrainResult:
    """Where the weights are and what the run cost."""

    output: Path
    weights: Path
    summary: dict[str, Any]
    main_process: bool = True  # False in the other processes of a DDP run, which write nothing


def resolve_optim(cfg: PretrainConfig) -> PretrainConfig:
    """Apply the method's own optimiser defaults to the settings the user left unset."""
    defaults = get_method(cfg.method).optim_defaults
    unset = {k: v for k, v in defaults.items() if k not in cfg.optim.model_fields_set}
    return cfg.model_copy(update={"optim": cfg.optim.model_copy(update=unset)}) if unset else cfg


def build_method(cfg: PretrainConfig, in_channels: int) -> SSLMethod:
    """Instantiate the configured method (checks the method name and its params first)."""
    cls = get_method(cfg.method)
    load_config(cls.Params, overrides=cfg.params, source=f"params of {cfg.method}")
    return cls(cfg.model_dump(mode="json"), in_channels)


def pretrain(
    cfg: PretrainConfig,
    resume: bool = False,
    progress: bool = True,
    callbacks: list[L.Callback] | None = None,
) -> PretrainResult:
    """Run one pretraining job; returns the path of `encoder.safetensors`. `callbacks` are added to the
    trainer's own (e.g. timers in benchmarks)."""
    if cfg.data.path is None:
        raise ConfigError("data.path is not set: give the folder of unlabeled images")
    cfg = resolve_optim(cfg)  # also fails on an unknown method before any image is read
    load_config(get_method(cfg.method).Params, overrides=cfg.params, source=f"params of {cfg.method}")
    check_trainer_settings(cfg.train)
    out = Path(cfg.output)
    last = prepare_run_dir(out, resume)
    write_text(out / "config.yaml", to_yaml(cfg))
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)

    samples = find_samples(cfg.data.path, layout=cfg.data.layout, allow_unlabeled=True)  # labels are ignored
    if cfg.data.split_file is not None:  # never pretrain on the test images of a study
        split = load_split(cfg.data.split_file, [s.id for s in samples])
        keep = set(split["train"]) | set(split["val"]) | set(split["unlabeled"])
        samples = [s for s in samples if s.id in keep]
    if cfg.data.max_images:
        samples = samples[: cfg.data.max_images]
    raws = read_images(samples, progress)
    found = len(samples)
    heldout = heldout_index(cfg.data.heldout, progress) if cfg.data.heldout else None
    if heldout is not None:  # never a test image, whatever folder the unlabeled images come from
        samples, raws = drop_heldout(samples, raws, heldout, cfg.data.heldout_overlap, cfg.data.path)
    images, channels = load_unlabeled(
        samples, progress=progress, bright_objects=cfg.data.bright_objects, scale=cfg.data.scale, raws=raws
    )
    method = build_method(cfg, channels)

    base = cfg.data.base_size or 2 * cfg.views.size
    steps = cfg.train.steps_per_epoch or max(1, len(images) // cfg.train.batch_size)
    loader = DataLoader(
        RandomBaseCrops(images, base, steps * cfg.train.batch_size),
        batch_size=cfg.train.batch_size,
        num_workers=0,
        drop_last=True,
    )
    ckpt = last_checkpoint(out / "checkpoints")
    trainer = build_trainer(
        cfg.train,
        out,
        callbacks=[ckpt, RandomStateCheckpoint(), *(callbacks or [])],
        logger=run_loggers(out, resume),
        progress=progress,
        log_every_n_steps=min(10, steps),
    )
    t0 = time.perf_counter()
    with explain_out_of_memory("train.batch_size", cfg.train.batch_size, minimum=2):
        trainer.fit(method, loader, ckpt_path=str(last) if resume else None)
    seconds = time.perf_counter() - t0

    summary = {
        "method": cfg.method,
        "encoder": cfg.encoder,
        "in_channels": channels,
        "normalization": "per_image",
        "bright_objects": cfg.data.bright_objects,
        "scale": cfg.data.scale,  # the working scale the encoder learned at: fine-tune at the same
        "data": str(cfg.data.path),
        "n_images": len(images),
        "heldout_images": len(heldout) if heldout is not None else 0,  # test images checked against
        "excluded_as_test_images": found - len(samples),
        "epochs": trainer.current_epoch,
        "steps": trainer.global_step,
        "batch_size": cfg.train.batch_size,
        "view_size": cfg.views.size,
        "seconds": seconds,
        "sslseg_version": sslseg.__version__,
    }
    summary["processes"] = trainer.world_size
    weights = out / "encoder.safetensors"
    if trainer.is_global_zero:  # under DDP every process holds the same weights: one writes them
        save_encoder(method.encoder, weights, summary)
        for name, module in method.extra_weights().items():
            save_encoder(module, out / f"{name}.safetensors", {**summary, "part": name})
        write_json(out / "result.json", summary)
    return PretrainResult(out, weights, summary, main_process=trainer.is_global_zero)


sslseg.entry_point(__name__)  # `from sslseg import pretrain` is callable (see sslseg.API)
