"""Training targets derived from labels: class maps for semantic tasks, and for instance tasks the maps
each instance representation learns (`INSTANCE_TARGETS`): foreground + per-instance normalised distance
(the reference's distance-map regression), optionally with the borders where objects touch."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
from scipy import ndimage

from sslseg.data.scale import typical_area

# Pixels within this many pixels (chessboard) of two different objects are contact pixels: both sides of a
# shared border and the narrow background gaps between near neighbours. Two pixels wide on each side is what
# a network at the working scale of ~24 px nuclei can still place; wider bands swallow small nuclei.
CONTACT_RADIUS = 2


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


def contact_map(labels: np.ndarray, radius: int = CONTACT_RADIUS) -> np.ndarray:
    """1 where a (2·radius+1)² window sees two different objects, else 0 (float32 H×W).

    The largest and the smallest object id in each window differ exactly where two objects meet, so one
    maximum and one minimum filter mark every touching border and narrow gap at once, whatever the count."""
    labels = np.asarray(labels, dtype=np.int64)
    size = 2 * radius + 1
    none = int(labels.max(initial=0)) + 1  # stands for background in the minimum, so that it never wins
    largest = ndimage.maximum_filter(labels, size=size, mode="constant", cval=0)
    smallest = ndimage.minimum_filter(
        np.where(labels > 0, labels, none), size=size, mode="constant", cval=none
    )
    return ((smallest != none) & (largest != smallest)).astype(np.float32)


def contact_targets(labels: np.ndarray) -> np.ndarray:
    """3×H×W float32 target: [foreground, normalised distance, contact] (see `contact_map`)."""
    return np.concatenate([instance_targets(labels), contact_map(labels)[None]])


@dataclass(frozen=True)
class ObjectBalance:
    """How object balancing weights pixels (`object_balance_weights`); `loss.*` in the config sets it."""

    exponent: float = 1.0
    max_weight: float = 5.0
    contrast: bool = True
    ring: int = 2


def object_balance_weights(
    labels: np.ndarray, image: np.ndarray | None = None, balance: ObjectBalance | None = None
) -> np.ndarray:
    """Per-pixel loss weights (float32 H×W, ≥ 1) that give small and dim objects their share of the loss.

    Each object's pixels weigh w = min(max((A / area)^p, 1) · max((C / contrast)^p, 1), max_weight): A is the
    image's typical object area (`typical_area`), contrast is the object's mean intensity (channels averaged)
    minus the background's median and C the median of those contrasts (the contrast factor only with
    `balance.contrast` and an `image`, C×H×W as the network sees it). Objects at least as large and as bright
    as typical keep weight 1, as does background, except for a ring of `balance.ring` px around each object,
    which takes the weight of the nearest object, so that a small object is not grown into its background.
    These are the measures `benchmarks/dsb2018_errors.py` finds the missed nuclei by."""
    b = balance or ObjectBalance()
    labels = np.asarray(labels, dtype=np.int64)
    n = int(labels.max(initial=0))
    weights = np.ones(labels.shape, np.float32)
    if n == 0:
        return weights
    area = np.bincount(labels.ravel(), minlength=n + 1)[1:].astype(np.float64)
    present = area > 0
    factor = np.ones(n)
    factor[present] = np.maximum((typical_area(area) / area[present]) ** b.exponent, 1.0)
    if b.contrast and image is not None and (labels == 0).any():
        seen = np.asarray(image, dtype=np.float64).reshape(-1, *labels.shape).mean(axis=0)
        ids = np.flatnonzero(present) + 1
        contrast = ndimage.mean(seen, labels, ids) - float(np.median(seen[labels == 0]))
        typical = float(np.median(contrast))
        if typical > 0:
            # an object no brighter than the background gets the largest weight
            relative = np.maximum(contrast / typical, 1.0 / b.max_weight)
            factor[ids - 1] *= np.maximum(relative**-b.exponent, 1.0)
    lookup = np.concatenate([[1.0], np.minimum(factor, b.max_weight)]).astype(np.float32)
    weights = lookup[labels]
    if b.ring > 0 and (labels == 0).any() and (lookup > 1).any():
        distance, (iy, ix) = ndimage.distance_transform_edt(labels == 0, return_indices=True)
        ring = (labels == 0) & (distance <= b.ring)
        weights[ring] = lookup[labels[iy[ring], ix[ring]]]
    return weights


@dataclass(frozen=True)
class TargetLayout:
    """The target maps of one instance representation: how they are made from an instance label map, and
    which of its channels are binary (re-binarised after a zoom, where interpolation blurs them)."""

    channels: tuple[str, ...]
    make: Callable[[np.ndarray], np.ndarray]
    binary: tuple[int, ...]


INSTANCE_TARGETS: dict[str, TargetLayout] = {
    "distance": TargetLayout(("foreground", "distance"), instance_targets, (0,)),
    "contact": TargetLayout(("foreground", "distance", "contact"), contact_targets, (0, 2)),
}
# The representation a run uses unless `model.instance_head` says otherwise: on DSB2018 it halves the merged
# nuclei of "distance" at no measurable cost (benchmarks/RESULTS.md).
DEFAULT_INSTANCE_HEAD = "contact"


def instance_target_layout(head: str) -> TargetLayout:
    """The target layout of an instance representation, by name; an unknown name lists the valid ones."""
    try:
        return INSTANCE_TARGETS[head]
    except KeyError:
        raise ValueError(
            f"unknown instance head '{head}'; choose one of {', '.join(INSTANCE_TARGETS)}"
        ) from None


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
