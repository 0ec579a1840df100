"""Self-training's pseudo-labels: a teacher fine-tuned on the labelled images segments unlabeled ones, and
the images it is surest of become training images, its label maps standing in for annotations."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

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
) -> tuple[list[Sample], list[float]]:
    """Segment `samples` (their own labels, if any, are never read) with `teacher` by its full inference
    path, and return the `keep` share it is surest of (`image_sureness`, at least one image when any has
    objects) as samples whose labels are its label maps, surest first, with their sureness."""
    task = teacher.task
    post, head = teacher.cfg.postprocess, teacher.cfg.model.instance_head
    scored: list[tuple[float, Sample]] = []
    for s in tqdm(samples, desc="pseudo-labelling", disable=not progress, leave=False):
        blind = Sample(s.id, s.image, None)  # an unlabeled image, whatever its sample holds
        (image,) = load_heldout([blind], data, channels, progress=False)
        probs = teacher.probabilities(image.image, image.native_shape)
        certainty, foreground = task.certainty(probs.numpy())
        sure = image_sureness(certainty, foreground, confidence)
        if sure is None:
            continue
        labels = probabilities_to_labels(probs, task.name, post, head)
        scored.append((sure, Sample(s.id, s.image, PseudoLabel(labels, s.image))))
    scored.sort(key=lambda pair: -pair[0])
    kept = scored[: math.ceil(keep * len(scored))]
    return [s for _, s in kept], [sure for sure, _ in kept]
