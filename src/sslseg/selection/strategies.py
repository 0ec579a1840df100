"""Strategies that choose what to annotate next from a feature matrix, by name. An explicit registry, like
the SSL methods': an unknown name is an error listing the valid ones.

Every strategy sees the same inputs: an N×D feature matrix (rows already in the space distances are taken
in, see `sslseg.selection.features.feature_space`), which rows are annotated already (never chosen, but
they count: as covered, as near, as filling their cluster), the budget and a seed. It returns one `Choice`
per proposal, in the order chosen. Distances are Euclidean; memory stays O(N·chunk), never N×N."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from sslseg.errors import ConfigError

CHUNK = 1024  # rows of a distance matrix held at once
TYPICALITY_NEIGHBOURS = 20  # TypiClust's K
MIN_CLUSTER_SIZE = (
    5  # TypiClust's clusters of this size or smaller are outliers: taken only when nothing else is left
)
PURITY = 0.95  # ProbCover's automatic δ keeps this share of δ-balls pure


@dataclass(frozen=True)
class Choice:
    """One proposal: the row chosen, its cluster (-1 where the strategy has none), its score and why."""

    index: int
    cluster: int
    score: float
    why: str


def _sq_distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared Euclidean distances of the rows of `a` to those of `b` (clipped at 0 against rounding)."""
    d = (a * a).sum(1)[:, None] - 2.0 * a @ b.T + (b * b).sum(1)[None, :]
    return np.maximum(d, 0.0)


def distances(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances of the rows of `a` to those of `b`: a len(a)×len(b) matrix, so large sets pass `a`
    in chunks of CHUNK rows."""
    return np.sqrt(_sq_distances(a, b))


def kmeans(x: np.ndarray, k: int, seed: int, iterations: int = 100) -> np.ndarray:
    """Cluster ids (0..k-1) of the rows of `x` by Lloyd's k-means from a seeded k-means++ start; a cluster
    that empties keeps its centre. Deterministic for a seed."""
    n = len(x)
    if not 1 <= k <= n:
        raise ValueError(f"k-means needs 1 <= k <= {n} points, got k={k}")
    rng = np.random.default_rng(seed)
    centers = np.empty((k, x.shape[1]), dtype=np.float64)
    centers[0] = x[rng.integers(n)]
    nearest = _sq_distances(x, centers[:1])[:, 0]
    for j in range(1, k):
        total = nearest.sum()
        # k-means++: a point far from the centres so far is likelier; all on centres: any point
        i = rng.choice(n, p=nearest / total) if total > 0 else rng.integers(n)
        centers[j] = x[i]
        nearest = np.minimum(nearest, _sq_distances(x, centers[j : j + 1])[:, 0])
    labels = np.full(n, -1)
    for _ in range(iterations):
        new = np.concatenate([_sq_distances(x[s : s + CHUNK], centers).argmin(1) for s in range(0, n, CHUNK)])
        if np.array_equal(new, labels):
            break
        labels = new
        for j in range(k):
            members = labels == j
            if members.any():
                centers[j] = x[members].mean(0)
    return labels


def typicality(x: np.ndarray, neighbours: int = TYPICALITY_NEIGHBOURS) -> np.ndarray:
    """TypiClust's typicality of each row of `x` (the points of one cluster): the inverse of its mean
    distance to its K nearest other points, K = min(`neighbours`, n − 1). A lone point has infinite
    typicality (it is all its cluster has)."""
    n = len(x)
    k = min(neighbours, n - 1)
    if k < 1:
        return np.full(n, np.inf)
    out = np.empty(n)
    for s in range(0, n, CHUNK):
        d = distances(x[s : s + CHUNK], x)
        d[np.arange(len(d)), np.arange(s, s + len(d))] = np.inf  # not its own neighbour
        mean = np.partition(d, k - 1, axis=1)[:, :k].mean(1)
        with np.errstate(divide="ignore"):
            out[s : s + CHUNK] = 1.0 / mean
    return out


def typiclust(
    x: np.ndarray, annotated: np.ndarray, budget: int, seed: int, uncertainty: np.ndarray | None = None
) -> list[Choice]:
    """TypiClust (Hacohen et al., ICML 2022): "we select the most typical example from each of the largest
    uncovered clusters". k-means into budget + annotated clusters; clusters of MIN_CLUSTER_SIZE points or
    fewer are outliers, left out as the authors' code leaves them out (here: taken only once no larger
    cluster has a point left); each pick goes to the cluster with the fewest annotated or chosen points (then
    the largest, then the lowest id) and takes its most typical unannotated point (typicality over all its
    points). So a budget larger than the clusters that are not outliers takes second points from the
    largest ones rather than outliers."""
    n_clusters = min(budget + int(annotated.sum()), len(x))
    labels = kmeans(x, n_clusters, seed)
    sizes = np.bincount(labels, minlength=n_clusters)
    filled = np.bincount(labels[annotated], minlength=n_clusters)
    typical = np.empty(len(x))
    for c in range(n_clusters):
        members = np.flatnonzero(labels == c)
        typical[members] = typicality(x[members])
    free = ~annotated.copy()
    choices = []
    for _ in range(budget):
        open_clusters = [c for c in range(n_clusters) if free[labels == c].any()]
        c = min(open_clusters, key=lambda c: (sizes[c] <= MIN_CLUSTER_SIZE, filled[c], -sizes[c], c))
        members = np.flatnonzero((labels == c) & free)
        i = int(members[np.argmax(typical[members])])
        why = (
            f"most typical unannotated member of cluster {c} ({sizes[c]} members, {filled[c]} annotated or "
            "chosen before)"
        )
        choices.append(Choice(i, int(c), float(typical[i]), why))
        free[i] = False
        filled[c] += 1
    return choices


def _nearest_other_cluster(x: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """Per point, the distance to the nearest point of another cluster (inf with one cluster)."""
    out = np.empty(len(x))
    for s in range(0, len(x), CHUNK):
        d = distances(x[s : s + CHUNK], x)
        d[labels[s : s + CHUNK, None] == labels[None, :]] = np.inf
        out[s : s + CHUNK] = d.min(1)
    return out


def auto_delta(x: np.ndarray, labels: np.ndarray, purity: float = PURITY) -> float:
    """ProbCover's δ: the largest ball radius at which at least a `purity` share of the δ-balls hold points
    of one k-means cluster only (the paper's criterion, with `labels` as the clusters). The open ball
    {y : d(x_i, y) < δ} is pure while δ ≤ m_i, the distance from x_i to the nearest point of another
    cluster, so δ is the j-th largest m_i, j = ⌈purity · n⌉. With one cluster every ball is pure: inf."""
    m = np.sort(_nearest_other_cluster(x, labels))
    j = int(np.ceil(purity * len(m) - 1e-9))
    return float(m[len(m) - max(j, 1)])


def _balls(x: np.ndarray, delta: float) -> list[np.ndarray]:
    """The indices of the points closer than `delta` to each point, the point itself always included."""
    out: list[np.ndarray] = []
    for s in range(0, len(x), CHUNK):
        d = distances(x[s : s + CHUNK], x)
        d[np.arange(len(d)), np.arange(s, s + len(d))] = -1.0  # itself, even when δ is 0
        out += [np.flatnonzero(row < delta) for row in d]
    return out


def probcover(
    x: np.ndarray,
    annotated: np.ndarray,
    budget: int,
    seed: int,
    uncertainty: np.ndarray | None = None,
    delta: float | None = None,
) -> list[Choice]:
    """ProbCover (Yehuda et al., NeurIPS 2022): "select the samples that maximize the probability coverage"
    — greedy maximum coverage of open δ-balls: each pick is the point whose ball covers the most points not yet
    covered (annotated points' balls count as covered; ties: the lowest index). δ from `auto_delta` on a
    k-means into budget + annotated clusters unless given. Once everything is covered, the rest are drawn
    at random, as the paper's code does."""
    if delta is None:
        labels = kmeans(x, min(budget + int(annotated.sum()), len(x)), seed)
        delta = auto_delta(x, labels)
    balls = _balls(x, delta)
    covered = np.zeros(len(x), dtype=bool)
    for a in np.flatnonzero(annotated):
        covered[balls[a]] = True
    gain = np.array([int((~covered[b]).sum()) for b in balls])
    free = ~annotated.copy()
    rng = np.random.default_rng(seed)
    choices = []
    for _ in range(budget):
        candidates = np.flatnonzero(free)
        best = candidates[np.argmax(gain[candidates])]
        if gain[best] == 0:
            i = int(rng.choice(candidates))
            choices.append(
                Choice(i, -1, 0.0, f"everything lies within δ={delta:.4g} of one chosen; drawn at random")
            )
        else:
            i = int(best)
            why = f"its δ-ball (δ={delta:.4g}) covers {gain[i]} not covered yet"
            choices.append(Choice(i, -1, float(gain[i]), why))
        newly = balls[i][~covered[balls[i]]]
        covered[newly] = True
        for p in newly:  # balls are symmetric: the balls holding p are those of p's neighbours
            gain[balls[p]] -= 1
        free[i] = False
    return choices


def _nearest_chosen(x: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """Distance of every row to the nearest row of `chosen` (inf when none)."""
    if not chosen.any():
        return np.full(len(x), np.inf)
    anchors = x[chosen]
    return np.concatenate([distances(x[s : s + CHUNK], anchors).min(1) for s in range(0, len(x), CHUNK)])


def kcenter(
    x: np.ndarray, annotated: np.ndarray, budget: int, seed: int, uncertainty: np.ndarray | None = None
) -> list[Choice]:
    """k-center greedy, the core-set approach (Sener & Savarese, ICLR 2018): "choose the point which is
    farthest from the current centers" — the annotated and chosen points. With nothing annotated the first
    pick is the point nearest the mean (deterministic, and a centre of the data)."""
    free = ~annotated.copy()
    taken = annotated.copy()
    nearest = _nearest_chosen(x, taken)
    choices = []
    for _ in range(budget):
        candidates = np.flatnonzero(free)
        if not taken.any():
            i = int(candidates[np.argmin(distances(x[candidates], x.mean(0, keepdims=True))[:, 0])])
            choices.append(Choice(i, -1, 0.0, "nearest the mean of the pool (first centre)"))
        else:
            i = int(candidates[np.argmax(nearest[candidates])])
            choices.append(
                Choice(i, -1, float(nearest[i]), f"farthest from the annotated and chosen ({nearest[i]:.4g})")
            )
        free[i] = False
        taken[i] = True
        nearest = np.minimum(nearest, distances(x, x[i : i + 1])[:, 0])
    return choices


def random_choice(
    x: np.ndarray, annotated: np.ndarray, budget: int, seed: int, uncertainty: np.ndarray | None = None
) -> list[Choice]:
    """Unannotated points drawn uniformly without replacement: the baseline every strategy must beat."""
    candidates = np.flatnonzero(~annotated)
    picked = np.random.default_rng(seed).choice(candidates, size=budget, replace=False)
    return [Choice(int(i), -1, float("nan"), f"drawn at random (seed {seed})") for i in picked]


def uncertainty_diversity(
    x: np.ndarray, annotated: np.ndarray, budget: int, seed: int, uncertainty: np.ndarray | None = None
) -> list[Choice]:
    """The next round with a fine-tuned model: greedily the point with the largest uncertainty × distance
    to the nearest annotated or chosen point (the distance relative to the largest such distance), so that
    the model's doubts are weighed with diversity and one confusing kind of image is not chosen twice."""
    if uncertainty is None:
        raise ConfigError("the 'uncertainty' strategy needs a fine-tuned model (--model)")
    u = np.asarray(uncertainty, dtype=np.float64)
    free = ~annotated.copy()
    taken = annotated.copy()
    nearest = _nearest_chosen(x, taken)
    choices = []
    for _ in range(budget):
        candidates = np.flatnonzero(free)
        far = nearest[candidates]
        spread = far.max() if np.isfinite(far).all() and far.max() > 0 else None
        diversity = far / spread if spread is not None else np.ones(len(candidates))
        score = u[candidates] * diversity
        j = int(np.argmax(score))
        i = int(candidates[j])
        why = f"TTA disagreement {u[i]:.3f} × relative distance to the nearest annotated or chosen {diversity[j]:.3f}"
        choices.append(Choice(i, -1, float(score[j]), why))
        free[i] = False
        taken[i] = True
        nearest = np.minimum(nearest, distances(x, x[i : i + 1])[:, 0])
    return choices


@dataclass(frozen=True)
class Strategy:
    """A registered strategy: its function, a one-line description, and whether it needs a model's
    per-item uncertainty."""

    name: str
    choose: Callable[..., list[Choice]]
    description: str
    needs_uncertainty: bool = False


STRATEGIES: dict[str, Strategy] = {
    s.name: s
    for s in (
        Strategy(
            "typiclust", typiclust, "the most typical image of each of budget + annotated k-means clusters"
        ),
        Strategy("probcover", probcover, "greedy maximum coverage of δ-balls (δ keeps 95 % of balls pure)"),
        Strategy(
            "kcenter", kcenter, "k-center greedy (core-set): the farthest from the annotated and chosen"
        ),
        Strategy("random", random_choice, "uniformly at random (the baseline)"),
        Strategy(
            "uncertainty",
            uncertainty_diversity,
            "a fine-tuned model's TTA disagreement × distance to the annotated (needs --model)",
            needs_uncertainty=True,
        ),
    )
}


def strategy_named(name: str) -> Strategy:
    """The strategy registered under `name`; an unknown name is a ConfigError listing the valid ones."""
    try:
        return STRATEGIES[name]
    except KeyError:
        raise ConfigError(
            f"unknown selection strategy '{name}'; valid strategies: {', '.join(STRATEGIES)}"
        ) from None
