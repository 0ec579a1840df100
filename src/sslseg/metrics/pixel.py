"""Per-image Dice and IoU on thresholded (hard) semantic class maps.

Convention: a class absent from both the prediction and the target scores 1.0 for that class
(nothing to find, nothing found: perfect agreement), and is left out of the foreground mean.
"""

from __future__ import annotations

import numpy as np


def _check_class_map(a: np.ndarray, name: str, num_classes: int) -> np.ndarray:
    if not (np.issubdtype(a.dtype, np.integer) or a.dtype == np.bool_):
        raise ValueError(f"{name} must be an integer class map, got dtype {a.dtype}")
    if a.size:
        lo, hi = int(a.min()), int(a.max())
        if lo < 0 or hi >= num_classes:
            raise ValueError(f"{name} holds class values in [{lo}, {hi}], expected [0, {num_classes - 1}]")
    return a.ravel().astype(np.intp, copy=False)


def semantic_scores(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict[str, float]:
    """Dice and IoU of the foreground classes of one image, from integer class maps (0 = background).

    Two classes give {"dice", "iou"} of class 1; more give "dice_<k>"/"iou_<k>" for k >= 1 plus
    "dice"/"iou", the mean over foreground classes present in pred or target (1.0 when none is).
    """
    pred = np.asarray(pred)
    target = np.asarray(target)
    if pred.shape != target.shape:
        raise ValueError(f"pred shape {pred.shape} does not match target shape {target.shape}")
    if num_classes < 2:
        raise ValueError(f"num_classes must be >= 2 (background plus at least one class), got {num_classes}")
    p = _check_class_map(pred, "pred", num_classes)
    t = _check_class_map(target, "target", num_classes)

    # Confusion matrix in one pass: rows = target class, columns = predicted class.
    cm = np.bincount(t * num_classes + p, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )
    inter = np.diag(cm).astype(np.float64)
    size_sum = (cm.sum(axis=1) + cm.sum(axis=0)).astype(np.float64)
    union = size_sum - inter
    present = size_sum > 0
    dice = np.where(present, 2.0 * inter / np.maximum(size_sum, 1.0), 1.0)
    iou = np.where(present, inter / np.maximum(union, 1.0), 1.0)

    if num_classes == 2:
        return {"dice": float(dice[1]), "iou": float(iou[1])}
    out: dict[str, float] = {}
    for k in range(1, num_classes):
        out[f"dice_{k}"] = float(dice[k])
        out[f"iou_{k}"] = float(iou[k])
    fg_present = present[1:]
    if fg_present.any():
        out["dice"] = float(dice[1:][fg_present].mean())
        out["iou"] = float(iou[1:][fg_present].mean())
    else:
        out["dice"] = out["iou"] = 1.0
    return out
