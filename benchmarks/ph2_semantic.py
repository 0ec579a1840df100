"""PH2 skin-lesion semantic segmentation on a fixed, seeded 140/20/40 split (written to
benchmarks/splits/ph2_split.json). Prints JSON lines: test Dice/IoU beside the bar and published figures.

    python benchmarks/ph2_semantic.py [--epochs 25] [--out runs/bench_ph2]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import emit, emit_scores, hardware, require

from sslseg.config import FinetuneConfig
from sslseg.data.layouts import find_samples
from sslseg.data.splits import make_split, save_split
from sslseg.finetune import finetune

BAR = {"dice": 0.88}
PUBLISHED = {"dice": "U-Nets on PH2 reach about 0.91 Dice"}
SPLIT_FILE = Path(__file__).parent / "splits" / "ph2_split.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=25)
    ap.add_argument("--steps-per-epoch", type=int, default=40)
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--scale", type=float, default=0.4)
    ap.add_argument("--out", default="runs/bench_ph2")
    args = ap.parse_args()
    root = require("ph2")
    if not SPLIT_FILE.exists():  # 200 images → 140 train / 20 val / 40 test, seed 0
        save_split(SPLIT_FILE, make_split([s.id for s in find_samples(root)], 0.1, 0.2, seed=0))
    cfg = FinetuneConfig.model_validate(
        {
            # validation: fixed, the protocol RESULTS.md's numbers were measured with
            "data": {
                "train": root,
                "task": "semantic",
                "validation": "fixed",
                "split_file": SPLIT_FILE,
                "scale": args.scale,
            },
            "model": {"encoder": args.encoder, "init": "random", "decoder_channels": [128, 64, 32, 16, 16]},
            "train": {
                "epochs": args.epochs,
                "steps_per_epoch": args.steps_per_epoch,
                "batch_size": 8,
                "crop_size": 192,
                "lr": 1e-3,
                "patience": 8,
            },
            "output": args.out,
        }
    )
    t0 = time.perf_counter()
    res = finetune(cfg)
    wall = time.perf_counter() - t0
    emit_scores("ph2_semantic", res.test, ("dice", "iou"), BAR, PUBLISHED)
    emit(
        benchmark="ph2_semantic",
        wall_seconds=round(wall, 1),
        fit_seconds=round(res.summary["fit_seconds"], 1),
        epochs_run=res.summary["epochs_run"],
        n_train=res.summary["n_labelled_train"],
        n_val=res.summary["n_val"],
        n_test=res.summary["n_test"],
        scale=args.scale,
        encoder=args.encoder,
        hardware=hardware(),
        output=str(res.output),
    )


if __name__ == "__main__":
    main()
