"""Training targets derived from labels: class maps for semantic tasks, foreground + per-instance
normalised distance maps for instance tasks (the reference's distance-map regression)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage


def instance_distance_map(labels: np.ndarray) -> np.ndarray:
    """Euclidean distance to each instance's border, scaled to 1 at the instance's centre (0 on background)."""
    out = np.zeros(labels.shape, dtype=np.float32)
    for idx, sl in enumerate(ndimage.find_objects(labels), start=1):
        if sl is None:
            continue
        # pad by one so an object touching the crop edge still gets distance 1 at its border
        padded = np.pad(labels[sl] == idx, 1)
        dist = ndimage.distance_transform_edt(padded)[1:-1, 1:-1]
        peak = dist.max()
        if peak > 0:
            region = labels[sl] == idx
            out[sl][region] = (dist[region] / peak).astype(np.float32)
    return out


def instance_targets(labels: np.ndarray) -> np.ndarray:
    """2×H×W float32 target for instance training: [foreground, normalised distance]."""
    return np.stack([(labels > 0).astype(np.float32), instance_distance_map(labels)])


def semantic_classes(mask: np.ndarray, num_classes: int) -> np.ndarray:
    """A mask as class indices: 0/255 binary masks become 0/1; values must lie in [0, num_classes)."""
    mask = np.asarray(mask)
    values = np.unique(mask)
    if num_classes == 2 and set(values.tolist()) <= {0, 255}:
        return (mask > 0).astype(np.int64)
    if values.min(initial=0) < 0 or values.max(initial=0) >= num_classes:
        expected = "{0, 1} or {0, 255}" if num_classes == 2 else f"0 … {num_classes - 1}"
        raise ValueError(
            f"mask values {values.tolist()[:10]} do not fit {num_classes} classes (expected {expected}); "
            "if the mask has more classes, set data.num_classes"
        )
    return mask.astype(np.int64)
