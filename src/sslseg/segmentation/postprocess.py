"""From network outputs to label maps: argmax for classes, marker-controlled watershed for instances."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.morphology import convex_hull_image
from skimage.segmentation import relabel_sequential, watershed

from sslseg.config import PostprocessConfig
from sslseg.data.scale import typical_area


def distance_to_instances(
    foreground: np.ndarray,
    distance: np.ndarray,
    cfg: PostprocessConfig | None = None,
    contact: np.ndarray | None = None,
) -> np.ndarray:
    """Instances from a foreground probability and a normalised distance map (both H×W in [0, 1]).

    Seeds are connected regions of high distance (nucleus centres); watershed on the inverted distance
    grows them inside the foreground. Foreground blobs that got no seed still become objects.

    With a `contact` probability (where objects touch), seeds are also cut where contact is at least
    `cfg.contact_threshold`, and the watershed climbs contact as well, so neighbours whose distance map has
    no valley between them still get a seed each and meet on the predicted border."""
    cfg = cfg or PostprocessConfig()
    if cfg.smooth_sigma > 0:
        distance = ndimage.gaussian_filter(distance, cfg.smooth_sigma)
    mask = foreground > cfg.fg_threshold
    seeds = (distance > cfg.seed_threshold) & mask
    elevation = -distance
    if contact is not None:
        seeds &= contact < cfg.contact_threshold
        elevation = contact - distance
    markers, _ = ndimage.label(seeds)
    labels = watershed(elevation, markers, mask=mask)
    orphans, n_orphans = ndimage.label(mask & (labels == 0))
    if n_orphans:
        labels = np.where(orphans > 0, orphans + labels.max(), labels)
    if cfg.merge_solidity > 0:
        labels = merge_convex_pairs(labels, cfg.merge_solidity)
    if labels.max() > 0 and (cfg.min_size > 0 or cfg.min_size_fraction > 0):
        sizes = np.bincount(labels.ravel())
        # specks of noise are small next to this image's own nuclei, whatever the magnification; the
        # typical nucleus is taken by area, so that hundreds of specks cannot pass for it
        limit = max(cfg.min_size, cfg.min_size_fraction * typical_area(sizes[1:]))
        small = sizes < limit
        small[0] = False
        labels[small[labels]] = 0
    return relabel_sequential(labels)[0].astype(np.int32)


def touching_pairs(labels: np.ndarray) -> np.ndarray:
    """The pairs (a, b), a < b, of objects that share a 4-connected border, as a K×2 array."""
    pairs = []
    for first, second in ((labels[:, :-1], labels[:, 1:]), (labels[:-1, :], labels[1:, :])):
        touch = (first != second) & (first > 0) & (second > 0)
        a, b = first[touch], second[touch]
        pairs.append(np.stack([np.minimum(a, b), np.maximum(a, b)], axis=1))
    return np.unique(np.concatenate(pairs), axis=0)


def merge_convex_pairs(labels: np.ndarray, solidity: float) -> np.ndarray:
    """Merge two touching objects when together they are as convex as one nucleus: the union's area over
    its convex hull's is at least `solidity`. A nucleus cut in two (a textured stained nucleus, two distance
    peaks) forms a convex union; two touching nuclei leave a notch on each side of their border. The most
    convex unions merge first, and an object merges once per call, so chains do not grow into clusters."""
    pairs = touching_pairs(labels)
    if len(pairs) == 0:
        return labels
    boxes = ndimage.find_objects(labels)
    scored = []
    for a, b in pairs:
        box_a, box_b = boxes[a - 1], boxes[b - 1]
        box = tuple(
            slice(min(p.start, q.start), max(p.stop, q.stop)) for p, q in zip(box_a, box_b, strict=True)
        )
        union = np.isin(labels[box], (a, b))
        hull = convex_hull_image(union)
        scored.append((union.sum() / max(hull.sum(), 1), a, b))
    mapping = np.arange(labels.max() + 1, dtype=labels.dtype)
    merged: set[int] = set()
    for value, a, b in sorted(scored, reverse=True):
        if value < solidity:
            break
        if a in merged or b in merged:
            continue
        mapping[b] = a
        merged.update((a, b))
    return mapping[labels]


def probabilities_to_classes(probs: np.ndarray) -> np.ndarray:
    """K×H×W class probabilities → H×W class indices."""
    return probs.argmax(axis=0).astype(np.int32)
