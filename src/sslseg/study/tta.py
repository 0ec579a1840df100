"""Test-time-augmentation uncertainty of a fine-tuned model for the study: label maps under the D4
augmentations, their disagreement under the task's metric, and the error of the un-augmented prediction.

Runs in eval mode under torch.no_grad on the device the model's parameters are on (see
`sslseg.nn.unet.evaluating`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sslseg.data.datasets import LoadedSample
from sslseg.metrics.uncertainty import inverted_agreement
from sslseg.segmentation.inference import D4_SIZE
from sslseg.segmentation.module import SegmentationModule
from sslseg.segmentation.tasks import task_named
from sslseg.segmentation.tta import agreement_metric, tta_predictions


def tta_uncertainty(
    module: SegmentationModule, samples: Sequence[LoadedSample], n: int = D4_SIZE
) -> list[dict[str, Any]]:
    """Per image: {"id", "uncertainty", "error", "metric"}, where uncertainty is the inverted agreement of
    the n TTA label maps under the task's metric (`agreement_metric`) and error is 1 − that metric of the
    un-augmented prediction against the labels (NaN without labels); feed both to
    `uncertainty_error_correlation`."""
    if n < 2:
        raise ValueError(f"TTA uncertainty needs at least 2 augmentations, got {n}")
    metric = agreement_metric(module)
    name = task_named(module.cfg.data.task).primary_metric
    rows = []
    for s in samples:
        preds = tta_predictions(module, s, n)
        error = float("nan") if s.labels is None else 1.0 - float(metric(s.labels, preds[0]))
        rows.append(
            {"id": s.id, "uncertainty": inverted_agreement(preds, metric), "error": error, "metric": name}
        )
    return rows
