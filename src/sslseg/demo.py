"""The main job on built-in data: a small study on synthetic nuclei — random init against the three ways of
using the unlabeled images (DenseCL pretraining, semi-supervised fine-tuning, and choosing which images to
annotate with typiclust), at 2, 8 and 32 annotated images, two seeds — ending in the report that says which
helps."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch
import yaml

from sslseg.atomic import write_text
from sslseg.data.synth import write_synthetic_dataset
from sslseg.study.report import report_study
from sslseg.study.runner import run_study
from sslseg.study.spec import StudyConfig

# Crowded, touching, dim and noisy nuclei: on the generator's default images random init saturates at a few
# annotated images and the report's curves stay flat. On these, with 144 fine-tuning steps, random init's test
# AJI rises with annotation (two seeds: 0.32/0.38 at 2 images, 0.46/0.41 at 8, 0.50/0.44 at 32); with 48
# steps it did not (0.31/0.25, 0.23/0.26, 0.33/0.33): the model, not the labels, was the limit.
HARD_NUCLEI: dict[str, Any] = {
    "coverage": (0.2, 0.4),
    "cluster_prob": 0.6,
    "dim_fraction": 0.35,
    "brightness": 700.0,
    "read_noise": 30.0,
    "radius_sigma": 0.4,
}


def demo_study(out: Path, quick: bool = False) -> dict[str, Any]:
    """The demo's study file as a dict (written to `<out>/study.yaml`, so it can be edited and rerun)."""
    return {
        "name": "demo",
        "output": str(out / "study"),
        "encoder": "resnet18",
        "datasets": [
            {
                "name": "synthetic-nuclei",
                "train": str(out / "data"),
                "task": "instance",
                "val_fraction": 0.15,
                "test_fraction": 0.25,
                "views": "fluorescence",
            }
        ],
        "pretrainings": [
            {"name": "random", "init": "random"},
            {"name": "densecl", "method": "densecl"},
            # the other ways of using the unlabeled images: a mean teacher on them while fine-tuning, and
            # choosing the images to annotate (typical and diverse ones) instead of drawing them at random
            {"name": "semi", "init": "random", "finetune": {"semi": {"enabled": True}}},
            {"name": "typiclust", "init": "random", "selection": {"strategy": "typiclust"}},
        ],
        # annotated images, validation included (none below 4 images: a fixed schedule there)
        "labelled_images": [2, 4] if quick else [2, 8, 32],
        "seeds": [0, 1],
        "encoder_states": ["finetuned"],
        "pretrain": {
            "views": {"size": 32 if quick else 48},
            "train": {
                "epochs": 1 if quick else 3,
                "steps_per_epoch": 2 if quick else 10,
                "batch_size": 8 if quick else 32,
            },
        },
        "finetune": {
            "model": {"decoder_channels": [32, 16, 16, 16, 16] if quick else [64, 32, 16, 16, 16]},
            "train": {
                "epochs": 1 if quick else 4,
                "steps_per_epoch": 2 if quick else 36,
                "batch_size": 2 if quick else 8,
                "crop_size": 32 if quick else 64,
                "patience": 4,
            },
        },
        "analysis": {"max_images": 8 if quick else 24, "examples": 2 if quick else 3},
    }


def demo_workers() -> int | None:
    """Two CPU workers of one thread each where there are two cores: the demo's small U-Nets barely use a
    second thread, so two cells side by side finish about 1.3x sooner than one after another with two
    threads each (measured on the demo, RESULTS.md). On a GPU the runner's default (one worker per GPU)."""
    if torch.cuda.is_available():
        return None
    return min(2, os.cpu_count() or 1)


def run_demo(out: str | Path, quick: bool = False) -> str:
    """Generate the data (once), run the demo study (finished jobs of an earlier run are reused) and write
    its report; returns the verdict and where the report is."""
    out = Path(out)
    data = out / "data"
    if not (data / "images").is_dir():
        write_synthetic_dataset(
            data, n_images=16 if quick else 48, size=64 if quick else 128, seed=0, **HARD_NUCLEI
        )
    tree = demo_study(out, quick)
    write_text(out / "study.yaml", yaml.safe_dump(tree, sort_keys=False))
    study = StudyConfig.model_validate(tree)
    summary = run_study(study, workers=demo_workers())
    paths = report_study(summary.study_dir)
    verdict = paths["markdown"].read_text().split("## Verdict\n", 1)[-1].split("\n## ", 1)[0].strip()
    return f"{verdict}\n  report: {paths['html'].resolve()}\n  study file: {(out / 'study.yaml').resolve()}"
