"""The training step itself, each change on and off in one run (issue 26): bfloat16 autocast and
channels-last (NHWC) memory, for fine-tuning and for SSL pretraining, end to end as users run them.

- fine-tuning: `sslseg.finetune` on DSB2018 stage1_train crops (the label-curve setting: ResNet-18 U-Net,
  decoder 128-64-32-16-16, 128 px crops, batch 8), steps/s from `finetune_throughput.e2e_step_seconds`;
- pretraining: `sslseg.pretrain` (SimCLR by default; 96 px views, batch 64), images/s.

Whether bf16 trains as well is measured by test AJI, not here (RESULTS.md: ten draws fp32 against bf16).

Variants: precision 32-true / bf16-mixed × channels_last off / on. bf16 pays only where the CPU computes it
natively (AVX512-BF16, AMX); `train.precision: auto` takes it there (`sslseg.device.cpu_has_native_bf16`).

    python benchmarks/step_speed.py [--steps 12] [--part finetune|pretrain|both]
    python benchmarks/step_speed.py --smoke       # synthetic images, tiny networks: seconds

Prints one JSON line per variant and one with the speed-ups over fp32 NCHW.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import StepTimer, emit, hardware, require
from finetune_throughput import config as finetune_config
from finetune_throughput import e2e_step_seconds

from sslseg.config import PretrainConfig
from sslseg.device import cpu_has_native_bf16
from sslseg.pretrain import pretrain

VARIANTS = [
    ("32-true", False),
    ("32-true", True),
    ("bf16-mixed", False),
    ("bf16-mixed", True),
]


def finetune_seconds(data: Path, tmp: Path, args: argparse.Namespace, precision: str, nhwc: bool) -> float:
    """Median seconds of one fine-tuning step (after warm-up) of `sslseg.finetune`."""
    cfg = finetune_config(data, tmp / f"ft-{precision}-{nhwc}", args, precision=precision, channels_last=nhwc)
    torch.manual_seed(0)
    return float(np.median(e2e_step_seconds(cfg, args.warmup)))


def pretrain_seconds(data: Path, tmp: Path, args: argparse.Namespace, precision: str, nhwc: bool) -> float:
    """Median seconds of one pretraining step (after warm-up) of `sslseg.pretrain`."""
    cfg = PretrainConfig.model_validate(
        {
            "method": args.method,
            "encoder": "resnet18",
            "data": {"path": data},
            "views": {"size": args.view, "preset": "generic"},
            "train": {
                "epochs": 1,
                "steps_per_epoch": args.warmup + args.steps,
                "batch_size": args.ssl_batch,
                "precision": precision,
                "channels_last": nhwc,
            },
            "output": tmp / f"ssl-{precision}-{nhwc}",
        }
    )
    timer = StepTimer()
    torch.manual_seed(0)
    pretrain(cfg, progress=False, callbacks=[timer])
    return float(np.median(np.diff(timer.stamps[args.warmup - 1 :])))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=12, help="timed steps per variant (after --warmup)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--part", choices=("finetune", "pretrain", "both"), default="both")
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--method", default="simclr")
    ap.add_argument("--ssl-batch", type=int, default=64)
    ap.add_argument("--view", type=int, default=96)
    ap.add_argument("--smoke", action="store_true", help="synthetic images, tiny settings (for the tests)")
    args = ap.parse_args()
    args.images, args.encoder, args.decoder, args.synthetic = 3, "resnet18", [128, 64, 32, 16, 16], None
    with tempfile.TemporaryDirectory(prefix="step_speed-") as tmp_name:
        tmp = Path(tmp_name)
        if args.smoke:
            from sslseg.data.synth import write_synthetic_dataset

            args.steps, args.warmup, args.crop, args.batch, args.ssl_batch, args.view = 2, 1, 32, 2, 4, 32
            args.decoder = [16, 8, 8]
            data = write_synthetic_dataset(tmp / "synth", n_images=4, size=64, seed=0)
        else:
            data = require("dsb2018", "stage1_train")
        parts = ["finetune", "pretrain"] if args.part == "both" else [args.part]
        for part in parts:
            measure = finetune_seconds if part == "finetune" else pretrain_seconds
            per_item = args.batch if part == "finetune" else args.ssl_batch
            seconds = {}
            for precision, nhwc in VARIANTS:
                start = time.perf_counter()
                seconds[(precision, nhwc)] = s = measure(data, tmp, args, precision, nhwc)
                emit(
                    benchmark="step_speed",
                    part=part,
                    precision=precision,
                    channels_last=nhwc,
                    step_ms=round(s * 1000, 1),
                    images_per_s=round(per_item / s, 2),
                    run_s=round(time.perf_counter() - start, 1),
                )
            base = seconds[("32-true", False)]
            emit(
                benchmark="step_speed",
                part=part,
                speedup_over_fp32_nchw={
                    f"{p} {'NHWC' if c else 'NCHW'}": round(base / s, 3) for (p, c), s in seconds.items()
                },
                steps=args.steps,
                native_bf16=cpu_has_native_bf16(),
                threads=torch.get_num_threads(),
                hardware=hardware(),
            )


if __name__ == "__main__":
    main()
