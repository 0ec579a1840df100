"""DSB2018 nuclei instance segmentation: train on stage1_train (100 % labels), score stage1_test as Kaggle
shipped it (per-object masks). Prints JSON lines: each figure beside the bar and published references.

    python benchmarks/dsb2018_instance.py [--epochs 30] [--out runs/bench_dsb]
    python benchmarks/dsb2018_instance.py --object-size 24 --baseline   # with and without, one run
    python benchmarks/dsb2018_instance.py --object-size 24 --bright-objects --compare-without bright-objects
    python benchmarks/dsb2018_instance.py --tta                         # also score with TTA (8× slower)
    python benchmarks/dsb2018_instance.py --gamma-jitter 0.4 --shuffle-channels  # stronger augmentation
    python benchmarks/dsb2018_instance.py --instance-head contact --compare-without instance-head
    python benchmarks/dsb2018_instance.py --instance-head contact --object-balance 1  # small/dim objects
"""

from __future__ import annotations

import argparse
import csv
import time
from pathlib import Path

from _common import colour_or_gray, emit, emit_scores, hardware, means_by_kind, require

from sslseg.config import FinetuneConfig
from sslseg.data.layouts import find_samples
from sslseg.evaluate import evaluate_checkpoint
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
    ap.add_argument("--object-size", type=float, help="data.object_size: median nucleus diameter to work at")
    ap.add_argument(
        "--bright-objects", action="store_true", help="data.bright_objects: invert dark-on-bright images"
    )
    ap.add_argument(
        "--compare-without",
        choices=["object-size", "bright-objects", "instance-head", "object-balance"],
        help="first train the same budget without this one option, for a comparison in one run",
    )
    ap.add_argument("--baseline", action="store_true", help="the same as --compare-without object-size")
    ap.add_argument("--tta", action="store_true", help="also score the test set with test-time augmentation")
    ap.add_argument("--seed", type=int, default=0, help="train.seed: initialisation and crops (split fixed)")
    ap.add_argument("--gamma-jitter", type=float, default=0.0, help="train.gamma_jitter (e.g. 0.4)")
    ap.add_argument("--shuffle-channels", action="store_true", help="train.shuffle_channels")
    ap.add_argument(
        "--instance-head", default="distance", help="model.instance_head (sslseg.segmentation.heads)"
    )
    ap.add_argument(
        "--object-balance",
        type=float,
        default=0.0,
        help="loss.object_balance: exponent of the weights of small and dim nuclei (e.g. 1; 0 = off)",
    )
    args = ap.parse_args()
    without = "object-size" if args.baseline else args.compare_without
    if without == "object-size" and args.object_size is None:
        ap.error("comparing without --object-size needs --object-size")
    if without == "bright-objects" and not args.bright_objects:
        ap.error("comparing without --bright-objects needs --bright-objects")
    if without == "instance-head" and args.instance_head == "distance":
        ap.error("comparing without --instance-head needs another head than 'distance'")
    if without == "object-balance" and not args.object_balance:
        ap.error("comparing without --object-balance needs --object-balance")
    balance = args.object_balance
    if without == "object-size":
        run(args, None, args.bright_objects, args.instance_head, balance)
    elif without == "bright-objects":
        run(args, args.object_size, False, args.instance_head, balance)
    elif without == "instance-head":
        run(args, args.object_size, args.bright_objects, "distance", balance)
    elif without == "object-balance":
        run(args, args.object_size, args.bright_objects, args.instance_head, 0.0)
    run(args, args.object_size, args.bright_objects, args.instance_head, balance)


def run(
    args: argparse.Namespace, object_size: float | None, bright_objects: bool, head: str, balance: float
) -> None:
    tag = "baseline" if object_size is None else f"object_size_{object_size:g}"
    if bright_objects:
        tag += "_bright_objects"
    if head != "distance":
        tag += f"_{head}"
    if balance:
        tag += f"_balance_{balance:g}"
    if args.seed:
        tag += f"_seed_{args.seed}"
    if args.gamma_jitter:
        tag += f"_gamma_{args.gamma_jitter:g}"
    if args.shuffle_channels:
        tag += "_shuffle_channels"
    cfg = FinetuneConfig.model_validate(
        {
            "data": {
                "train": require("dsb2018", "stage1_train"),
                "test": require("dsb2018", "stage1_test"),
                "test_layout": "dsb",
                "task": "instance",
                "validation": "fixed",  # the protocol RESULTS.md's numbers were measured with
                "val_fraction": 0.1,
                "split_seed": 0,
                "object_size": object_size,
                "bright_objects": bright_objects,
            },
            "model": {
                "encoder": args.encoder,
                "init": "random",
                "decoder_channels": [128, 64, 32, 16, 16],
                "instance_head": head,
            },
            "train": {
                "epochs": args.epochs,
                "steps_per_epoch": args.steps_per_epoch,
                "batch_size": 8,
                "crop_size": args.crop,
                "lr": 1e-3,
                "patience": 10,
                "val_max_images": 40,
                "seed": args.seed,
                "gamma_jitter": args.gamma_jitter,
                "shuffle_channels": args.shuffle_channels,
            },
            "loss": {"object_balance": balance},
            "output": f"{args.out}/{tag}",
        }
    )
    t0 = time.perf_counter()
    res = finetune(cfg)
    wall = time.perf_counter() - t0
    metrics = ("aji", "aji_plus", "pq", "ap@0.5", "dsb_score")
    emit_scores(f"dsb2018_instance/{tag}", res.test, metrics, BAR, PUBLISHED)
    emit(benchmark=f"dsb2018_instance/{tag}", by_kind=scores_by_kind(res.output, cfg.data.test, metrics))
    if args.tta:
        t1 = time.perf_counter()
        test = require("dsb2018", "stage1_test")
        with_tta = evaluate_checkpoint(res.best_checkpoint, test, layout="dsb", progress=False, tta=True)
        emit_scores(f"dsb2018_instance/{tag}+tta", with_tta, metrics, BAR, PUBLISHED)
        emit(benchmark=f"dsb2018_instance/{tag}+tta", test_seconds=round(time.perf_counter() - t1, 1))
    emit(
        benchmark=f"dsb2018_instance/{tag}",
        object_size=object_size,
        bright_objects=bright_objects,
        instance_head=head,
        object_balance=balance,
        seed=args.seed,
        gamma_jitter=args.gamma_jitter,
        shuffle_channels=args.shuffle_channels,
        test_seconds=round(res.summary["test_seconds"], 1),
        wall_seconds=round(wall, 1),
        fit_seconds=round(res.summary["fit_seconds"], 1),
        epochs_run=res.summary["epochs_run"],
        n_train=res.summary["n_labelled_train"],
        n_test=res.summary["n_test"],
        encoder=args.encoder,
        hardware=hardware(),
        output=str(res.output),
    )


def scores_by_kind(output: Path, test: Path, metrics: tuple[str, ...]) -> dict[str, dict[str, float]]:
    """The test scores over stage1_test's gray (fluorescence) and colour (stained) images apart, from the
    run's per-image rows: a default must hold on each kind of image, not only on the mean."""
    with (output / "test_per_image.csv").open(newline="") as f:
        rows = [(r["id"], {m: float(r[m]) for m in metrics}) for r in csv.DictReader(f)]
    return means_by_kind(rows, colour_or_gray(find_samples(test, layout="dsb")), metrics)


if __name__ == "__main__":
    main()
