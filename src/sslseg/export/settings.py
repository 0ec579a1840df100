"""The sidecar `sslseg.yaml`: what sslseg does around an exported network (preprocessing, post-processing,
tuned thresholds), written beside every export and read back to make sslseg's label maps without sslseg's
model — its own room because the entry point writes it and the bioimage.io package reads and packs it."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

import sslseg
from sslseg.config import PostprocessConfig
from sslseg.errors import DataError
from sslseg.segmentation.inference import probabilities_to_labels
from sslseg.segmentation.module import SegmentationModule

SIDECAR = "sslseg.yaml"


def sidecar(module: SegmentationModule, checkpoint: str | Path) -> dict[str, Any]:
    """What sslseg does around the network, for whoever runs an exported file: the preprocessing before it
    and the post-processing (with the checkpoint's tuned thresholds) that turns probabilities into labels."""
    cfg = module.cfg
    d = cfg.data
    task = module.task  # resolved once when the module was built
    classes = task.labels_are_classes
    return {
        "sslseg_version": sslseg.__version__,
        "checkpoint": str(checkpoint),
        "task": d.task,
        "num_classes": d.num_classes if classes else None,
        "instance_head": None if classes else cfg.model.instance_head,
        "in_channels": int(module.hparams["in_channels"]),
        "outputs": task.output_names(cfg),
        "activation": task.activation,
        "stride": 2 ** len(cfg.model.decoder_channels),
        "preprocessing": {
            "normalization": d.normalization,
            "bright_objects": d.bright_objects,
            "scale": d.scale,
            "object_size": d.object_size,
            "object_size_um": d.object_size_um,
        },
        "postprocess": cfg.postprocess.model_dump(mode="json"),
        "inference": cfg.inference.model_dump(mode="json"),
    }


@dataclass(frozen=True)
class ExportedSettings:
    """The sidecar of an export read back: enough to turn the exported network's probabilities into the
    label maps sslseg would make."""

    task: str
    instance_head: str | None
    outputs: list[str]
    postprocess: PostprocessConfig
    preprocessing: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)


def load_sidecar(path: str | Path) -> ExportedSettings:
    """Read `sslseg.yaml` (or the export folder holding it); a missing or malformed file is a DataError."""
    path = Path(path)
    if path.is_dir():
        path = path / SIDECAR
    if not path.is_file():
        raise DataError(path, f"no {SIDECAR} here: not an sslseg export")
    try:
        raw = yaml.safe_load(path.read_text())
        return ExportedSettings(
            task=raw["task"],
            instance_head=raw.get("instance_head"),
            outputs=list(raw["outputs"]),
            postprocess=PostprocessConfig.model_validate(raw["postprocess"]),
            preprocessing=dict(raw["preprocessing"]),
            raw=raw,
        )
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as e:
        raise DataError(path, f"not a readable sslseg export sidecar: {e}") from None


def labels_from_probabilities(probs: np.ndarray, settings: ExportedSettings) -> np.ndarray:
    """K×H×W probabilities of an exported network → the label map sslseg's post-processing makes of them
    (classes, or instances by the sidecar's head and thresholds)."""
    if probs.ndim != 3 or probs.shape[0] != len(settings.outputs):
        raise ValueError(
            f"expected {len(settings.outputs)}×H×W probabilities ({', '.join(settings.outputs)}), "
            f"got shape {probs.shape}"
        )
    tensor = torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32))
    return probabilities_to_labels(tensor, settings.task, settings.postprocess, settings.instance_head or "")
