"""Scoring a trained model on a labelled dataset: per-image metrics at native resolution, and their mean."""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

import sslseg
from sslseg.atomic import write_json, write_text
from sslseg.data.datasets import LoadedSample, load_heldout
from sslseg.data.layouts import find_samples
from sslseg.errors import ConfigError, DataError
from sslseg.metrics import mean_scores
from sslseg.segmentation.module import SegmentationModule
from sslseg.segmentation.segmenter import Segmenter, load_module


def load_model(checkpoint: str | Path, device: str = "auto", tta: bool | None = None) -> SegmentationModule:
    """Load a fine-tuned model from a Lightning checkpoint (or a run folder holding `best.ckpt`) onto
    `device` (see `sslseg.device.resolve_device`: auto = cuda > mps > cpu); `tta` overrides the test-time
    augmentation setting it was trained with. (`sslseg.segmentation.segmenter.load_module`, which
    `Segmenter.from_checkpoint` builds on.)"""
    return load_module(checkpoint, device=device, tta=tta)


def evaluate_samples(
    module: SegmentationModule | Segmenter, samples: list[LoadedSample], progress: bool = True
) -> list[dict[str, Any]]:
    """Predict every sample with the full inference path and score it by the task's metrics; one row per
    image. `module` is a loaded model or the `Segmenter` built from one (its task resolved once)."""
    segmenter = module if isinstance(module, Segmenter) else Segmenter.from_module(module)
    cfg = segmenter.cfg
    rows = []
    segmenter.module.eval()
    for s in tqdm(samples, desc="evaluating", disable=not progress, leave=False):
        if s.labels is None:
            raise DataError(Path(s.id), "cannot evaluate an image without labels")
        pred = segmenter.segment(s.image, s.native_shape)
        rows.append({"id": s.id, **segmenter.task.scores(pred, s.labels, cfg)})
    return rows


def summarize(rows: list[dict[str, Any]]) -> dict[str, float]:
    """Mean of every numeric metric over images."""
    return mean_scores([{k: v for k, v in r.items() if k != "id"} for r in rows])


def write_rows_csv(path: str | Path, rows: list[dict[str, Any]]) -> None:
    """Per-image metrics as CSV, atomically."""
    buf = io.StringIO()
    if rows:
        writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    write_text(path, buf.getvalue())


def evaluate_checkpoint(
    checkpoint: str | Path,
    data: str | Path,
    out_dir: str | Path | None = None,
    layout: str = "auto",
    mask_suffix: str | None = None,
    progress: bool = True,
    tta: bool | None = None,
    device: str = "auto",
    pixel_size: float | None = None,
) -> dict[str, float]:
    """Score a checkpoint on a labelled dataset; writes `per_image.csv` and `metrics.json` to `out_dir`.
    `tta` overrides the checkpoint's test-time augmentation setting; `device` is auto, cpu, cuda or mps.
    `pixel_size` (µm) overrides the files' own for `data.object_size_um`; the checkpoint's `data.pixel_size`
    described its training images, so it is not applied to this dataset."""
    if pixel_size is not None and not pixel_size > 0:
        raise ConfigError(f"--pixel-size must be a positive number of µm, got {pixel_size}")
    segmenter = Segmenter.from_checkpoint(checkpoint, engine="torch", device=device, tta=tta)
    cfg = segmenter.cfg
    samples = find_samples(data, layout=layout, mask_suffix=mask_suffix)
    if any(s.label is None for s in samples):
        raise DataError(Path(data), "evaluation needs labels, but this dataset has images without labels")
    data_cfg = cfg.data.model_copy(update={"pixel_size": pixel_size})
    loaded = load_heldout(samples, data_cfg, segmenter.in_channels, progress)
    rows = evaluate_samples(segmenter, loaded, progress)
    mean = summarize(rows)
    if out_dir is not None:
        out = Path(out_dir)
        write_rows_csv(out / "per_image.csv", rows)
        write_json(out / "metrics.json", {"data": str(data), "checkpoint": str(checkpoint), "mean": mean})
    return mean


sslseg.entry_point(__name__)  # `from sslseg import evaluate` is callable (see sslseg.API)
