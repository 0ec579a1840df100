"""Self-training's pseudo-labels: a teacher fine-tuned on the labelled images segments unlabeled ones, and
the images it is surest of become training images, its label maps standing in for annotations."""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

from sslseg.atomic import atomic_path
from sslseg.config import DataConfig
from sslseg.data.datasets import load_heldout
from sslseg.data.layouts.base import LabelSource, Sample, check_shape
from sslseg.segmentation.inference import probabilities_to_labels
from sslseg.segmentation.module import SegmentationModule


class PseudoLabel(LabelSource):
    """A label map held in memory (a teacher's prediction), named by its image's path in messages."""

    def __init__(self, labels: np.ndarray, path: Path) -> None:
        self.labels = labels
        self.path = path

    def load(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        return check_shape(self.path, self.labels, shape)


def image_sureness(certainty: np.ndarray, foreground: np.ndarray, confidence: float) -> float | None:
    """How sure a teacher is of one image's objects: 1 − the share of unsure pixels (certainty below
    `confidence`) among the pixels that are foreground or unsure. Confident background does not count, or
    every sparse image would look sure; None when the teacher finds no foreground at all."""
    if not foreground.any():
        return None
    unsure = certainty < confidence
    return 1.0 - float(unsure.sum()) / float((unsure | foreground).sum())


def pseudo_label(
    teacher: SegmentationModule,
    samples: Sequence[Sample],
    data: DataConfig,
    channels: int,
    confidence: float,
    keep: float,
    progress: bool = True,
    folder: Path | None = None,
) -> tuple[list[Sample], list[float]]:
    """Segment `samples` (their own labels, if any, are never read) with `teacher` by its full inference
    path, and return the `keep` share it is surest of (`image_sureness`, at least one image when any has
    objects) as samples whose labels are its label maps, surest first, with their sureness.

    With `folder`, each image's label map and sureness are written there as soon as they are known (one
    file each, atomically, named by what determines them: the teacher's weights and settings and the
    image), and read back instead of predicted again: a run killed part-way resumes where it stopped."""
    task = teacher.task
    post, head = teacher.cfg.postprocess, teacher.cfg.model.instance_head
    key = _teacher_key(teacher, data, channels, confidence) if folder is not None else ""
    scored: list[tuple[float, Sample]] = []
    for s in tqdm(samples, desc="pseudo-labelling", disable=not progress, leave=False):
        record = folder / f"{_image_key(key, s.image)}.npz" if folder is not None else None
        found = _read_record(record) if record is not None else None
        if found is not None:
            sure, labels = found
        else:
            blind = Sample(s.id, s.image, None)  # an unlabeled image, whatever its sample holds
            (image,) = load_heldout([blind], data, channels, progress=False)
            probs = teacher.probabilities(image.image, image.native_shape)
            certainty, foreground = task.certainty(probs.numpy())
            sure = image_sureness(certainty, foreground, confidence)
            labels = probabilities_to_labels(probs, task.name, post, head) if sure is not None else None
            if record is not None:
                _write_record(record, sure, labels)
        if sure is None:
            continue
        scored.append((sure, Sample(s.id, s.image, PseudoLabel(labels, s.image))))
    scored.sort(key=lambda pair: -pair[0])
    kept = scored[: math.ceil(keep * len(scored))]
    return [s for _, s in kept], [sure for sure, _ in kept]


def _teacher_key(teacher: SegmentationModule, data: DataConfig, channels: int, confidence: float) -> str:
    """A digest of everything besides the image that decides a pseudo-label: the teacher's weights and
    config (inference and post-processing settings), how images are loaded, and the confidence."""
    h = hashlib.sha1()
    for name, tensor in sorted(teacher.state_dict().items()):
        h.update(name.encode())
        h.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    settings = [teacher.cfg.model_dump(mode="json"), data.model_dump(mode="json"), channels, confidence]
    h.update(json.dumps(settings, sort_keys=True, default=str).encode())
    return h.hexdigest()


def _image_key(teacher_key: str, image: Path) -> str:
    return hashlib.sha1(f"{teacher_key}\n{Path(image).resolve()}".encode()).hexdigest()


def _write_record(path: Path, sure: float | None, labels: np.ndarray | None) -> None:
    """One image's pseudo-label, written beside and renamed into place (never read half-written)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.savez_compressed(
            fh,
            sureness=np.float64(np.nan if sure is None else sure),
            labels=np.zeros((0, 0), np.int32) if labels is None else labels,
        )


def _read_record(path: Path) -> tuple[float | None, np.ndarray | None] | None:
    """An image's stored pseudo-label (sureness None: the teacher found no object), or None when there is
    none or it cannot be read (then it is predicted again)."""
    if not path.is_file():
        return None
    try:
        with np.load(path) as z:
            sure, labels = float(z["sureness"]), z["labels"]
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile):
        return None
    return (None, None) if math.isnan(sure) else (sure, labels)
