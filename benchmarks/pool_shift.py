"""How far are the test images from the pool the annotations come from, and how much does that cost? Labels
buy little where the test set holds kinds of image the pool lacks: no choice of pool images annotates them.

Each image is described by sslseg's seven image descriptors (`sslseg.selection.features`), standardised on
the pool. A test image is *far* from the pool when its distance to the nearest pool image exceeds the
`--quantile` (default 0.95) of the pool images' own nearest-neighbour distances: farther than 95 % of the
pool's images are from their nearest neighbour. No label is read for this. Then, for every finished
fine-tuning cell of the given study folders (cells/<dataset>/<row>/finetuned/n<images>/s<seed>/
test_per_image.csv), the metric is averaged over the near and the far test images apart, per row and budget.

    python benchmarks/pool_shift.py --study runs/converged-dsb2018      # DSB2018 stage1_train -> stage1_test
    python benchmarks/pool_shift.py --pool POOL --test TEST --test-layout dsb --study STUDY --metric aji
"""

from __future__ import annotations

import argparse
import csv
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np
from _common import colour_or_gray, emit, require
from tqdm.auto import tqdm

from sslseg.data.io import read_image
from sslseg.data.layouts import Sample, find_samples
from sslseg.selection.features import DESCRIPTORS, image_descriptors
from sslseg.selection.strategies import CHUNK, distances

CELL = re.compile(r"cells/[^/]+/(?P<row>[^/]+)/finetuned/n(?P<images>\d+)/s(?P<seed>\d+)$")


def nearest_distances(a: np.ndarray, b: np.ndarray, exclude_self: bool = False) -> np.ndarray:
    """Per row of `a`, the Euclidean distance to its nearest row of `b`; with `exclude_self` (a is b) a
    row's own distance does not count, so a duplicate image still counts as a neighbour."""
    out = np.empty(len(a))
    for s in range(0, len(a), CHUNK):
        d = distances(a[s : s + CHUNK], b)
        if exclude_self:
            d[np.arange(len(d)), np.arange(s, s + len(d))] = np.inf
        out[s : s + CHUNK] = d.min(1)
    return out


def far_from_pool(pool: np.ndarray, test: np.ndarray, quantile: float = 0.95) -> tuple[np.ndarray, float]:
    """Which test rows lie farther from every pool row than the `quantile` of the pool rows' own
    nearest-neighbour distances (columns standardised on the pool first), and that threshold."""
    if len(pool) < 2:
        raise ValueError(f"a pool needs at least 2 images to measure its spread, got {len(pool)}")
    mean, spread = pool.mean(0), pool.std(0)
    spread = np.where(spread > 1e-12, spread, 1.0)  # a constant descriptor drops out
    p, t = (pool - mean) / spread, (test - mean) / spread
    threshold = float(np.quantile(nearest_distances(p, p, exclude_self=True), quantile))
    return nearest_distances(t, p) > threshold, threshold


def cell_scores(studies: Iterable[Path], metric: str) -> dict[tuple[str, str, int], list[dict[str, float]]]:
    """Per (study folder, row, annotated images), each finished cell's per-test-image `metric`, from its
    test_per_image.csv."""
    out: dict[tuple[str, str, int], list[dict[str, float]]] = defaultdict(list)
    for study in studies:
        for path in sorted(study.glob("cells/*/*/finetuned/n*/s*/test_per_image.csv")):
            m = CELL.search(path.parent.as_posix())
            if m is None:
                continue
            with path.open(newline="") as f:
                rows = list(csv.DictReader(f))
            if rows and metric not in rows[0]:
                raise SystemExit(f"{path}: no column '{metric}' (columns: {', '.join(rows[0])})")
            out[(study.name, m["row"], int(m["images"]))].append({r["id"]: float(r[metric]) for r in rows})
    return out


def near_far_means(scores: dict[str, float], far_ids: set[str]) -> tuple[float, float]:
    """The mean score over the near and over the far test images of one cell (nan where a side is empty)."""
    near = [v for k, v in scores.items() if k not in far_ids]
    far = [v for k, v in scores.items() if k in far_ids]
    return (float(np.mean(near)) if near else float("nan"), float(np.mean(far)) if far else float("nan"))


def _rounded(x: float) -> float | None:
    """A figure for a JSON line: 4 decimals, or None where there is none (no near or no far image)."""
    return None if np.isnan(x) else round(float(x), 4)


def describe(samples: list[Sample], what: str) -> np.ndarray:
    """The descriptors of each image (one row per image), with a progress bar."""
    return np.array([image_descriptors(read_image(s.image)) for s in tqdm(samples, desc=what, leave=False)])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--pool", type=Path, help="the images annotations come from (default: DSB2018 stage1_train)"
    )
    ap.add_argument("--test", type=Path, help="the test images (default: DSB2018 stage1_test)")
    ap.add_argument("--pool-layout", default="auto")
    ap.add_argument("--test-layout", default="auto")
    ap.add_argument("--study", type=Path, action="append", default=[], help="a study folder (repeatable)")
    ap.add_argument("--metric", default="aji")
    ap.add_argument("--quantile", type=float, default=0.95)
    args = ap.parse_args()
    pool_dir = args.pool or require("dsb2018", "stage1_train")
    test_dir, test_layout = args.test, args.test_layout
    if test_dir is None:
        test_dir, test_layout = require("dsb2018", "stage1_test"), "dsb"
    pool = find_samples(pool_dir, layout=args.pool_layout)
    test = find_samples(test_dir, layout=test_layout)
    far, threshold = far_from_pool(describe(pool, "pool"), describe(test, "test"), args.quantile)
    far_ids = {s.id for s, f in zip(test, far, strict=True) if f}
    kind = colour_or_gray(test)
    emit(
        benchmark="pool_shift",
        pool=str(pool_dir),
        test=str(test_dir),
        descriptors=list(DESCRIPTORS),
        threshold=round(threshold, 3),
        quantile=args.quantile,
        test_images=len(test),
        far=len(far_ids),
        far_by_kind={k: sum(kind[i] == k for i in far_ids) for k in sorted(set(kind.values()))},
        test_by_kind={k: sum(v == k for v in kind.values()) for k in sorted(set(kind.values()))},
    )
    for (study, row, images), cells in sorted(cell_scores(args.study, args.metric).items()):
        pairs = np.array([near_far_means(c, far_ids) for c in cells])
        every = [float(np.mean(list(c.values()))) for c in cells]
        emit(
            benchmark="pool_shift/curve",
            study=study,
            row=row,
            labelled_images=images,
            cells=len(cells),
            metric=args.metric,
            all=_rounded(np.mean(every)),
            near=_rounded(pairs[:, 0].mean()),
            far=_rounded(pairs[:, 1].mean()),
            near_per_cell=[_rounded(x) for x in pairs[:, 0]],
        )


if __name__ == "__main__":
    main()
