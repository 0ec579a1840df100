"""Fine-tuning throughput: sslseg's fine-tuning steps/s end to end against a minimal hand-written PyTorch loop
over the same smp U-Net, loss, optimiser, crops and batch (the ceiling), and their ratio, side by side in one
run. Prints one JSON line.

- e2e: `sslseg.finetune` as users run it (random crops drawn from the decoded images by the DataLoader,
  augmentation on the device, forward/backward/step through Lightning, logging, the divergence check),
  timed per step after warm-up by a callback (validation and testing come after the timed steps).
- bare: the same U-Net (built by the same module, same initialisation), the task's loss and AdamW, on one
  batch of random crops of the same training images held on the device: forward, loss, backward, step.
- On a GPU both run in bfloat16 autocast, as fine-tuning does there; on the CPU in float32. The bare loop
  runs before and after the end-to-end run; each side's figure is 1 / its median step time, which a step
  slowed by other work on a shared machine moves least.

    python benchmarks/finetune_throughput.py [--steps 20] [--warmup 3] [--batch 8] [--crop 256]
    python benchmarks/finetune_throughput.py --synthetic 512   # without the data (e.g. on a GPU machine)
    python benchmarks/finetune_throughput.py --smoke      # synthetic images, a tiny U-Net: seconds
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import StepTimer, emit, hardware, require

from sslseg.config import FinetuneConfig
from sslseg.data.datasets import RandomCropDataset, load_samples
from sslseg.data.layouts import find_samples
from sslseg.finetune import finetune, resolve_splits
from sslseg.optim import adamw
from sslseg.segmentation.module import SegmentationModule
from sslseg.segmentation.tasks import task_named
from sslseg.trainer import resolve_precision

RATIO_BAR = 0.9  # issue 26: fine-tuning end to end ≥ 0.9 × the bare loop


def config(train: Path, out: Path, args: argparse.Namespace, **train_settings: object) -> FinetuneConfig:
    """The fine-tuning run both sides share: `--images` labelled images (none validates below 4, so the
    timed epoch is training alone), one epoch of warm-up + timed steps; `train_settings` override the
    `train` defaults (e.g. precision, channels_last)."""
    return FinetuneConfig.model_validate(
        {
            "data": {
                "train": train,
                "task": "instance",
                "labelled_images": args.images,
                "test_fraction": 0.0,
            },
            "model": {"encoder": args.encoder, "decoder_channels": args.decoder},
            "train": {
                "epochs": 1,
                "steps_per_epoch": args.warmup + args.steps,
                "batch_size": args.batch,
                "crop_size": args.crop,
                **train_settings,
            },
            "output": out,
        }
    )


def bare_step_seconds(cfg: FinetuneConfig, warmup: int, steps: int) -> list[float]:
    """Seconds of each timed step of the minimal loop: the run's U-Net, loss and optimiser on one batch of
    its crops."""
    samples = find_samples(cfg.data.train, allow_unlabeled=True)
    budget = resolve_splits(cfg, samples)
    by_id = {s.id: s for s in samples}
    d = cfg.data
    train_set, channels = load_samples(
        [by_id[i] for i in budget.train],
        d.task,
        d.num_classes,
        None,
        d.normalization,
        d.scale,
        progress=False,
    )
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    module = SegmentationModule(cfg.model_dump(mode="json"), channels)
    net = module.net.to(device).train()
    if cfg.train.channels_last:  # the precision and memory format the end-to-end run uses
        net = net.to(memory_format=torch.channels_last)
    crops = RandomCropDataset(
        train_set,
        cfg.train.crop_size,
        cfg.train.batch_size,
        binary_channels=task_named(d.task).binary_target_channels(cfg),
    )
    pairs = [crops[i] for i in range(cfg.train.batch_size)]
    images = torch.stack([p[0] for p in pairs]).to(device)
    targets = torch.stack([p[1] for p in pairs]).to(device)
    opt = adamw([{"params": list(net.parameters())}], lr=cfg.train.lr, weight_decay=cfg.train.weight_decay)
    if cfg.train.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    bf16 = resolve_precision(cfg.train.precision, cfg.train.accelerator) == "bf16-mixed"
    autocast = torch.autocast(device, dtype=torch.bfloat16, enabled=bf16)
    times = []
    for i in range(warmup + steps):
        start = time.perf_counter()
        with autocast:
            loss = module.loss(net(images), targets)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if gpu:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return times


def e2e_step_seconds(cfg: FinetuneConfig, warmup: int) -> list[float]:
    """Seconds of each step of `sslseg.finetune` after warm-up (from one step's end to the next's)."""
    timer = StepTimer()
    finetune(cfg, progress=False, callbacks=[timer])
    return np.diff(timer.stamps[warmup - 1 :]).tolist()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--steps", type=int, default=20, help="timed steps (after --warmup)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=256)
    ap.add_argument("--images", type=int, default=3, help="labelled training images (<4: no validation)")
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--decoder", type=int, nargs="+", default=[256, 128, 64, 32, 16])
    ap.add_argument(
        "--synthetic", type=int, help="train on 4 synthetic images of this side instead of DSB2018 (no data)"
    )
    ap.add_argument("--smoke", action="store_true", help="synthetic images and a tiny U-Net (for the tests)")
    args = ap.parse_args()
    if args.warmup < 1 or args.steps < 1:
        ap.error("--warmup and --steps must be at least 1")
    with tempfile.TemporaryDirectory(prefix="finetune_throughput-") as tmp:
        if args.smoke:
            args.encoder, args.decoder, args.crop, args.batch, args.synthetic = (
                "resnet18",
                [16, 8, 8],
                32,
                2,
                64,
            )
        if args.synthetic:
            from sslseg.data.synth import write_synthetic_dataset

            train = write_synthetic_dataset(Path(tmp) / "synth", n_images=4, size=args.synthetic, seed=0)
        else:
            train = require("dsb2018", "stage1_train")
        cfg = config(train, Path(tmp) / "run", args)
        # the ceiling before and after the end-to-end run, so that both see the same spells of other work
        torch.manual_seed(0)
        bare_times = bare_step_seconds(cfg, args.warmup, args.steps)
        e2e_times = e2e_step_seconds(cfg, args.warmup)
        torch.manual_seed(0)
        bare_times += bare_step_seconds(cfg, args.warmup, args.steps)
    # medians: a step slowed by other work on a shared machine moves them least
    e2e, bare = 1 / float(np.median(e2e_times)), 1 / float(np.median(bare_times))
    ratio = e2e / bare
    emit(
        benchmark="finetune_throughput",
        e2e_steps_per_s=round(e2e, 3),
        bare_steps_per_s=round(bare, 3),
        e2e_step_s=[round(t, 6) for t in e2e_times],  # µs: a smoke step lasts milliseconds
        bare_step_s=[round(t, 6) for t in bare_times],
        ratio=round(ratio, 3),
        bar_ratio=RATIO_BAR,
        passes=ratio >= RATIO_BAR,
        e2e_images_per_s=round(e2e * args.batch, 2),
        batch=args.batch,
        crop=args.crop,
        encoder=args.encoder,
        steps=args.steps,
        data=f"synthetic {args.synthetic} px" if args.synthetic else "dsb2018 stage1_train",
        threads=torch.get_num_threads(),
        hardware=hardware(),
    )


if __name__ == "__main__":
    main()
