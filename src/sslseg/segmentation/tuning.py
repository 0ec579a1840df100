"""Choosing instance post-processing thresholds on the validation split, after training.

The network's probabilities are computed once per validation image; only the cheap watershed is repeated
over a small grid, and the setting with the best mean validation score wins (the test split is never used).
"""

from __future__ import annotations

import itertools

import numpy as np

from sslseg.config import PostprocessConfig
from sslseg.data.datasets import LoadedSample
from sslseg.metrics import instance_scores
from sslseg.segmentation.heads import instance_head
from sslseg.segmentation.inference import probabilities_to_labels
from sslseg.segmentation.module import SegmentationModule
from sslseg.segmentation.tasks import task_named


def tune_postprocess(
    module: SegmentationModule, samples: list[LoadedSample], grid: dict[str, tuple[float, ...]] | None = None
) -> tuple[PostprocessConfig, float, float]:
    """Best post-processing on `samples` by the task's primary metric: (config, its score, default's score).
    `grid` defaults to the instance head's own threshold grid."""
    cfg = module.cfg
    head = cfg.model.instance_head
    grid = grid or instance_head(head).tuning_grid
    metric = task_named(cfg.data.task).primary_metric
    probs = [module.probabilities(s.image, s.native_shape) for s in samples]

    def score(post: PostprocessConfig) -> float:
        return float(
            np.mean(
                [
                    instance_scores(s.labels, probabilities_to_labels(p, cfg.data.task, post, head))[metric]
                    for s, p in zip(samples, probs, strict=True)
                ]
            )
        )

    default = score(cfg.postprocess)
    best, best_score = cfg.postprocess, default
    keys = list(grid)
    for values in itertools.product(*(grid[k] for k in keys)):
        candidate = cfg.postprocess.model_copy(update=dict(zip(keys, values, strict=True)))
        s = score(candidate)
        if s > best_score:
            best, best_score = candidate, s
    return best, best_score, default
