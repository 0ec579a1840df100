"""`sslseg predict` on the CPU by engine: images/s of the PyTorch engine (today's path) and the ONNX engine
(onnxruntime) on DSB2018 stage1_test, same checkpoint, same images, side by side in one run, with how far
their label maps agree. Prints JSON lines.

- Each engine runs `predict_files` end to end (checkpoint load, ONNX export for onnx, image reading,
  tiled inference, post-processing, TIFF writing), `--repeats` times interleaved (torch, onnx, torch, ...);
  the fastest repeat of each is reported, as the one least disturbed by other work on the machine.
- Agreement: the share of images whose label maps are identical, the lowest share of pixels with the
  same foreground/background, and the lowest IoU of a PyTorch object with its best ONNX object.
- Without `--checkpoint`, a resnet18 U-Net is fine-tuned for `--steps` steps on stage1_train first (its
  quality does not matter, only that its outputs are those of a trained network).

    python benchmarks/predict_engines.py [--checkpoint runs/x/best.ckpt] [--images 20] [--repeats 2]
    python benchmarks/predict_engines.py --smoke     # synthetic data, a tiny model: seconds
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from _common import emit, hardware, require

from sslseg.config import FinetuneConfig
from sslseg.data.io import read_image
from sslseg.finetune import finetune
from sslseg.metrics.instance import overlap_table
from sslseg.predict import predict_files

ENGINES = ("torch", "onnx")
SPEED_BAR = 1.3  # issue 26: onnx ≥ 1.3 × today's images/s with identical labels


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float | bool]:
    """How far two instance (or class) maps of one image agree: identical, the share of pixels with the
    same foreground/background, and the lowest IoU of an object of `a` with its best object of `b` (1.0
    when `a` has none and `b` has none, 0.0 when only `b` has some)."""
    same = bool(np.array_equal(a, b))
    pixels = float(((a > 0) == (b > 0)).mean())
    t = overlap_table(a, b)
    if t.n_gt == 0:
        worst = 1.0 if t.n_pred == 0 else 0.0
    else:
        best = np.zeros(t.n_gt)
        np.maximum.at(best, t.rows, t.iou)
        worst = float(best.min())
    return {"identical": same, "pixel_agreement": pixels, "min_object_iou": worst}


def summarise(pairs: list[tuple[np.ndarray, np.ndarray]]) -> dict[str, float]:
    """Agreement over images: share identical, lowest pixel agreement, lowest object IoU."""
    rows = [agreement(a, b) for a, b in pairs]
    return {
        "identical_share": float(np.mean([r["identical"] for r in rows])),
        "min_pixel_agreement": float(min(r["pixel_agreement"] for r in rows)),
        "min_object_iou": float(min(r["min_object_iou"] for r in rows)),
    }


def test_images(root: Path, limit: int | None) -> list[Path]:
    """The stage1_test images (each `<id>/images/<id>.png`), sorted, the first `limit` of them."""
    files = sorted(root.glob("*/images/*.png"))
    return files[:limit] if limit else files


def quick_checkpoint(train: Path, out: Path, steps: int, smoke: bool) -> Path:
    """A U-Net fine-tuned for `steps` steps: resnet18 on 192 px crops, or a tiny one on synthetic data."""
    model = {"encoder": "tu-mobilenetv3_small_050"} if smoke else {"encoder": "resnet18"}
    cfg = FinetuneConfig.model_validate(
        {
            "data": {"train": train, "task": "instance", "labelled_images": 3 if smoke else 24},
            "model": model,
            "train": {
                "epochs": 1,
                "steps_per_epoch": steps,
                "batch_size": 2 if smoke else 8,
                "crop_size": 32 if smoke else 192,
            },
            "output": out,
        }
    )
    return finetune(cfg, progress=False).best_checkpoint


def measure(checkpoint: Path, images: list[Path], out: Path, repeats: int) -> dict:
    """Interleaved predict runs per engine: best seconds of each, and the label maps of the last."""
    seconds: dict[str, list[float]] = {e: [] for e in ENGINES}
    labels: dict[str, list[np.ndarray]] = {}
    for r in range(repeats):
        for engine in ENGINES:
            folder = out / f"{engine}{r}"
            start = time.perf_counter()
            report = predict_files(
                checkpoint, images, folder, progress=False, formats="tiff", engine=engine, overwrite=True
            )
            seconds[engine].append(time.perf_counter() - start)
            if report.failed:
                raise SystemExit(f"{engine}: {len(report.failed)} images failed: {report.failed}")
            labels[engine] = [read_image(f) for f in report.labels]
    return {"seconds": {e: min(s) for e, s in seconds.items()}, "labels": labels}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--checkpoint", type=Path, help="a fine-tuned checkpoint (default: train a quick one)")
    ap.add_argument("--images", type=int, help="the first N stage1_test images (default: all 65)")
    ap.add_argument("--repeats", type=int, default=2, help="interleaved runs per engine (the fastest counts)")
    ap.add_argument("--steps", type=int, default=30, help="fine-tuning steps of the quick checkpoint")
    ap.add_argument("--smoke", action="store_true", help="synthetic data and a tiny model (for the tests)")
    ap.add_argument("--out", type=Path, help="working folder (default: a temporary one)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="predict_engines-") as tmp:
        out = args.out or Path(tmp)
        if args.smoke:
            from sslseg.data.synth import write_synthetic_dataset

            train = write_synthetic_dataset(out / "synth", n_images=6, size=64, seed=0)
            images = sorted((train / "images").iterdir())[: args.images or 3]
            steps = min(args.steps, 2)
        else:
            train = require("dsb2018", "stage1_train")
            images = test_images(require("dsb2018", "stage1_test"), args.images)
            steps = args.steps
        checkpoint = args.checkpoint or quick_checkpoint(train, out / "model", steps, args.smoke)
        result = measure(checkpoint, images, out / "predictions", args.repeats)
    per_s = {e: len(images) / s for e, s in result["seconds"].items()}
    ratio = per_s["onnx"] / per_s["torch"]
    agree = summarise(list(zip(result["labels"]["torch"], result["labels"]["onnx"], strict=True)))
    emit(
        benchmark="predict_engines",
        hardware=hardware(),
        threads=torch.get_num_threads(),
        images=len(images),
        data="synthetic (smoke)" if args.smoke else "dsb2018 stage1_test",
        torch_images_per_s=round(per_s["torch"], 3),
        onnx_images_per_s=round(per_s["onnx"], 3),
        onnx_over_torch=round(ratio, 3),
        bar=SPEED_BAR,
        passes=ratio >= SPEED_BAR and agree["identical_share"] == 1.0,
        **agree,
    )


if __name__ == "__main__":
    main()
