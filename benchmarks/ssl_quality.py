"""Does SSL pretraining help with few labels? Pretrain each method on the DSB2018 stage1_train images
(labels unused), fine-tune with 10 % of the labels for several seeds, and score stage1_test (Kaggle layout)
against random initialisation fine-tuned the same way. Prints one JSON line per (method, seed) and a
summary line per method with the mean and the relative AJI gain over random init.

    python benchmarks/ssl_quality.py [--methods densecl,modeco] [--seeds 0,1,2] [--pretrain-epochs 6]
    python benchmarks/ssl_quality.py --pretrained-from runs/earlier --encoder-lr-scale 0.1 --out runs/new
    python benchmarks/ssl_quality.py --frozen --out runs/frozen   # the reference's other encoder state

`--frozen` freezes the encoder (BatchNorm too) of every initialisation, random init included, and trains the
decoder only: the reference compares each state against random init in the same state.

The defaults are a budget for 2 CPU cores (about 20 min per method with 3 seeds); on a GPU raise the
steps, view size and crop size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import yaml
from _common import emit, hardware, require

from sslseg.config import FinetuneConfig, PretrainConfig
from sslseg.finetune import finetune
from sslseg.methods import METHODS
from sslseg.pretrain import pretrain, resolve_optim
from sslseg.study.stats import paired_t_greater, welch_greater, wilcoxon_greater

# the methods whose loss works below the image level (locations, tiles, stages or pixels): the dense
# methods of the reference (DenseCL, DetCo, MoDeCo) and the dense ones beyond it (VICRegL, PixPro, masked
# image modelling through the U-Net decoder)
DECODER = [128, 64, 32, 16, 16]  # the fine-tuning U-Net's decoder; methods that pretrain one use it too
DENSE = {"densecl", "pixpro", "vicregl", "detco", "modeco", "masked"}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--label-fraction", type=float, default=0.1)
    ap.add_argument("--pretrain-epochs", type=int, default=6)
    ap.add_argument("--pretrain-steps", type=int, default=40, help="steps per pretraining epoch")
    ap.add_argument("--pretrain-batch", type=int, default=64)
    ap.add_argument("--view-size", type=int, default=64)
    ap.add_argument("--finetune-epochs", type=int, default=6)
    ap.add_argument("--finetune-steps", type=int, default=25, help="steps per fine-tuning epoch")
    ap.add_argument("--crop-size", type=int, default=128)
    ap.add_argument("--val-images", type=int, default=16, help="validation images scored per epoch")
    ap.add_argument(
        "--encoder-lr-scale",
        type=float,
        default=1.0,
        help="train.encoder_lr_scale when fine-tuning a pretrained encoder (random init keeps 1)",
    )
    ap.add_argument(
        "--pretrained-from",
        type=Path,
        nargs="+",
        default=[],
        help="earlier runs' --out: reuse a pretraining of a method from them when its settings are the same",
    )
    ap.add_argument(
        "--frozen",
        action="store_true",
        help="freeze the encoder of every initialisation (random init too) and train the decoder only",
    )
    ap.add_argument("--out", default="runs/bench_ssl_quality")
    args = ap.parse_args()
    if args.frozen and args.encoder_lr_scale != 1.0:
        ap.error("--encoder-lr-scale has no effect with --frozen: a frozen encoder is not trained")
    train, test = require("dsb2018", "stage1_train"), require("dsb2018", "stage1_test")
    out = Path(args.out)
    seeds = [int(s) for s in args.seeds.split(",")]

    def finetune_all(init: str, tag: str, encoder_lr_scale: float = 1.0) -> list[dict[str, float]]:
        scores = []
        for seed in seeds:
            cfg = FinetuneConfig.model_validate(
                {
                    "data": {
                        "train": train,
                        "test": test,
                        "test_layout": "dsb",
                        "task": "instance",
                        "validation": "fixed",  # the protocol RESULTS.md's numbers were measured with
                        "val_fraction": 0.1,
                        "label_fraction": args.label_fraction,
                    },
                    "model": {
                        "encoder": "resnet18",
                        "init": init,
                        "decoder_channels": DECODER,
                        "frozen": args.frozen,
                    },
                    "train": {
                        "seed": seed,
                        "epochs": args.finetune_epochs,
                        "steps_per_epoch": args.finetune_steps,
                        "batch_size": 8,
                        "crop_size": args.crop_size,
                        "patience": 6,
                        "val_max_images": args.val_images,
                        "encoder_lr_scale": encoder_lr_scale,
                    },
                    "output": out / tag / f"finetune_seed{seed}",
                }
            )
            t0 = time.perf_counter()
            res = finetune(cfg, progress=False)
            row = {k: res.test[k] for k in ("aji", "dsb_score", "ap@0.5", "pq")}
            rounded = {k: round(v, 4) for k, v in row.items()}
            emit(
                benchmark="ssl_quality",
                init=tag,
                seed=seed,
                encoder="frozen" if args.frozen else "fine-tuned",
                **rounded,
                seconds=round(time.perf_counter() - t0),
            )
            scores.append(row)
        return scores

    results: dict[str, list[dict[str, float]]] = {"random": finetune_all("random", "random")}
    pretrain_seconds: dict[str, float] = {}
    for method in args.methods.split(","):
        cfg = PretrainConfig.model_validate(
            {
                "method": method,
                "encoder": "resnet18",
                "params": {"decoder_channels": DECODER}
                if "decoder_channels" in METHODS[method].Params.model_fields
                else {},
                "data": {"path": train},
                "views": {"size": args.view_size},
                "train": {
                    "epochs": args.pretrain_epochs,
                    "steps_per_epoch": args.pretrain_steps,
                    "batch_size": args.pretrain_batch,
                },
                "output": out / method / "pretrain",
            }
        )
        weights, seconds = _earlier_pretraining(args.pretrained_from, method, cfg)
        if weights is None:
            pre = pretrain(cfg, progress=False)
            weights, seconds = pre.weights, pre.summary["seconds"]
        pretrain_seconds[method] = seconds
        results[method] = finetune_all(str(weights), method, args.encoder_lr_scale)

    base = statistics.mean(r["aji"] for r in results["random"])
    for tag, rows in results.items():
        aji = statistics.mean(r["aji"] for r in rows)
        emit(
            benchmark="ssl_quality",
            summary=tag,
            dense=tag in DENSE,
            mean_aji=round(aji, 4),
            sd_aji=round(statistics.stdev(r["aji"] for r in rows), 4) if len(rows) > 1 else None,
            mean_dsb_score=round(statistics.mean(r["dsb_score"] for r in rows), 4),
            random_init_mean_aji=round(base, 4),
            relative_aji_gain=round(aji / base - 1, 4),
            # one-sided tests of "higher AJI than random init" over the seeds (None for random itself): each
            # seed annotates the same images for every init, so the main test is paired; Welch is secondary
            **_tests_against_random([r["aji"] for r in rows], [r["aji"] for r in results["random"]], tag),
            bar="a dense method ≥ +5 % relative AJI over random init",
            pretrain_seconds=round(pretrain_seconds.get(tag, 0.0), 1),
            seeds=seeds,
            label_fraction=args.label_fraction,
            encoder="frozen" if args.frozen else "fine-tuned",
            encoder_lr_scale=1.0 if tag == "random" else args.encoder_lr_scale,
            hardware=hardware(),
        )


def _tests_against_random(aji: list[float], random_aji: list[float], tag: str) -> dict[str, float | None]:
    """One-sided p-values of "higher AJI than random init", seed by seed (None for random itself)."""
    tests = {"paired_t": paired_t_greater, "wilcoxon": wilcoxon_greater, "welch": welch_greater}
    return {
        f"p_aji_above_random_{name}": None if tag == "random" else round(test(aji, random_aji), 4)
        for name, test in tests.items()
    }


def _earlier_pretraining(earlier: list[Path], method: str, cfg: PretrainConfig) -> tuple[Path | None, float]:
    """The encoder and pretraining seconds of an earlier run of this benchmark that pretrained `method`
    with exactly these settings (its saved config, output folder aside); (None, 0) when none did."""
    for folder in earlier:
        run = folder / method / "pretrain"
        weights, saved = run / "encoder.safetensors", run / "config.yaml"
        if not (weights.is_file() and saved.is_file() and (run / "result.json").is_file()):
            continue
        before = PretrainConfig.model_validate(yaml.safe_load(saved.read_text()))
        # the saved config holds the method's optimiser defaults, as pretrain() resolved them
        if before.model_dump(exclude={"output"}) == resolve_optim(cfg).model_dump(exclude={"output"}):
            print(f"{run}: same settings, reusing its encoder", file=sys.stderr)
            return weights, json.loads((run / "result.json").read_text())["seconds"]
        print(f"{run}: pretrained with other settings", file=sys.stderr)
    return None, 0.0


if __name__ == "__main__":
    main()
