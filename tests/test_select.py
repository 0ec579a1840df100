"""`sslseg select`: the strategies against hand-computed values on small point sets, and the whole path on
tiny synthetic pools: labels never read, annotated images never proposed, determinism, regions that never
overlap, a proposal folder that sslseg reads back, and one clear line for bad input."""

from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import tiny_instance_checkpoint

from sslseg.data.io import read_image, write_image
from sslseg.data.layouts import LabelFile, find_samples
from sslseg.data.lazy import ImageSource
from sslseg.data.synth import write_synthetic_dataset
from sslseg.data.verify import verify_dataset
from sslseg.errors import ConfigError, DataError
from sslseg.nn.unet import build_encoder
from sslseg.select import select
from sslseg.selection.features import feature_space, image_descriptors, load_embedder
from sslseg.selection.regions import overlap, region_grid
from sslseg.selection.strategies import (
    STRATEGIES,
    auto_delta,
    kcenter,
    probcover,
    strategy_named,
    typicality,
    typiclust,
    uncertainty_diversity,
)
from sslseg.weights import save_encoder


def _line(*values: float) -> np.ndarray:
    return np.array(values, dtype=np.float64)[:, None]


def _mask(n: int, *annotated: int) -> np.ndarray:
    m = np.zeros(n, dtype=bool)
    m[list(annotated)] = True
    return m


# ------------------------------------------------------------------------------------ strategies by hand


def test_typicality_is_the_inverse_mean_distance_to_the_k_nearest_others():
    x = _line(0, 1, 3)
    # K = min(20, n - 1) = 2: point 0 → mean(1, 3) = 2; point 1 → mean(1, 2) = 1.5; point 3 → mean(2, 3)
    np.testing.assert_allclose(typicality(x), [1 / 2, 1 / 1.5, 1 / 2.5])
    np.testing.assert_allclose(typicality(x, neighbours=1), [1, 1, 1 / 2])
    assert typicality(_line(5)).tolist() == [np.inf]  # alone in its cluster


def test_typiclust_takes_the_most_typical_of_each_cluster_the_emptiest_first():
    x = _line(0, 1, 2, 100, 101, 103)  # two clusters; 1 and 101 are their most typical points
    assert sorted(c.index for c in typiclust(x, _mask(6), 2, seed=0)) == [1, 4]
    # 1 is annotated: two clusters (budget + annotated), and the one without an annotated point goes first
    picks = typiclust(x, _mask(6, 1), 1, seed=0)
    assert [c.index for c in picks] == [4]
    assert picks[0].score == pytest.approx(1 / 1.5)


def test_typiclust_takes_a_second_point_of_a_large_cluster_before_an_outlier_cluster():
    # k = budget = 3 clusters: 8 points, 7 points, and 2 outliers far away; clusters of 5 points or fewer are
    # outliers (as in the authors' code), so the third pick is the largest cluster's next most typical point
    x = _line(0, 1, 2, 3, 4, 5, 6, 7, 100, 101, 102, 103, 104, 105, 106, 1000, 1003)
    picks = typiclust(x, _mask(len(x)), 3, seed=0)
    clusters = [int(x[c.index, 0] // 100) for c in picks]
    assert sorted(clusters) == [0, 0, 1], [c.index for c in picks]
    assert not any(x[c.index, 0] >= 1000 for c in picks)
    # only when no larger cluster has a point left is an outlier taken
    assert any(x[c.index, 0] >= 1000 for c in typiclust(x, _mask(len(x), *range(15)), 1, seed=0))


def test_auto_delta_keeps_the_purity_share_of_balls_pure():
    x = _line(0, 1, 2, 10, 11)
    labels = np.array([0, 0, 0, 1, 1])
    # distance to the nearest point of the other cluster: 10, 9, 8, 8, 9 (sorted 8, 8, 9, 9, 10)
    assert auto_delta(x, labels, purity=0.8) == 8  # open balls of radius 8 are all pure; 8.5 leaves 3 of 5
    assert auto_delta(x, labels, purity=0.6) == 9  # the balls of 0, 1 and 11 stay pure
    assert auto_delta(x, np.zeros(5, int)) == np.inf  # one cluster: every ball is pure


def test_probcover_greedily_covers_the_most_uncovered_points():
    x = _line(0, 1, 2, 10, 11, 30)
    picks = probcover(x, _mask(6), 3, seed=0, delta=1.5)
    # balls: {0,1} {0,1,2} {1,2} {10,11} {10,11} {30}: 1 covers 3, then 10 covers 2 (the lower index), then 30
    assert [(c.index, c.score) for c in picks] == [(1, 3), (3, 2), (5, 1)]
    # 0 annotated covers 0 and 1: 10 (2 new) beats 1 and 2 (1 new each)
    picks = probcover(x, _mask(6, 0), 2, seed=0, delta=1.5)
    assert [(c.index, c.score) for c in picks] == [(3, 2), (1, 1)]


def test_kcenter_takes_the_farthest_from_annotated_and_chosen():
    x = _line(0, 1, 5, 10)
    assert [c.index for c in kcenter(x, _mask(4), 3, seed=0)] == [2, 0, 3]  # nearest the mean first
    picks = kcenter(x, _mask(4, 3), 2, seed=0)
    assert [(c.index, c.score) for c in picks] == [(0, 10), (2, 5)]


def test_uncertainty_is_weighed_with_the_distance_to_the_annotated():
    x = _line(0, 1, 10)
    u = np.array([np.nan, 0.9, 0.5])  # 0 is annotated
    # distances to 0, relative to the largest: 1 → 0.1 × 0.9 = 0.09, 10 → 1 × 0.5 = 0.5; then 1 is 1 from
    # 0 and 9 from 10: relative 1 → 0.9
    picks = uncertainty_diversity(x, _mask(3, 0), 2, seed=0, uncertainty=u)
    assert [c.index for c in picks] == [2, 1]
    assert [c.score for c in picks] == pytest.approx([0.5, 0.9])


def test_unknown_strategy_lists_the_valid_ones():
    with pytest.raises(ConfigError, match="unknown selection strategy 'typiclus'.*typiclust, probcover"):
        strategy_named("typiclus")
    assert {"typiclust", "probcover", "kcenter", "random"} <= set(STRATEGIES)


def test_descriptors_see_intensity_foreground_and_blobs():
    dark = np.zeros((40, 40, 1), np.uint8)
    blobs = dark.copy()
    blobs[5:10, 5:10] = blobs[20:30, 20:30] = 200
    d0, d1 = image_descriptors(dark), image_descriptors(blobs)
    assert d0.shape == (7,) and d0[3] == 0 and d0[4] == 0  # no foreground, no blobs
    assert d1[0] > d0[0] and d1[3] == pytest.approx(125 / 1600) and d1[4] == pytest.approx(2 / 1600 * 1e4)
    z = feature_space(np.stack([d0, d1, d1]), "descriptors")
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-12)


# ------------------------------------------------------------------------------------ the whole path


@pytest.fixture
def pool(tmp_path: Path) -> Path:
    """8 synthetic 48 px images; 3 keep their labels (annotated), 5 lose them."""
    root = write_synthetic_dataset(tmp_path / "pool", n_images=8, size=48, seed=3)
    for i in (0, 2, 3, 5, 7):
        (root / "labels" / f"synth_{i:04d}.tif").unlink()
    return root


ANNOTATED = {"synth_0001", "synth_0004", "synth_0006"}


def _rows(out: Path) -> list[dict[str, str]]:
    return list(csv.DictReader((out / "to_annotate.csv").read_text().splitlines()))


@pytest.mark.parametrize("strategy", ["typiclust", "probcover", "kcenter", "random"])
def test_annotated_images_are_never_proposed(pool, tmp_path, strategy):
    result = select(pool, 5, tmp_path / strategy, strategy=strategy, progress=False)
    names = [r.name for r in result.rows]
    assert set(names) == {"synth_0000", "synth_0002", "synth_0003", "synth_0005", "synth_0007"}
    assert not set(names) & ANNOTATED and result.annotated == 3 and result.candidates == 5


def test_labels_are_never_read_while_choosing(pool, tmp_path, monkeypatch):
    def fail(*args, **kwargs):
        pytest.fail("a label was read while choosing")

    monkeypatch.setattr(LabelFile, "load", fail)
    monkeypatch.setattr("sslseg.data.io.read_label", fail)
    monkeypatch.setattr("sslseg.data.layouts.pairs.read_label", fail)
    select(pool, 2, tmp_path / "d", progress=False)
    select(pool, 2, tmp_path / "e", features="random", strategy="probcover", progress=False)


def test_copies_of_test_images_are_never_proposed(pool, tmp_path):
    test = write_synthetic_dataset(tmp_path / "test", n_images=2, size=48, seed=11)
    for kind in ("images", "labels"):  # names of their own: a namesake would be left out by its name
        for f in (test / kind).iterdir():
            f.rename(f.with_name(f.name.replace("synth", "test")))
    copy = pool / "images" / "renamed_copy.tif"
    write_image(copy, read_image(test / "images" / "test_0001.tif"))  # the same pixels under another name
    with pytest.warns(UserWarning, match=r"renamed_copy\.tif \(same pixels as test image .*test_0001\.tif\)"):
        result = select(pool, 5, tmp_path / "guarded", strategy="kcenter", heldout=[test], progress=False)
    assert "renamed_copy" not in {r.name for r in result.rows} and result.candidates == 5
    assert "renamed_copy" in {r.name for r in select(pool, 6, tmp_path / "open", progress=False).rows}


def test_same_seed_same_proposal(pool, tmp_path):
    torch.manual_seed(1)  # the global random state must not matter, only the seed
    a = select(pool, 3, tmp_path / "a", features="random", seed=4, progress=False)
    torch.manual_seed(2)
    b = select(pool, 3, tmp_path / "b", features="random", seed=4, progress=False)
    assert [(r.name, r.cluster, r.score) for r in a.rows] == [(r.name, r.cluster, r.score) for r in b.rows]
    draws = {
        tuple(r.name for r in select(pool, 3, tmp_path / f"r{s}", "random", seed=s, progress=False).rows)
        for s in range(4)
    }
    assert len(draws) > 1  # the seed matters


def test_several_budgets_share_one_feature_pass_and_equal_separate_calls(pool, tmp_path, monkeypatch):
    import sslseg.select as select_mod

    passes = []
    matrix = select_mod._feature_matrix
    monkeypatch.setattr(select_mod, "_feature_matrix", lambda *a, **k: passes.append(1) or matrix(*a, **k))
    two = select(
        pool, 2, tmp_path / "b2", features="random", seed=3, progress=False, also={4: tmp_path / "b4"}
    )
    assert len(passes) == 1  # the embeddings are computed once for both budgets
    for budget, together in ((2, two.rows), (4, _rows(tmp_path / "b4"))):
        alone = select(pool, budget, tmp_path / f"alone{budget}", features="random", seed=3, progress=False)
        names = [r.name if hasattr(r, "name") else r["name"] for r in together]
        assert names == [r.name for r in alone.rows]
    # every folder and budget is checked first: a bad further one stops before anything is written
    for also, error in (
        ({2: tmp_path / "b4"}, "already holds a proposal"),
        ({2: pool / "inside"}, "lies inside the pool"),
        ({0: tmp_path / "b0"}, "at least 1, got 0"),
        ({6: tmp_path / "b6"}, "--budget 6 is larger than the 5 unannotated"),
    ):
        with pytest.raises(ConfigError, match=error):
            select(pool, 1, tmp_path / "new", progress=False, also=also)
        assert not (tmp_path / "new").exists()
        assert all(o == tmp_path / "b4" or not o.exists() for o in also.values())


def test_proposal_folder_reads_back_and_verify_counts_the_budget(pool, tmp_path):
    out = tmp_path / "next"
    result = select(pool, 3, out, progress=False)
    rows = _rows(out)
    assert [r["name"] for r in rows] == [r.name for r in result.rows] and rows[0]["rank"] == "1"
    assert rows[0]["why"] and {"y0", "x0", "y1", "x1", "cluster", "score", "image"} <= set(rows[0])
    samples = find_samples(out, allow_unlabeled=True)
    assert sorted(s.id for s in samples) == sorted(r["name"] for r in rows)
    assert all(s.label is None for s in samples) and (out / "labels").is_dir()
    first = samples[0]
    np.testing.assert_array_equal(read_image(first.image), read_image(pool / "images" / f"{first.id}.tif"))
    assert read_image(out / "contact_sheet.png").shape[2] == 3
    report = verify_dataset(out)
    assert report.ok and len(report.proposed) == 3 and report.proposed_done == []
    write_image(out / "labels" / f"{rows[1]['name']}.tif", np.zeros((48, 48), np.uint16))
    report = verify_dataset(out)
    assert report.proposed_done == [rows[1]["name"]]
    assert "BUDGET  1 of 3 proposed images annotated" in report.format()
    with pytest.raises(ConfigError, match="already holds a proposal"):
        select(pool, 3, out, progress=False)


def test_a_pretrained_encoder_brings_its_channels_and_working_scale(pool, tmp_path):
    weights = tmp_path / "pretrain" / "encoder.safetensors"
    save_encoder(
        build_encoder("resnet18", 1), weights, {"encoder": "resnet18", "in_channels": 1, "scale": 0.5}
    )
    embedder = load_embedder(str(weights.parent))
    assert (embedder.channels, embedder.scale) == (1, 0.5)
    assert embedder.prepare(np.zeros((48, 48, 3), np.uint8), weights).shape == (1, 24, 24)
    result = select(pool, 2, tmp_path / "out", features=str(weights.parent), progress=False)
    assert len(result.rows) == 2 and not {r.name for r in result.rows} & ANNOTATED


def test_next_round_weighs_the_models_tta_disagreement(pool, tmp_path, monkeypatch):
    checkpoint = tiny_instance_checkpoint(tmp_path / "model")
    monkeypatch.setattr(LabelFile, "load", lambda *a, **k: pytest.fail("a label was read while choosing"))
    # the checkpoint's own encoder gives the features too
    result = select(pool, 2, tmp_path / "next", model=checkpoint, features=str(checkpoint), progress=False)
    assert len(result.rows) == 2 and not {r.name for r in result.rows} & ANNOTATED
    assert all("TTA disagreement" in r.why and 0 <= r.score <= 1 for r in result.rows)
    with pytest.raises(ConfigError, match="--model is weighed in by the 'uncertainty' strategy"):
        select(pool, 2, tmp_path / "other", strategy="kcenter", model=checkpoint, progress=False)


def test_labelled_images_of_an_earlier_proposal_count_as_annotated(pool, tmp_path):
    first = select(pool, 2, tmp_path / "round1", layout="unlabeled", progress=False)
    done = first.rows[0].name
    write_image(tmp_path / "round1" / "labels" / f"{done}.tif", np.zeros((48, 48), np.uint16))
    second = select(
        pool, 7, tmp_path / "round2", layout="unlabeled", annotated=[tmp_path / "round1"], progress=False
    )
    assert second.annotated == 1 and done not in {r.name for r in second.rows}


def test_region_grid_tiles_never_overlap_and_lie_inside():
    for h, w, size in [(100, 70, 32), (64, 64, 32), (20, 90, 32), (257, 1000, 256)]:
        boxes = region_grid(h, w, size)
        assert boxes and all(0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w for y0, x0, y1, x1 in boxes)
        assert not any(overlap(a, b) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    assert region_grid(100, 70, 32) == [(y, x, y + 32, x + 32) for y in (2, 34, 66) for x in (3, 35)]


def test_regions_are_read_a_band_at_a_time_and_written_as_crops(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (100, 70), dtype=np.uint8)
    write_image(tmp_path / "pool" / "big.tif", image)
    write_image(tmp_path / "pool" / "small.tif", image[:40, :40])
    reads = []
    original = ImageSource.read

    def recording(self, y0, y1, x0, x1):
        reads.append((y1 - y0) * (x1 - x0))
        return original(self, y0, y1, x0, x1)

    monkeypatch.setattr(ImageSource, "read", recording)
    result = select(tmp_path / "pool", 4, tmp_path / "out", region=32, strategy="kcenter", progress=False)
    assert max(reads) <= 32 * 70  # one band of rows, never the whole image
    boxes = [(r.image, (r.y0, r.x0, r.y1, r.x1)) for r in result.rows]
    assert not any(a[0] == b[0] and overlap(a[1], b[1]) for i, a in enumerate(boxes) for b in boxes[i + 1 :])
    for r in result.rows:
        crop = read_image(tmp_path / "out" / "images" / f"{r.name}.tif")[:, :, 0]
        source = image if r.image.endswith("big.tif") else image[:40, :40]
        np.testing.assert_array_equal(crop, source[r.y0 : r.y1, r.x0 : r.x1])


def test_command_line_proposes_and_errors_in_one_line(pool, tmp_path):
    def sslseg(*args: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "sslseg", "select", str(pool), *args]
        return subprocess.run(command, capture_output=True, text=True, timeout=300)

    r = sslseg("--budget", "2", "--out", str(tmp_path / "out"), "--strategy", "kcenter")
    assert r.returncode == 0 and "proposed 2 of 5 unannotated images (3 annotated)" in r.stdout, r.stderr
    assert len(_rows(tmp_path / "out")) == 2
    r = sslseg("--budget", "9", "--out", str(tmp_path / "more"))
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert [line for line in r.stderr.splitlines() if "error:" in line] == [
        f"error: --budget 9 is larger than the 5 unannotated images in {pool}; ask for at most 5"
    ]


def test_bad_input_is_one_clear_line(pool, tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="empty dataset"):
        select(tmp_path / "empty", 1, tmp_path / "o1", progress=False)
    every = write_synthetic_dataset(tmp_path / "all_labelled", n_images=2, size=32)
    with pytest.raises(DataError, match="every one of the 2 images in the pool is annotated"):
        select(every, 1, tmp_path / "o0", progress=False)
    with pytest.raises(ConfigError, match="--budget 6 is larger than the 5 unannotated images"):
        select(pool, 6, tmp_path / "o2", progress=False)
    (pool / "images" / "synth_0003.tif").write_bytes(b"not a tiff at all")
    with pytest.raises(DataError, match="synth_0003.tif: .*corrupt TIFF"):
        select(pool, 2, tmp_path / "o3", progress=False)
    with pytest.raises(ConfigError, match="inside the pool"):
        select(pool, 2, pool / "proposal", progress=False)
    with pytest.raises(ConfigError, match="needs a fine-tuned|weighs a model"):
        select(pool, 2, tmp_path / "o4", strategy="uncertainty", progress=False)


def test_a_model_with_real_object_sizes_takes_the_pixel_size_from_the_command(pool, tmp_path):
    # trained with data.object_size_um, the model needs each image's pixel size; the pool's files have none
    checkpoint = tiny_instance_checkpoint(
        tmp_path / "model", data={"object_size": 24, "object_size_um": 6, "pixel_size": 0.5}
    )
    with pytest.raises(DataError, match=r"synth_\d+\.tif.*give it with --pixel-size"):
        select(pool, 2, tmp_path / "missing", model=checkpoint, progress=False)
    with pytest.raises(ConfigError, match="--pixel-size must be a positive"):
        select(pool, 2, tmp_path / "bad", model=checkpoint, pixel_size=-1, progress=False)
    result = select(pool, 2, tmp_path / "given", model=checkpoint, pixel_size=0.5, progress=False)
    assert len(result.rows) == 2
