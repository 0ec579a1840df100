"""DSB2018 nuclei instance segmentation: train on stage1_train (100 % labels), score stage1_test as Kaggle
shipped it (per-object masks). Prints JSON lines: each figure beside the bar and published references.

    python benchmarks/dsb2018_instance.py [--epochs 30] [--out runs/bench_dsb]
"""

from __future__ import annotations

import argparse
import time

from _common import emit, emit_scores, hardware, require

from sslseg.config import FinetuneConfig
from sslseg.finetune import finetune

BAR = {"dsb_score": 0.40, "ap@0.5": 0.75}
PUBLISHED = {
    "dsb_score": "Kaggle DSB2018 stage-2 winner 0.632 (ensemble of 32 networks, stage-2 data)",
    "ap@0.5": "StarDist 0.864 on a fluorescence subset (Schmidt et al. 2018)",
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--steps-per-epoch", type=int, default=50)
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--crop", type=int, default=192)
    ap.add_argument("--out", default="runs/bench_dsb2018")
    args = ap.parse_args()
    cfg = FinetuneConfig.model_validate(
        {
            "data": {
                "train": require("dsb2018", "stage1_train"),
                "test": require("dsb2018", "stage1_test"),
                "test_layout": "dsb",
                "task": "instance",
                "val_fraction": 0.1,
                "split_seed": 0,
            },
            "model": {"encoder": args.encoder, "init": "random", "decoder_channels": [128, 64, 32, 16, 16]},
            "train": {
                "epochs": args.epochs,
                "steps_per_epoch": args.steps_per_epoch,
                "batch_size": 8,
                "crop_size": args.crop,
                "lr": 1e-3,
                "patience": 10,
                "val_max_images": 40,
            },
            "output": args.out,
        }
    )
    t0 = time.perf_counter()
    res = finetune(cfg)
    wall = time.perf_counter() - t0
    emit_scores(
        "dsb2018_instance", res.test, ("aji", "aji_plus", "pq", "ap@0.5", "dsb_score"), BAR, PUBLISHED
    )
    emit(
        benchmark="dsb2018_instance",
        wall_seconds=round(wall, 1),
        fit_seconds=round(res.summary["fit_seconds"], 1),
        epochs_run=res.summary["epochs_run"],
        n_train=res.summary["n_labelled"],
        n_test=res.summary["n_test"],
        encoder=args.encoder,
        hardware=hardware(),
        output=str(res.output),
    )


if __name__ == "__main__":
    main()
