"""The main job on built-in data: a synthetic nuclei set, a fine-tuned U-Net, its scores and predictions."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from sslseg.config import FinetuneConfig
from sslseg.data.synth import write_synthetic_dataset
from sslseg.finetune import finetune
from sslseg.predict import predict_files


def run_demo(out: str | Path, quick: bool = False) -> str:
    """Generate data, fine-tune with 50 % labels, score the held-out test images, predict three of them."""
    out = Path(out)
    data = out / "data"
    if not (data / "images").is_dir():
        write_synthetic_dataset(data, n_images=16 if quick else 60, size=128 if quick else 256, seed=0)
    shutil.rmtree(out / "finetune", ignore_errors=True)  # the demo owns its folder: a rerun starts afresh
    cfg = FinetuneConfig.model_validate(
        {
            "data": {
                "train": data,
                "task": "instance",
                "val_fraction": 0.15,
                "test_fraction": 0.25,
                "label_fraction": 0.5,
            },
            "model": {"encoder": "resnet18", "init": "random", "decoder_channels": [128, 64, 32, 16, 16]},
            "train": {
                "epochs": 2 if quick else 8,
                "steps_per_epoch": 3 if quick else 25,
                "batch_size": 4 if quick else 8,
                "crop_size": 64 if quick else 128,
                "patience": 5,
            },
            "output": out / "finetune",
        }
    )
    result = finetune(cfg)
    test_ids = json.loads((result.output / "split.json").read_text())["test"][:3]
    test_images = [data / "images" / f"{i}.tif" for i in test_ids]
    predict_files(result.best_checkpoint, test_images, out / "predictions", progress=False)
    t = result.test
    return (
        f"test AJI {t.get('aji', float('nan')):.3f}, PQ {t.get('pq', float('nan')):.3f}, "
        f"DSB score {t.get('dsb_score', float('nan')):.3f} on {result.summary['n_test']} images "
        f"({result.summary['n_labelled']} labelled training images); "
        f"overlays in {out / 'predictions'}"
    )
