"""Segmentation metrics: per-image Dice/IoU on class maps and instance metrics on label maps."""

from sslseg.metrics.instance import (
    OUTCOMES,
    aji,
    aji_plus,
    dsb_score,
    instance_scores,
    matching_scores,
    mean_scores,
    missed_objects,
    object_outcomes,
    overlap_table,
    panoptic_quality,
)
from sslseg.metrics.pixel import semantic_scores

__all__ = [
    "OUTCOMES",
    "aji",
    "aji_plus",
    "dsb_score",
    "instance_scores",
    "matching_scores",
    "mean_scores",
    "missed_objects",
    "object_outcomes",
    "overlap_table",
    "panoptic_quality",
    "semantic_scores",
]
