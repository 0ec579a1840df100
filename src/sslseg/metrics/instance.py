"""Instance segmentation metrics (AJI, AJI+, PQ, F1/AP at IoU thresholds, DSB 2018 score).

Inputs are label maps of equal shape: non-negative integers, 0 = background, any other value is one
object; ids need not be consecutive. Every score is derived from one sparse overlap table built in a
single pass over the pixels, so the cost is O(pixels + overlapping pairs), never O(n_gt * n_pred) masks.

Conventions:
- A match at threshold t needs IoU > t (strict, as in the Data Science Bowl 2018 metric).
- For t >= 0.5 such matches are necessarily one-to-one. For t < 0.5 pairs are chosen by a Hungarian
  assignment that maximises the number of pairs with IoU > t, ties broken by total IoU (as StarDist).
- Any ratio whose denominator is zero can only arise when both maps are empty; it is then 1.0 (perfect
  agreement). If exactly one map is empty, AJI, AJI+, PQ/DQ/SQ, precision, recall, F1, AP and the DSB
  score are all 0.0.
- SQ is the mean IoU of the matched pairs and is 0.0 when nothing matched (unless both maps are empty).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components

DSB_THRESHOLDS: tuple[float, ...] = tuple(round(0.5 + 0.05 * i, 2) for i in range(10))
REPORT_THRESHOLDS: tuple[float, ...] = (0.5, 0.6, 0.7, 0.8, 0.9)

# Largest (n_gt + 1) * (n_pred + 1) for which pair counts use a dense np.bincount; above it a sort of the
# overlapping pixels' pair keys (np.unique) keeps memory proportional to the pixels instead.
_DENSE_LIMIT = 1 << 22


def _check_label_map(a: np.ndarray, name: str) -> np.ndarray:
    if not np.issubdtype(a.dtype, np.integer):
        raise ValueError(f"{name} must be an integer label map (0 = background), got dtype {a.dtype}")
    if a.size and np.issubdtype(a.dtype, np.signedinteger) and a.min() < 0:
        raise ValueError(f"{name} holds negative labels (min {a.min()}); labels must be >= 0")
    return a.ravel()


def _relabel(flat: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Map labels to 0 (background) and 1..n; return (ids of objects, per-pixel index, object areas)."""
    if flat.size == 0:
        empty = np.empty(0, dtype=np.int64)
        return empty, np.empty(0, dtype=np.intp), empty
    top = int(flat.max())
    if top < 4 * flat.size + 65536:
        # Small ids: a lookup table avoids sorting the pixels.
        flat = flat.astype(np.intp, copy=False)
        counts = np.bincount(flat)
        ids = np.flatnonzero(counts)
        ids = ids[ids != 0]
        lut = np.zeros(top + 1, dtype=np.intp)
        lut[ids] = np.arange(1, ids.size + 1)
        return ids.astype(np.int64), lut[flat], counts[ids].astype(np.int64)
    ids, index, counts = np.unique(flat, return_inverse=True, return_counts=True)
    index = index.reshape(-1)
    if ids[0] == 0:
        return ids[1:], index, counts[1:].astype(np.int64)
    return ids, index + 1, counts.astype(np.int64)


@dataclass(frozen=True)
class OverlapTable:
    """Sparse gt x pred contingency table: object areas plus the intersection of every overlapping pair.

    Indices i, j refer to positions in gt_ids / pred_ids (sorted label values). Pairs are sorted by (i, j).
    """

    gt_ids: np.ndarray  # (n_gt,) label value of each gt object
    pred_ids: np.ndarray  # (n_pred,)
    gt_area: np.ndarray  # (n_gt,) pixels per gt object
    pred_area: np.ndarray  # (n_pred,)
    rows: np.ndarray  # (n_pairs,) gt index of each overlapping pair
    cols: np.ndarray  # (n_pairs,) pred index of each overlapping pair
    inter: np.ndarray  # (n_pairs,) intersection in pixels, > 0

    @property
    def n_gt(self) -> int:
        return int(self.gt_ids.size)

    @property
    def n_pred(self) -> int:
        return int(self.pred_ids.size)

    @cached_property
    def union(self) -> np.ndarray:
        """Union in pixels of each overlapping pair."""
        return self.gt_area[self.rows] + self.pred_area[self.cols] - self.inter

    @cached_property
    def iou(self) -> np.ndarray:
        """IoU of each overlapping pair (all pairs not listed have IoU 0)."""
        return self.inter / self.union

    def intersection_matrix(self) -> np.ndarray:
        """Dense (n_gt, n_pred) intersection counts."""
        m = np.zeros((self.n_gt, self.n_pred), dtype=np.int64)
        m[self.rows, self.cols] = self.inter
        return m

    def iou_matrix(self) -> np.ndarray:
        """Dense (n_gt, n_pred) IoU matrix."""
        m = np.zeros((self.n_gt, self.n_pred), dtype=np.float64)
        m[self.rows, self.cols] = self.iou
        return m


def overlap_table(gt: np.ndarray, pred: np.ndarray) -> OverlapTable:
    """Build the gt/pred overlap table in one pass over the pixels; validates both label maps."""
    gt = np.asarray(gt)
    pred = np.asarray(pred)
    if gt.shape != pred.shape:
        raise ValueError(f"gt shape {gt.shape} does not match pred shape {pred.shape}")
    gt_ids, gi, gt_area = _relabel(_check_label_map(gt, "gt"))
    pred_ids, pi, pred_area = _relabel(_check_label_map(pred, "pred"))
    stride = pred_ids.size + 1
    both = (gi > 0) & (pi > 0)
    key = gi[both].astype(np.int64) * stride + pi[both]
    if (gt_ids.size + 1) * stride <= _DENSE_LIMIT:
        counts = np.bincount(key, minlength=(gt_ids.size + 1) * stride)
        keys = np.flatnonzero(counts)
        inter = counts[keys]
    else:
        keys, inter = np.unique(key, return_counts=True)
    return OverlapTable(
        gt_ids=gt_ids,
        pred_ids=pred_ids,
        gt_area=gt_area,
        pred_area=pred_area,
        rows=(keys // stride - 1).astype(np.intp),
        cols=(keys % stride - 1).astype(np.intp),
        inter=inter.astype(np.int64),
    )


def _max_weight_matching(
    rows: np.ndarray, cols: np.ndarray, weight: np.ndarray, n_gt: int, n_pred: int
) -> np.ndarray:
    """Indices of the edges of a maximum-weight one-to-one matching; all weights must be > 0.

    Edges whose two objects have no other edge are taken directly; the rest is split into connected
    components of the overlap graph, each solved by a small Hungarian assignment.
    """
    if rows.size == 0:
        return np.empty(0, dtype=np.intp)
    g_deg = np.bincount(rows, minlength=n_gt)
    p_deg = np.bincount(cols, minlength=n_pred)
    isolated = (g_deg[rows] == 1) & (p_deg[cols] == 1)
    chosen = [np.flatnonzero(isolated)]
    rest = np.flatnonzero(~isolated)
    if rest.size:
        g_nodes, r = np.unique(rows[rest], return_inverse=True)
        p_nodes, c = np.unique(cols[rest], return_inverse=True)
        n_g = g_nodes.size
        n = n_g + p_nodes.size
        graph = coo_matrix((np.ones(rest.size), (r, n_g + c)), shape=(n, n))
        _, label = connected_components(graph, directed=False)
        edge_comp = label[r]
        order = np.argsort(edge_comp, kind="stable")
        splits = np.flatnonzero(np.diff(edge_comp[order])) + 1
        for group in np.split(order, splits):
            ug, gi = np.unique(r[group], return_inverse=True)
            up, pj = np.unique(c[group], return_inverse=True)
            w = np.zeros((ug.size, up.size))
            edge = np.full((ug.size, up.size), -1, dtype=np.intp)
            w[gi, pj] = weight[rest[group]]
            edge[gi, pj] = rest[group]
            a, b = linear_sum_assignment(w, maximize=True)
            picked = edge[a, b]
            chosen.append(picked[picked >= 0])  # drop assignments to non-overlapping pairs
    return np.sort(np.concatenate(chosen))


def _ratio(num: float, den: float) -> float:
    # den == 0 only when both maps are empty (see module docstring).
    return float(num / den) if den > 0 else 1.0


def _aji(t: OverlapTable) -> float:
    if t.n_gt == 0 and t.n_pred == 0:
        return 1.0
    # For each gt with any overlap: the pred of highest IoU (ties: lowest pred index); preds may repeat.
    order = np.lexsort((t.cols, -t.iou, t.rows))
    first = np.ones(order.size, dtype=bool)
    first[1:] = t.rows[order[1:]] != t.rows[order[:-1]]
    best = order[first]
    inter = t.inter[best].sum()
    union = t.union[best].sum()
    union += t.gt_area.sum() - t.gt_area[t.rows[best]].sum()  # gts overlapping nothing
    used = np.zeros(t.n_pred, dtype=bool)
    used[t.cols[best]] = True
    union += t.pred_area[~used].sum()
    return _ratio(inter, union)


def _aji_plus(t: OverlapTable) -> float:
    if t.n_gt == 0 and t.n_pred == 0:
        return 1.0
    sel = _max_weight_matching(t.rows, t.cols, t.iou, t.n_gt, t.n_pred)
    inter = t.inter[sel].sum()
    union = t.union[sel].sum()
    union += t.gt_area.sum() - t.gt_area[t.rows[sel]].sum()
    union += t.pred_area.sum() - t.pred_area[t.cols[sel]].sum()
    return _ratio(inter, union)


def _matched_iou(t: OverlapTable, threshold: float) -> np.ndarray:
    """IoUs of the matched pairs at `threshold` (IoU > threshold, one-to-one)."""
    candidate = np.flatnonzero(t.iou > threshold)
    if threshold >= 0.5:
        return t.iou[candidate]  # IoU > 0.5 can hold for at most one partner per object
    # Weight 1 per pair plus a tie-break < 1 in total: maximise the number of matches, then total IoU.
    tie = t.iou[candidate] / (min(t.n_gt, t.n_pred) + 1)
    sel = _max_weight_matching(t.rows[candidate], t.cols[candidate], 1.0 + tie, t.n_gt, t.n_pred)
    return t.iou[candidate[sel]]


def _check_threshold(threshold: float) -> float:
    threshold = float(threshold)
    if not 0.0 <= threshold <= 1.0:
        raise ValueError(f"IoU threshold must lie in [0, 1], got {threshold}")
    return threshold


def _counts_to_scores(tp: int, n_gt: int, n_pred: int) -> dict[str, float]:
    fp, fn = n_pred - tp, n_gt - tp
    both_empty = n_gt == 0 and n_pred == 0
    return {
        "tp": float(tp),
        "fp": float(fp),
        "fn": float(fn),
        "precision": tp / n_pred if n_pred else float(both_empty),
        "recall": tp / n_gt if n_gt else float(both_empty),
        "f1": _ratio(2 * tp, n_gt + n_pred),
        "accuracy": _ratio(tp, tp + fp + fn),
    }


def _matching(t: OverlapTable, thresholds: Iterable[float]) -> dict[float, dict[str, float]]:
    return {
        th: _counts_to_scores(int(_matched_iou(t, th).size), t.n_gt, t.n_pred)
        for th in map(_check_threshold, thresholds)
    }


def _pq(t: OverlapTable, threshold: float) -> tuple[float, float, float]:
    if t.n_gt == 0 and t.n_pred == 0:
        return 1.0, 1.0, 1.0
    matched = _matched_iou(t, _check_threshold(threshold))
    tp = matched.size
    dq = tp / (0.5 * (t.n_gt + t.n_pred))  # = TP / (TP + FP/2 + FN/2)
    sq = float(matched.mean()) if tp else 0.0
    return dq * sq, dq, sq


def _dsb(t: OverlapTable) -> float:
    scores = _matching(t, DSB_THRESHOLDS)
    return float(np.mean([s["accuracy"] for s in scores.values()]))


def aji(gt: np.ndarray, pred: np.ndarray) -> float:
    """Aggregated Jaccard Index (Kumar et al., MoNuSeg): each gt paired with its max-IoU pred (ties: lowest
    pred id), preds may be reused; unpaired gts and preds add their area to the union."""
    return _aji(overlap_table(gt, pred))


def aji_plus(gt: np.ndarray, pred: np.ndarray) -> float:
    """AJI+ (Graham et al., HoVer-Net): like AJI but gt/pred pairs are unique, chosen by a Hungarian
    assignment maximising total IoU, so one pred cannot be counted against several gts."""
    return _aji_plus(overlap_table(gt, pred))


def panoptic_quality(
    gt: np.ndarray, pred: np.ndarray, iou_threshold: float = 0.5
) -> tuple[float, float, float]:
    """Panoptic quality (Kirillov et al.) for one class: returns (pq, dq, sq) with pq = dq * sq, where
    dq = TP / (TP + FP/2 + FN/2) and sq = mean IoU of matches (IoU > iou_threshold)."""
    return _pq(overlap_table(gt, pred), iou_threshold)


def matching_scores(
    gt: np.ndarray, pred: np.ndarray, thresholds: Sequence[float] = REPORT_THRESHOLDS
) -> dict[float, dict[str, float]]:
    """Object detection counts per IoU threshold: {t: {tp, fp, fn, precision, recall, f1, accuracy}},
    where accuracy = TP / (TP + FP + FN) (the StarDist/DSB "AP")."""
    return _matching(overlap_table(gt, pred), thresholds)


def dsb_score(gt: np.ndarray, pred: np.ndarray) -> float:
    """Data Science Bowl 2018 score: mean of TP / (TP + FP + FN) over IoU thresholds 0.5, 0.55, ..., 0.95."""
    return _dsb(overlap_table(gt, pred))


def instance_scores(gt: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """All instance metrics of one image as a flat dict, derived from a single overlap table:
    aji, aji_plus, pq, dq, sq, precision/recall/f1/ap@0.5..0.9, dsb_score, n_gt, n_pred."""
    t = overlap_table(gt, pred)
    pq, dq, sq = _pq(t, 0.5)
    out = {"aji": _aji(t), "aji_plus": _aji_plus(t), "pq": pq, "dq": dq, "sq": sq}
    # All DSB thresholds are >= 0.5, where matching is a plain count; REPORT_THRESHOLDS is a subset.
    per_t = _matching(t, DSB_THRESHOLDS)
    for name, key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1"), ("ap", "accuracy")):
        for th in REPORT_THRESHOLDS:
            out[f"{name}@{th:.1f}"] = per_t[th][key]
    out["dsb_score"] = float(np.mean([s["accuracy"] for s in per_t.values()]))
    out["n_gt"] = float(t.n_gt)
    out["n_pred"] = float(t.n_pred)
    return out


OUTCOMES = ("matched", "merged", "missed", "misshapen")


def object_outcomes(
    gt: np.ndarray, pred: np.ndarray, threshold: float = 0.5
) -> tuple[np.ndarray, np.ndarray]:
    """What became of each true object at an IoU threshold of 0.5 or more (the rules of `missed_objects`):
    the ids of the objects in `gt` and, for each, an index into `OUTCOMES`."""
    t = _matching_table(gt, pred, threshold)
    return t.gt_ids, _outcomes(t, threshold)


def _matching_table(gt: np.ndarray, pred: np.ndarray, threshold: float) -> OverlapTable:
    if _check_threshold(threshold) < 0.5:
        raise ValueError(
            f"objects are counted by a one-to-one matching, which needs IoU >= 0.5, got {threshold}"
        )
    return overlap_table(gt, pred)


def _outcomes(t: OverlapTable, threshold: float) -> np.ndarray:
    hit = t.iou > threshold  # above 0.5 IoU, each object has at most one such partner
    matched_gt = np.zeros(t.n_gt, dtype=bool)
    matched_gt[t.rows[hit]] = True
    covered = np.bincount(t.rows, weights=t.inter, minlength=t.n_gt) / np.maximum(t.gt_area, 1)
    holds_most = t.inter > 0.5 * t.gt_area[t.rows]  # the pair's prediction holds most of its true object
    n_held = np.bincount(t.cols[holds_most], minlength=t.n_pred)
    largest = np.zeros(t.n_gt, dtype=np.intp)  # pair index of each true object's largest overlap
    descending = np.lexsort((t.inter, t.rows))[::-1]  # per true object, its largest overlap comes first
    rows, first = np.unique(t.rows[descending], return_index=True)
    largest[rows] = descending[first]
    lost = ~matched_gt
    missed = lost & (covered < 0.5)
    # a lost object that is not missed has a largest overlap: does its prediction hold another true object?
    pair = largest[lost & ~missed]
    merged = np.zeros(t.n_gt, dtype=bool)
    merged[lost & ~missed] = n_held[t.cols[pair]] - holds_most[pair] >= 1
    outcome = np.full(t.n_gt, OUTCOMES.index("misshapen"), dtype=np.intp)
    outcome[matched_gt] = OUTCOMES.index("matched")
    outcome[merged] = OUTCOMES.index("merged")
    outcome[missed] = OUTCOMES.index("missed")
    return outcome


def missed_objects(gt: np.ndarray, pred: np.ndarray, threshold: float = 0.5) -> dict[str, int]:
    """Why true objects go unmatched at an IoU threshold of 0.5 or more, to tell which repair would pay.

    Each true object without a prediction over `threshold` IoU counts once, as `merged` (its largest
    overlapping prediction also covers more than half of another true object), `missed` (less than half
    of it lies in any prediction) or `misshapen` (covered, but outlined too loosely, tightly or in pieces).
    `matched` and `false_positives` (predictions matched to nothing) complete the count."""
    t = _matching_table(gt, pred, threshold)
    counts = np.bincount(_outcomes(t, threshold), minlength=len(OUTCOMES))
    result = {name: int(counts[i]) for i, name in enumerate(OUTCOMES)}
    return {**result, "false_positives": t.n_pred - result["matched"]}


def mean_scores(rows: list[dict[str, float]]) -> dict[str, float]:
    """Mean of each key over per-image score dicts; all rows must carry the same keys."""
    if not rows:
        raise ValueError("mean_scores needs at least one row of scores")
    keys = list(rows[0])
    for i, row in enumerate(rows):
        if set(row) != set(keys):
            diff = sorted(set(row) ^ set(keys))
            raise ValueError(f"row {i} has different keys from row 0: {diff}")
    return {k: float(np.mean([row[k] for row in rows])) for k in keys}
