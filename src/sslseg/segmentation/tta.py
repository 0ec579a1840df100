"""Label maps of one image under the D4 test-time augmentations and the task's agreement between two of
them: the disagreement that study uncertainty and the choice of images to annotate next both read."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from sslseg.data.datasets import LoadedSample
from sslseg.nn.unet import evaluating
from sslseg.segmentation.inference import (
    D4_SIZE,
    d4_inverse,
    d4_transform,
    predict_probabilities,
    probabilities_to_labels,
)
from sslseg.segmentation.module import SegmentationModule
from sslseg.segmentation.tasks import task_named


def tta_predictions(module: SegmentationModule, sample: LoadedSample, n: int = D4_SIZE) -> list[np.ndarray]:
    """Label maps at native resolution for the first `n` of the 8 D4 test-time augmentations (identity
    first): each flipped/rotated image is predicted with the module's own inference and post-processing
    settings, its probabilities mapped back to the original orientation before labelling."""
    if not 1 <= n <= D4_SIZE:
        raise ValueError(f"n must be between 1 and {D4_SIZE} (the D4 group), got {n}")
    cfg = module.cfg
    task = cfg.data.task
    h, w = sample.native_shape
    single = cfg.inference.model_copy(update={"tta": False})  # one orientation per prediction here
    out = []
    with evaluating(module):
        for t in range(n):
            shape = (w, h) if t % 2 else (h, w)  # odd quarter turns swap the sides
            image = d4_transform(sample.image, t)
            head = cfg.model.instance_head
            probs = predict_probabilities(
                module.net, image, task, shape, single, cfg.data.measured_object_size, head
            )
            probs = d4_inverse(probs, t).contiguous()
            out.append(probabilities_to_labels(probs, task, cfg.postprocess, head))
    return out


def agreement_metric(module: SegmentationModule) -> Callable[[np.ndarray, np.ndarray], float]:
    """The task's agreement metric(reference, other) of two label maps: AJI for instance tasks, Dice of the
    foreground (mean over foreground classes) for semantic tasks, as the task's scores compute them."""
    return task_named(module.cfg.data.task).agreement(module.cfg)
