"""Tests for sslseg.metrics.pixel: hand-computed cases, edge cases, and a slow per-class oracle."""

from __future__ import annotations

import numpy as np
import pytest

from sslseg.metrics import semantic_scores


def test_binary_two_squares_overlapping_by_two_pixels():
    target = np.zeros((4, 4), dtype=np.int64)
    pred = np.zeros((4, 4), dtype=np.int64)
    target[0:2, 0:2] = 1  # 4 pixels
    pred[0:2, 1:3] = 1  # 4 pixels, shares column 1 with target: 2 pixels
    s = semantic_scores(pred, target, num_classes=2)
    assert set(s) == {"dice", "iou"}
    assert s["dice"] == pytest.approx(2 * 2 / (4 + 4))  # 0.5
    assert s["iou"] == pytest.approx(2 / 6)  # union = 4 + 4 - 2


def test_bool_maps_are_accepted_for_two_classes():
    target = np.zeros((3, 3), dtype=bool)
    target[1, :] = True
    s = semantic_scores(target.copy(), target, num_classes=2)
    assert s == {"dice": 1.0, "iou": 1.0}


def test_both_empty_scores_one():
    z = np.zeros((5, 5), dtype=np.uint8)
    assert semantic_scores(z, z, 2) == {"dice": 1.0, "iou": 1.0}
    s = semantic_scores(z, z, 4)
    assert all(v == 1.0 for v in s.values())


def test_one_side_empty_scores_zero():
    z = np.zeros((5, 5), dtype=np.int32)
    one = z.copy()
    one[2, 2] = 1
    assert semantic_scores(z, one, 2) == {"dice": 0.0, "iou": 0.0}
    assert semantic_scores(one, z, 2) == {"dice": 0.0, "iou": 0.0}


def test_multiclass_hand_computed_and_absent_class():
    # 1 x 8 strip, classes 0..3; class 3 is absent from both maps.
    target = np.array([[0, 1, 1, 1, 2, 2, 0, 0]])
    pred = np.array([[0, 1, 1, 2, 2, 2, 2, 0]])
    s = semantic_scores(pred, target, num_classes=4)
    # class 1: T = {1,2,3}, P = {1,2}: inter 2 -> dice 4/5, iou 2/3
    assert s["dice_1"] == pytest.approx(4 / 5)
    assert s["iou_1"] == pytest.approx(2 / 3)
    # class 2: T = {4,5}, P = {3,4,5,6}: inter 2 -> dice 4/6, iou 2/4
    assert s["dice_2"] == pytest.approx(4 / 6)
    assert s["iou_2"] == pytest.approx(2 / 4)
    # class 3 absent from both: 1.0 by convention, and left out of the mean
    assert s["dice_3"] == 1.0 and s["iou_3"] == 1.0
    assert s["dice"] == pytest.approx((4 / 5 + 4 / 6) / 2)
    assert s["iou"] == pytest.approx((2 / 3 + 2 / 4) / 2)


def test_class_only_in_pred_counts_in_mean():
    target = np.array([[1, 1, 0, 0]])
    pred = np.array([[1, 1, 2, 0]])
    s = semantic_scores(pred, target, num_classes=3)
    assert s["dice_1"] == 1.0 and s["dice_2"] == 0.0
    assert s["dice"] == pytest.approx(0.5)  # mean of classes 1 and 2 (2 is present in pred)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)"):
        semantic_scores(np.zeros((3, 4), int), np.zeros((4, 3), int), 2)


@pytest.mark.parametrize(
    ("pred", "num_classes"),
    [
        (np.full((2, 2), 3), 3),  # class value out of range
        (np.full((2, 2), -1), 3),  # negative
        (np.zeros((2, 2), dtype=np.float32), 2),  # not an integer map
        (np.zeros((2, 2), dtype=int), 1),  # too few classes
    ],
)
def test_invalid_inputs_raise(pred, num_classes):
    with pytest.raises(ValueError):
        semantic_scores(pred, np.zeros((2, 2), dtype=int), num_classes)


def _oracle(pred: np.ndarray, target: np.ndarray, num_classes: int) -> dict[str, float]:
    """Per-class boolean masks, straight from the definitions."""
    dice, iou, present = {}, {}, []
    for k in range(1, num_classes):
        p, t = pred == k, target == k
        inter = int(np.logical_and(p, t).sum())
        union = int(np.logical_or(p, t).sum())
        if p.sum() + t.sum() == 0:
            dice[k] = iou[k] = 1.0
        else:
            dice[k] = 2 * inter / (p.sum() + t.sum())
            iou[k] = inter / union
            present.append(k)
    if num_classes == 2:
        return {"dice": dice[1], "iou": iou[1]}
    out = {}
    for k in range(1, num_classes):
        out[f"dice_{k}"] = dice[k]
        out[f"iou_{k}"] = iou[k]
    out["dice"] = sum(dice[k] for k in present) / len(present) if present else 1.0
    out["iou"] = sum(iou[k] for k in present) / len(present) if present else 1.0
    return out


@pytest.mark.parametrize("num_classes", [2, 3, 5])
def test_matches_slow_oracle_on_random_maps(num_classes):
    rng = np.random.default_rng(1234 + num_classes)
    for _ in range(10):
        target = rng.integers(0, num_classes, size=(17, 23))
        # mostly agree, with noise; sometimes drop a class so the "absent" path is exercised
        pred = np.where(rng.random(target.shape) < 0.7, target, rng.integers(0, num_classes, target.shape))
        if rng.random() < 0.5:
            gone = rng.integers(1, num_classes)
            target[target == gone] = 0
            pred[pred == gone] = 0
        fast = semantic_scores(pred, target, num_classes)
        slow = _oracle(pred, target, num_classes)
        assert fast.keys() == slow.keys()
        for k in slow:
            assert fast[k] == pytest.approx(slow[k], abs=1e-12), k
