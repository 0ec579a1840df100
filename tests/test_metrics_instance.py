"""Tests for sslseg.metrics.instance: hand-computed cases, edge cases, and a slow oracle written from the
definitions (Python loops over objects with boolean masks) compared with the fast, table-based code."""

from __future__ import annotations

import functools

import numpy as np
import pytest
from scipy.optimize import linear_sum_assignment

from sslseg.metrics import (
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
from sslseg.metrics import instance as instance_mod

REPORT_T = (0.5, 0.6, 0.7, 0.8, 0.9)
DSB_T = (0.5, 0.55, 0.6, 0.65, 0.7, 0.75, 0.8, 0.85, 0.9, 0.95)


def _strip(*segments: tuple[int, int, int], width: int = 20) -> np.ndarray:
    """1 x width label map with label `v` on [a, b) for each (a, b, v)."""
    m = np.zeros((1, width), dtype=np.int64)
    for a, b, v in segments:
        m[0, a:b] = v
    return m


# ---------------------------------------------------------------- hand-computed cases


def test_overlap_table_two_squares_non_consecutive_ids():
    gt = np.zeros((4, 4), dtype=np.int32)
    pred = np.zeros((4, 4), dtype=np.int32)
    gt[0:2, 0:2] = 7  # 4 pixels
    pred[0:2, 1:3] = 42  # 4 pixels, overlap = column 1 = 2 pixels
    t = overlap_table(gt, pred)
    assert t.gt_ids.tolist() == [7] and t.pred_ids.tolist() == [42]
    assert t.gt_area.tolist() == [4] and t.pred_area.tolist() == [4]
    assert t.intersection_matrix().tolist() == [[2]]
    np.testing.assert_allclose(t.iou_matrix(), [[2 / 6]])  # union = 4 + 4 - 2 = 6
    assert aji(gt, pred) == pytest.approx(2 / 6)
    assert aji_plus(gt, pred) == pytest.approx(2 / 6)
    # IoU 1/3 < 0.5: no match -> TP 0, FP 1, FN 1
    assert panoptic_quality(gt, pred) == (0.0, 0.0, 0.0)
    assert dsb_score(gt, pred) == 0.0


def test_iou_matrix_layout():
    # gt 3 = [0,4), gt 10 = [4,8); pred 1 = [2,6), pred 5 = [6,8)
    gt = _strip((0, 4, 3), (4, 8, 10), width=8)
    pred = _strip((2, 6, 1), (6, 8, 5), width=8)
    t = overlap_table(gt, pred)
    # rows = gt (3, 10), cols = pred (1, 5)
    # gt3/p1: inter 2, union 4+4-2 = 6; gt10/p1: inter 2, union 6; gt10/p5: inter 2, union 4+2-2 = 4
    np.testing.assert_allclose(t.iou_matrix(), [[2 / 6, 0.0], [2 / 6, 2 / 4]])


def test_aji_counts_unmatched_pred_in_union():
    gt = _strip((0, 4, 1))
    pred = _strip((2, 6, 2), (10, 13, 3))  # pred 2 overlaps gt by 2; pred 3 (3 px) overlaps nothing
    # C = 2, U = 6 + 3 (unmatched pred) = 9
    assert aji(gt, pred) == pytest.approx(2 / 9)
    assert aji_plus(gt, pred) == pytest.approx(2 / 9)


def test_aji_split_and_merge():
    # Split: one gt of 8 px, two preds of 4 px each -> both IoU 4/8; tie goes to the first pred id.
    gt = _strip((0, 8, 1))
    pred = _strip((0, 4, 5), (4, 8, 6))
    # C = 4, U = 8 + 4 (the other pred, unused) = 12
    assert aji(gt, pred) == pytest.approx(4 / 12)
    assert aji_plus(gt, pred) == pytest.approx(4 / 12)
    # Merge: two gts of 4 px, one pred of 8 px. AJI reuses the pred: C = 4 + 4, U = 8 + 8 -> 0.5.
    # AJI+ pairs it once: C = 4, U = 8 + 4 (the unpaired gt) -> 1/3.
    assert aji(pred, gt) == pytest.approx(8 / 16)
    assert aji_plus(pred, gt) == pytest.approx(4 / 12)


def test_aji_tie_goes_to_lowest_pred_id():
    # gt [0,8); pred A = [0,2) inside it, pred B = [2,24) covering the rest and beyond.
    # IoU(gt,A) = 2/8 = 0.25 and IoU(gt,B) = 6/24 = 0.25: a tie with different intersections.
    gt = _strip((0, 8, 1), width=30)
    # A has the lower id: C = 2, U = 8 + 22 (B unused) = 30
    assert aji(gt, _strip((0, 2, 4), (2, 24, 9), width=30)) == pytest.approx(2 / 30)
    # B has the lower id: C = 6, U = 24 + 2 (A unused) = 26
    assert aji(gt, _strip((0, 2, 9), (2, 24, 4), width=30)) == pytest.approx(6 / 26)


def test_matching_below_half_maximises_matches():
    # gt 1 = [0,10), gt 2 = [10,20); pred 5 = [0,3), pred 9 = [3,12)
    gt = _strip((0, 10, 1), (10, 20, 2))
    pred = _strip((0, 3, 5), (3, 12, 9))
    # IoU(g1,p9) = 7/12 = 0.583, IoU(g1,p5) = 3/10 = 0.3, IoU(g2,p9) = 2/17 = 0.118, IoU(g2,p5) = 0.
    # At t = 0.1 maximising total IoU would keep only g1-p9 (0.583 > 0.3 + 0.118); maximising the number
    # of matches pairs g1-p5 and g2-p9: TP 2.
    m = matching_scores(gt, pred, thresholds=(0.1, 0.2, 0.5, 0.6))
    assert m[0.1]["tp"] == 2 and m[0.1]["f1"] == 1.0
    assert m[0.2]["tp"] == 1  # only g1-p9 and g1-p5 exceed 0.2, both on g1
    assert (m[0.5]["tp"], m[0.5]["fp"], m[0.5]["fn"]) == (1, 1, 1)
    assert m[0.5]["precision"] == 0.5 and m[0.5]["recall"] == 0.5 and m[0.5]["f1"] == 0.5
    assert m[0.5]["accuracy"] == pytest.approx(1 / 3)  # 1 / (1 + 1 + 1)
    assert m[0.6]["tp"] == 0
    # AJI: g1 -> p9 (C 7, U 12), g2 -> p9 again (C 2, U 17), p5 unused (U 3): 9 / 32
    assert aji(gt, pred) == pytest.approx(9 / 32)
    # AJI+: Hungarian on IoU keeps g1-p9 only; g2 (10) and p5 (3) go to the union: 7 / (12 + 10 + 3)
    assert aji_plus(gt, pred) == pytest.approx(7 / 25)
    # PQ: TP 1 (IoU 7/12), FP 1, FN 1 -> DQ = 1 / (1 + 0.5 + 0.5) = 0.5, SQ = 7/12
    pq, dq, sq = panoptic_quality(gt, pred)
    assert (dq, sq) == pytest.approx((0.5, 7 / 12))
    assert pq == pytest.approx(7 / 24)


def test_thresholds_are_strict():
    # gt 10 px, pred its first 7 px: IoU = 7/10 = 0.7 exactly.
    gt = _strip((0, 10, 1))
    pred = _strip((0, 7, 1))
    s = instance_scores(gt, pred)
    assert s["ap@0.6"] == 1.0
    assert s["ap@0.7"] == 0.0  # IoU > 0.7 is false
    # DSB thresholds 0.5, 0.55, 0.6, 0.65 pass; 0.7 ... 0.95 fail -> 4 / 10
    assert s["dsb_score"] == pytest.approx(0.4)
    assert dsb_score(gt, pred) == pytest.approx(0.4)
    # An IoU of exactly 0.5 is not a PQ match either: gt 8 px, pred 4 px inside.
    assert panoptic_quality(_strip((0, 8, 1)), _strip((0, 4, 1))) == (0.0, 0.0, 0.0)


def test_pq_hand_computed():
    gt = _strip((0, 4, 1), (10, 14, 2))
    pred = _strip((0, 4, 3), (12, 16, 4))
    # gt1/pred3 identical: IoU 1; gt2/pred4 overlap 2 of union 6: IoU 1/3 -> no match
    # TP 1, FP 1, FN 1 -> DQ 0.5, SQ 1.0, PQ 0.5
    assert panoptic_quality(gt, pred) == pytest.approx((0.5, 0.5, 1.0))


# ---------------------------------------------------------------- edge cases and validation


def test_both_empty_is_perfect():
    z = np.zeros((6, 6), dtype=np.uint16)
    s = instance_scores(z, z)
    assert s["n_gt"] == 0 and s["n_pred"] == 0
    assert all(v == 1.0 for k, v in s.items() if k not in ("n_gt", "n_pred"))
    assert panoptic_quality(z, z) == (1.0, 1.0, 1.0)
    assert aji(z, z) == aji_plus(z, z) == dsb_score(z, z) == 1.0
    assert matching_scores(z, z, (0.3,))[0.3]["f1"] == 1.0


def test_zero_size_maps_are_both_empty():
    z = np.zeros((0, 5), dtype=np.int64)
    assert instance_scores(z, z)["aji"] == 1.0


@pytest.mark.parametrize("empty_side", ["gt", "pred"])
def test_one_side_empty_scores_zero(empty_side):
    z = np.zeros((6, 6), dtype=np.int64)
    full = z.copy()
    full[1:3, 1:3] = 4
    full[4:6, 4:6] = 9
    gt, pred = (z, full) if empty_side == "gt" else (full, z)
    s = instance_scores(gt, pred)
    assert s["n_gt"] == (0 if empty_side == "gt" else 2)
    for k, v in s.items():
        if k not in ("n_gt", "n_pred"):
            assert v == 0.0, k
    assert matching_scores(gt, pred, (0.2,))[0.2]["f1"] == 0.0


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(3, 4\).*\(4, 3\)"):
        instance_scores(np.zeros((3, 4), int), np.zeros((4, 3), int))


@pytest.mark.parametrize(
    "bad",
    [
        np.full((3, 3), -1, dtype=np.int32),
        np.zeros((3, 3), dtype=np.float64),
        np.zeros((3, 3), dtype=bool),
    ],
)
@pytest.mark.parametrize("side", ["gt", "pred"])
def test_invalid_label_maps_raise(bad, side):
    ok = np.zeros((3, 3), dtype=np.int32)
    with pytest.raises(ValueError, match=side):
        instance_scores(bad, ok) if side == "gt" else instance_scores(ok, bad)


def test_invalid_threshold_raises():
    z = np.zeros((2, 2), dtype=int)
    with pytest.raises(ValueError):
        matching_scores(z, z, (1.5,))


def test_mean_scores():
    assert mean_scores([{"a": 1.0, "b": 0.0}, {"a": 0.0, "b": 0.5}]) == {"a": 0.5, "b": 0.25}
    with pytest.raises(ValueError):
        mean_scores([])
    with pytest.raises(ValueError, match="b"):
        mean_scores([{"a": 1.0, "b": 0.0}, {"a": 0.0}])


# ---------------------------------------------------------------- slow oracle


def _random_pair(rng: np.random.Generator, size: int = 48) -> tuple[np.ndarray, np.ndarray]:
    """Random overlapping disks; pred disks are jittered copies with drops, splits, merges and extras."""
    yy, xx = np.mgrid[:size, :size]
    gt = np.zeros((size, size), dtype=np.int64)
    pred = np.zeros((size, size), dtype=np.int64)
    gt_ids = rng.choice(np.arange(1, 5000), size=int(rng.integers(0, 13)), replace=False)
    pid = int(rng.integers(1, 50))

    def disk(cy: float, cx: float, r: float) -> np.ndarray:
        return (yy - cy) ** 2 + (xx - cx) ** 2 <= r * r

    for gid in gt_ids:
        cy, cx = rng.uniform(0, size, 2)
        r = rng.uniform(2.5, 8.0)
        gt[disk(cy, cx, r)] = gid  # later disks occlude earlier ones
        fate = rng.random()
        if fate < 0.1:
            continue  # missed object
        m = disk(cy + rng.normal(0, 1.5), cx + rng.normal(0, 1.5), max(1.5, r + rng.normal(0, 1.5)))
        if fate < 0.25:  # split along a random line through the centre
            a = rng.uniform(0, np.pi)
            side = (yy - cy) * np.cos(a) - (xx - cx) * np.sin(a) > 0
            pred[m & side] = pid
            pid += int(rng.integers(1, 4))
            pred[m & ~side] = pid
        elif fate < 0.35 and pid > 1:  # merged with the previous pred object
            pred[m] = pid - 1
            continue
        else:
            pred[m] = pid
        pid += int(rng.integers(1, 4))
    for _ in range(int(rng.integers(0, 3))):  # spurious detections
        cy, cx = rng.uniform(0, size, 2)
        pred[disk(cy, cx, rng.uniform(2.0, 6.0))] = pid
        pid += int(rng.integers(1, 4))
    return gt, pred


class _Oracle:
    """Instance metrics from the definitions: boolean masks per object, loops over pairs."""

    def __init__(self, gt: np.ndarray, pred: np.ndarray) -> None:
        self.g = [gt == v for v in sorted(set(gt.ravel().tolist()) - {0})]
        self.p = [pred == v for v in sorted(set(pred.ravel().tolist()) - {0})]
        self.inter = [[int((g & p).sum()) for p in self.p] for g in self.g]
        self.union = [[int((g | p).sum()) for p in self.p] for g in self.g]
        self.iou = [
            [i / u for i, u in zip(ri, ru, strict=True)]
            for ri, ru in zip(self.inter, self.union, strict=True)
        ]
        self.empty = not self.g and not self.p

    def aji(self) -> float:
        if self.empty:
            return 1.0
        c = u = 0
        used = set()
        for i, g in enumerate(self.g):
            best_j, best = None, 0.0
            for j in range(len(self.p)):
                if self.iou[i][j] > best:  # strict: the first pred of maximal IoU wins ties
                    best_j, best = j, self.iou[i][j]
            if best_j is None:
                u += int(g.sum())
            else:
                c += self.inter[i][best_j]
                u += self.union[i][best_j]
                used.add(best_j)
        u += sum(int(p.sum()) for j, p in enumerate(self.p) if j not in used)
        return c / u

    def aji_plus(self) -> float:
        if self.empty:
            return 1.0
        pairs = []
        if self.g and self.p:
            rows, cols = linear_sum_assignment(np.array(self.iou), maximize=True)
            pairs = [(i, j) for i, j in zip(rows, cols, strict=True) if self.iou[i][j] > 0]
        c = sum(self.inter[i][j] for i, j in pairs)
        u = sum(self.union[i][j] for i, j in pairs)
        u += sum(int(g.sum()) for i, g in enumerate(self.g) if i not in {i for i, _ in pairs})
        u += sum(int(p.sum()) for j, p in enumerate(self.p) if j not in {j for _, j in pairs})
        return c / u

    def max_matches(self, t: float) -> int:
        """Size of a maximum one-to-one matching among pairs with IoU > t (Kuhn's augmenting paths)."""
        owner: dict[int, int] = {}

        def augment(i: int, seen: set[int]) -> bool:
            for j in range(len(self.p)):
                if self.iou[i][j] > t and j not in seen:
                    seen.add(j)
                    if j not in owner or augment(owner[j], seen):
                        owner[j] = i
                        return True
            return False

        return sum(augment(i, set()) for i in range(len(self.g)))

    def pq(self) -> tuple[float, float, float]:
        if self.empty:
            return 1.0, 1.0, 1.0
        matched = [
            self.iou[i][j] for i in range(len(self.g)) for j in range(len(self.p)) if self.iou[i][j] > 0.5
        ]
        # IoU > 0.5 pairs must be one-to-one; check it rather than assume it
        assert len(matched) == self.max_matches(0.5)
        tp = len(matched)
        fp, fn = len(self.p) - tp, len(self.g) - tp
        dq = tp / (tp + fp / 2 + fn / 2)
        sq = sum(matched) / tp if tp else 0.0
        return dq * sq, dq, sq

    def dsb(self) -> float:
        """Kaggle DSB 2018: a gt is a TP when exactly one pred has IoU > t with it."""
        if self.empty:
            return 1.0
        scores = []
        for t in DSB_T:
            hits = [[self.iou[i][j] > t for j in range(len(self.p))] for i in range(len(self.g))]
            tp = sum(1 for row in hits if sum(row) == 1)
            fn = sum(1 for row in hits if sum(row) == 0)
            fp = sum(1 for j in range(len(self.p)) if not any(row[j] for row in hits))
            scores.append(tp / (tp + fp + fn))
        return sum(scores) / len(scores)

    def counts(self, t: float) -> dict[str, float]:
        n_g, n_p = len(self.g), len(self.p)
        tp = self.max_matches(t)
        fp, fn = n_p - tp, n_g - tp
        if self.empty:
            return {"tp": 0, "fp": 0, "fn": 0, "precision": 1.0, "recall": 1.0, "f1": 1.0, "accuracy": 1.0}
        return {
            "tp": tp,
            "fp": fp,
            "fn": fn,
            "precision": tp / n_p if n_p else 0.0,
            "recall": tp / n_g if n_g else 0.0,
            "f1": 2 * tp / (n_g + n_p),
            "accuracy": tp / (tp + fp + fn),
        }

    def scores(self) -> dict[str, float]:
        pq, dq, sq = self.pq()
        out = {"aji": self.aji(), "aji_plus": self.aji_plus(), "pq": pq, "dq": dq, "sq": sq}
        per_t = {t: self.counts(t) for t in REPORT_T}
        for name, key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1"), ("ap", "accuracy")):
            for t in REPORT_T:
                out[f"{name}@{t:.1f}"] = per_t[t][key]
        out["dsb_score"] = self.dsb()
        out["n_gt"] = len(self.g)
        out["n_pred"] = len(self.p)
        return out


@functools.cache
def _random_cases(n: int = 30) -> tuple[tuple[np.ndarray, np.ndarray], ...]:
    rng = np.random.default_rng(20240607)
    cases = [_random_pair(rng) for _ in range(n)]
    gt, pred = cases[0]
    cases[1] = (np.zeros_like(gt), pred)  # gt empty
    cases[2] = (gt, np.zeros_like(pred))  # pred empty
    return tuple(cases)


@pytest.mark.parametrize("case", range(30))
def test_instance_scores_match_slow_oracle(case):
    gt, pred = _random_cases()[case]
    fast = instance_scores(gt, pred)
    slow = _Oracle(gt, pred).scores()
    assert list(fast) == list(slow)
    for k in slow:
        assert fast[k] == pytest.approx(slow[k], abs=1e-12), k


def test_random_cases_exercise_overlaps_splits_and_merges():
    # guard against a generator that silently produces trivial maps
    n_many_to_one = n_one_to_many = 0
    for gt, pred in _random_cases():
        t = overlap_table(gt, pred)
        n_one_to_many += int((np.bincount(t.rows, minlength=t.n_gt) > 1).sum())
        n_many_to_one += int((np.bincount(t.cols, minlength=t.n_pred) > 1).sum())
    assert n_one_to_many > 20 and n_many_to_one > 20


@pytest.mark.parametrize("case", range(0, 30, 3))
def test_matching_scores_below_half_match_oracle(case):
    gt, pred = _random_cases()[case]
    thresholds = (0.0, 0.1, 0.3, 0.45, 0.5, 0.75)
    fast = matching_scores(gt, pred, thresholds)
    oracle = _Oracle(gt, pred)
    for t in thresholds:
        slow = oracle.counts(t)
        for k in slow:
            assert fast[t][k] == pytest.approx(slow[k], abs=1e-12), (t, k)
    # the public single-metric functions agree with the flat dict
    s = instance_scores(gt, pred)
    assert aji(gt, pred) == s["aji"] and aji_plus(gt, pred) == s["aji_plus"]
    assert panoptic_quality(gt, pred) == (s["pq"], s["dq"], s["sq"])
    assert dsb_score(gt, pred) == s["dsb_score"]


def test_ids_are_arbitrary_and_sparse_count_path_agrees(monkeypatch):
    rng = np.random.default_rng(7)
    gt, pred = _random_pair(rng)
    ref = instance_scores(gt, pred)
    # Huge, scattered ids in unsigned types: exercises the sort-based relabelling.
    big = np.uint64(1) << np.uint64(40)
    gt_big = np.where(gt > 0, gt.astype(np.uint64) * np.uint64(977) + big, 0).astype(np.uint64)
    pred_big = np.where(pred > 0, pred.astype(np.uint64) * np.uint64(31) + big, 0).astype(np.uint64)
    assert instance_scores(gt_big, pred_big) == pytest.approx(ref)
    assert instance_scores(gt.astype(np.uint16), pred.astype(np.int8)) == pytest.approx(ref)
    # No background at all: every pixel belongs to an object (here gt's background becomes one more object).
    no_bg = np.where(gt > 0, gt_big, big).astype(np.uint64)
    assert instance_scores(no_bg, pred_big) == pytest.approx(instance_scores(gt + 1, pred))
    # Force the np.unique pair-count path instead of the dense bincount.
    monkeypatch.setattr(instance_mod, "_DENSE_LIMIT", 0)
    assert instance_scores(gt, pred) == pytest.approx(ref)


# ---------------------------------------------------------------- scale sanity


def test_large_map_with_hundreds_of_objects():
    # 22 x 22 grid of 43 x 43 squares on a 45 px pitch in a 1000 x 1000 map: 484 objects.
    gt = np.zeros((1000, 1000), dtype=np.int32)
    for r in range(22):
        for c in range(22):
            gt[45 * r + 1 : 45 * r + 44, 45 * c + 1 : 45 * c + 44] = 1 + 22 * r + c
    rng = np.random.default_rng(0)
    lut = np.concatenate([[0], rng.permutation(484) * 3 + 11])  # scattered, non-consecutive ids
    s = instance_scores(gt, lut[gt])
    assert s["n_gt"] == s["n_pred"] == 484
    assert all(v == 1.0 for k, v in s.items() if k not in ("n_gt", "n_pred"))

    # Shift every object 3 px right: own-square IoU = (40*43) / (46*43) = 40/46 = 0.870; each shifted square
    # also touches the next gt square by one column (IoU 43 / (2*1849 - 43), tiny). The right margin (10 px)
    # keeps np.roll from wrapping objects around.
    shifted = np.roll(gt, 3, axis=1)
    s = instance_scores(gt, shifted)
    assert s["aji"] == pytest.approx(40 / 46)  # C = 484*40*43, U = 484*46*43, no unmatched preds
    assert s["aji_plus"] == pytest.approx(40 / 46)
    assert (s["pq"], s["dq"], s["sq"]) == pytest.approx((40 / 46, 1.0, 40 / 46))
    assert s["f1@0.8"] == 1.0 and s["f1@0.9"] == 0.0
    assert s["dsb_score"] == pytest.approx(0.8)  # 0.5 ... 0.85 pass (0.870 > 0.85), 0.9 and 0.95 fail


# ---------------------------------------------------------------- why objects are lost


def test_missed_objects_hand_computed():
    gt = np.zeros((20, 40), dtype=np.int32)
    gt[2:10, 2:10], gt[2:10, 10:18] = 1, 2  # two touching objects...
    gt[12:18, 2:8] = 3  # ...one nobody finds
    gt[12:18, 20:30] = 4  # one found at 30 %
    gt[2:10, 25:34] = 5  # one cut in three pieces
    gt[12:18, 34:40] = 6  # one found well
    pred = np.zeros_like(gt)
    pred[2:10, 2:18] = 1  # ...merged into one prediction
    pred[12:18, 20:23] = 2
    pred[2:10, 25:28], pred[2:10, 28:31], pred[2:10, 31:34] = 3, 4, 5
    pred[12:18, 35:40] = 6
    pred[0:2, 36:40] = 7  # a false positive
    counts = missed_objects(gt, pred)
    assert counts == {"matched": 1, "merged": 2, "missed": 2, "misshapen": 1, "false_positives": 7 - 1}
    assert missed_objects(gt, gt) == {
        "matched": 6,
        "merged": 0,
        "missed": 0,
        "misshapen": 0,
        "false_positives": 0,
    }
    assert missed_objects(gt, np.zeros_like(gt))["missed"] == 6
    assert missed_objects(np.zeros_like(gt), pred)["false_positives"] == 7
    with pytest.raises(ValueError, match="IoU >= 0.5"):
        missed_objects(gt, pred, threshold=0.3)
    # the same verdicts object by object, named by each object's own id
    ids, outcome = object_outcomes(gt, pred)
    named = {int(i): OUTCOMES[k] for i, k in zip(ids, outcome, strict=True)}
    assert named == {1: "merged", 2: "merged", 3: "missed", 4: "missed", 5: "misshapen", 6: "matched"}


def _missed_objects_oracle(gt: np.ndarray, pred: np.ndarray) -> dict[str, int]:
    """The definitions of missed_objects, one object pair at a time."""
    g_ids, p_ids = [i for i in np.unique(gt) if i], [j for j in np.unique(pred) if j]
    area = {i: int((gt == i).sum()) for i in g_ids}
    inter = {(i, j): int(((gt == i) & (pred == j)).sum()) for i in g_ids for j in p_ids}
    iou = {(i, j): v / (area[i] + int((pred == j).sum()) - v) for (i, j), v in inter.items()}
    out = dict.fromkeys(("matched", "merged", "missed", "misshapen"), 0)
    for i in g_ids:
        if any(iou[i, j] > 0.5 for j in p_ids):
            out["matched"] += 1
        elif sum(inter[i, j] for j in p_ids) < 0.5 * area[i]:
            out["missed"] += 1
        else:
            j = max(p_ids, key=lambda j: (inter[i, j], j))
            merges = any(inter[k, j] > 0.5 * area[k] for k in g_ids if k != i)
            out["merged" if merges else "misshapen"] += 1
    out["false_positives"] = len(p_ids) - out["matched"]
    return out


def test_missed_objects_match_oracle():
    totals = dict.fromkeys(("matched", "merged", "missed", "misshapen"), 0)
    for gt, pred in _random_cases()[::2]:
        fast = missed_objects(gt, pred)
        assert fast == _missed_objects_oracle(gt, pred)
        assert sum(fast[k] for k in totals) == len(np.unique(gt)) - 1
        for k in totals:
            totals[k] += fast[k]
    assert all(totals.values())  # every kind of loss occurs in the random cases
