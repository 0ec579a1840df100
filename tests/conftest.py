"""Shared test helpers: the real datasets (skipped cleanly when absent) and a tiny trained checkpoint."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from sslseg.config import FinetuneConfig, deep_merge
from sslseg.data.locations import real_data_root
from sslseg.data.synth import write_synthetic_dataset
from sslseg.finetune import finetune

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def finished_cell(dataset: str, row: str, budget: int, seed: int, aji: float):
    """A study's finished fine-tuning cell of `budget` labelled images, as the store gives it back."""
    from sslseg.study.store import JobRow

    return JobRow(
        key=f"{dataset}/{row}/finetuned/n{budget}/s{seed}",
        kind="finetune",
        dataset=dataset,
        pretraining=row,
        state="finetuned",
        seed=seed,
        status="done",
        config={"data": {"labelled_images": budget}},
        metrics={"aji": aji},
        seconds={"total": 10.0},
    )


def benchmark_module(name: str) -> ModuleType:
    """A script of benchmarks/ imported as a module (its own imports of `_common` resolve there too)."""
    sys.path.insert(0, str(BENCHMARKS))
    try:
        return importlib.import_module(name)
    finally:
        sys.path.remove(str(BENCHMARKS))


def run_benchmark_script(script: str, *args: str, cwd: Path, timeout: float = 600) -> list[dict]:
    """Run a script of benchmarks/ as a user would (this checkout's sslseg first on the path) and return its
    JSON lines; a non-zero exit fails the test with the end of its stderr."""
    src = str(Path(__file__).resolve().parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / script), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        cwd=cwd,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads(x) for x in done.stdout.splitlines() if x.startswith("{")]


def real_data(*parts: str) -> Path:
    """A folder of the real benchmark data, or skip the test saying where it was looked for."""
    path = real_data_root().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set SSLSEG_DATA to the shared data folder)")
    return path


def tiny_instance_checkpoint(root: Path, **settings: Any) -> Path:
    """A tiny instance model on 4 synthetic 48 px images, trained for one step (its predictions need not be
    good, only real); `settings` are merged over the base config, e.g. model={"encoder": ...}."""
    data = write_synthetic_dataset(root / "data", n_images=4, size=48, seed=1)
    base = {
        "data": {"train": data, "task": "instance", "val_fraction": 0.25, "test_fraction": 0.0},
        "model": {"encoder": "resnet18", "decoder_channels": [16, 16, 8, 8, 8]},
        "train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 2, "crop_size": 32},
        "output": root / "run",
    }
    cfg = FinetuneConfig.model_validate(deep_merge(base, settings))
    return finetune(cfg, progress=False).best_checkpoint


def semi_instance_config(
    data: Path, out: Path, semi: dict[str, Any], steps_per_epoch: int = 3
) -> FinetuneConfig:
    """The small semi-supervised instance run the self-training and semi-supervised tests fine-tune: `data`
    split 60/20/20 with a third of the training images labelled, 64 px crops and tiles, `steps_per_epoch`
    steps of one epoch, no post-processing tuning (fast), and the `semi` settings as given."""
    return FinetuneConfig.model_validate(
        {
            "data": {
                "train": data,
                "task": "instance",
                "val_fraction": 0.2,
                "test_fraction": 0.2,
                "label_fraction": 0.34,
            },
            "model": {"encoder": "resnet18", "decoder_channels": [32, 16, 16, 8, 8]},
            "train": {"epochs": 1, "steps_per_epoch": steps_per_epoch, "batch_size": 2, "crop_size": 64},
            "postprocess": {"tune": False},
            "inference": {"tile_size": 64},
            "semi": semi,
            "output": out,
        }
    )


def small_instance_config(root: Path, **settings: Any) -> FinetuneConfig:
    """An end-to-end instance run on 8 synthetic 80 px images (2 steps, 64 px crops) with the default head;
    `settings` are merged over it, e.g. loss={"object_balance": 1.0}."""
    data = write_synthetic_dataset(root / "synth", n_images=8, size=80, seed=2)
    base = {
        "data": {"train": data, "task": "instance", "val_fraction": 0.25, "test_fraction": 0.25},
        "model": {"encoder": "resnet18", "decoder_channels": [32, 16, 16, 8, 8]},
        "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "crop_size": 64},
        "inference": {"tile_size": 64},
        "output": root / "run",
    }
    return FinetuneConfig.model_validate(deep_merge(base, settings))
