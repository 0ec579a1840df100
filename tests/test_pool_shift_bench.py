"""benchmarks/pool_shift.py: a test image is far from the pool only when it lies farther from every pool image
than the pool's own images lie from their nearest neighbours, and each cell's score splits into near and far."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import benchmark_module, run_benchmark_script

from sslseg.data.synth import write_synthetic_dataset

ps = benchmark_module("pool_shift")


def test_nearest_distances_against_hand_computed_values():
    a = np.array([[0.0, 0.0], [3.0, 4.0]])
    b = np.array([[0.0, 1.0], [3.0, 0.0], [0.0, 0.0]])
    assert ps.nearest_distances(a, b).tolist() == [0.0, 4.0]
    pool = np.array([[0.0], [1.0], [1.0], [5.0]])
    # a row is not its own neighbour, but a duplicate of it is
    assert ps.nearest_distances(pool, pool, exclude_self=True).tolist() == [1.0, 0.0, 0.0, 4.0]


def test_far_means_beyond_the_pools_own_spread():
    rng = np.random.default_rng(0)
    pool = rng.normal(size=(200, 3))
    test = np.vstack([pool[:5] + 0.01, [[8.0, 8.0, 8.0], [-9.0, 0.0, 0.0]]])
    far, threshold = ps.far_from_pool(pool, test, quantile=0.95)
    assert far.tolist() == [False] * 5 + [True, True]
    # the threshold is the pool's 95th percentile of nearest-neighbour distances, measured standardised
    z = (pool - pool.mean(0)) / pool.std(0)
    assert threshold == pytest.approx(np.quantile(ps.nearest_distances(z, z, exclude_self=True), 0.95))
    # scaling one descriptor changes nothing: the columns are standardised on the pool
    scaled = ps.far_from_pool(pool * [1, 1000, 1], test * [1, 1000, 1])[0]
    assert scaled.tolist() == far.tolist()
    with pytest.raises(ValueError, match="at least 2"):
        ps.far_from_pool(pool[:1], test)


def test_near_and_far_means_of_a_cell():
    near, far = ps.near_far_means({"a": 0.8, "b": 0.6, "c": 0.1}, far_ids={"c"})
    assert (near, far) == pytest.approx((0.7, 0.1))
    assert np.isnan(ps.near_far_means({"a": 0.8}, far_ids=set())[1])


def _cell(root, row: str, images: int, seed: int, scores: dict[str, float]) -> None:
    cell = root / "cells" / "d" / row / "finetuned" / f"n{images}" / f"s{seed}"
    cell.mkdir(parents=True)
    lines = ["id,aji,dice"] + [f"{k},{v},0.5" for k, v in scores.items()]
    (cell / "test_per_image.csv").write_text("\n".join(lines) + "\n")


def test_the_script_splits_each_cell_by_the_test_images_distance(tmp_path):
    pool = write_synthetic_dataset(tmp_path / "pool", n_images=6, size=48, seed=0)
    test = write_synthetic_dataset(tmp_path / "test", n_images=2, size=48, seed=0)  # copies of pool images
    study = tmp_path / "study"
    _cell(study, "random", 4, 0, {"synth_0000": 0.6, "synth_0001": 0.4})
    _cell(study, "random", 4, 1, {"synth_0000": 0.8, "synth_0001": 0.6})
    (study / "cells" / "d" / "random" / "finetuned" / "n4" / "s2").mkdir(parents=True)  # unfinished: skipped
    lines = run_benchmark_script(
        "pool_shift.py", "--pool", str(pool), "--test", str(test), "--study", str(study), cwd=tmp_path
    )
    head, curve = lines
    assert head["test_images"] == 2 and head["far"] == 0  # the test images are pool images
    assert curve["row"] == "random" and curve["labelled_images"] == 4 and curve["cells"] == 2
    assert curve["all"] == pytest.approx(0.6) and curve["near"] == pytest.approx(0.6)
    assert curve["far"] is None  # no far image: no mean, not NaN
    assert curve["near_per_cell"] == pytest.approx([0.5, 0.7])
