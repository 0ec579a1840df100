import numpy as np
import torch

from sslseg.config import PostprocessConfig
from sslseg.data.targets import instance_distance_map, instance_targets, semantic_classes
from sslseg.metrics import instance_scores
from sslseg.segmentation.postprocess import distance_to_instances
from sslseg.segmentation.tiling import sliding_window


def touching_disks() -> np.ndarray:
    yy, xx = np.mgrid[:64, :64]
    labels = np.zeros((64, 64), np.int32)
    labels[(yy - 32) ** 2 + (xx - 20) ** 2 < 100] = 1
    labels[(yy - 32) ** 2 + (xx - 37) ** 2 < 100] = 2  # overlaps disk 1: the two touch along a line
    labels[(yy - 8) ** 2 + (xx - 55) ** 2 < 25] = 7
    return labels


def test_distance_map_is_one_at_centres_zero_outside():
    labels = touching_disks()
    d = instance_distance_map(labels)
    assert d[labels == 0].max() == 0
    for i in (1, 2, 7):
        assert np.isclose(d[labels == i].max(), 1.0)
        assert d[labels == i].min() > 0
    t = instance_targets(labels)
    assert t.shape == (2, 64, 64) and np.array_equal(t[0] > 0, labels > 0)


def test_watershed_recovers_touching_instances_from_perfect_maps():
    labels = touching_disks()
    pred = distance_to_instances(
        (labels > 0).astype(float), instance_distance_map(labels), PostprocessConfig()
    )
    assert instance_scores(labels, pred)["ap@0.5"] == 1.0


def test_unseeded_foreground_and_min_size():
    fg = np.zeros((32, 32))
    fg[2:12, 2:12] = 1  # a blob whose distance never reaches the seed threshold still becomes an object
    fg[20, 20] = 1  # a one-pixel speck is dropped by min_size
    pred = distance_to_instances(fg, np.zeros((32, 32)), PostprocessConfig(min_size=4))
    assert pred.max() == 1 and (pred == 1).sum() == 100


def test_semantic_classes_binary_255():
    assert semantic_classes(np.array([[0, 255]]), 2).tolist() == [[0, 1]]


def test_sliding_window_is_exact_for_pointwise_functions():
    img = torch.randn(3, 100, 77)
    out = sliding_window(lambda b: b * 2 + 1, img, tile_size=32, overlap=0.5, batch_size=3)
    assert out.shape == img.shape
    assert torch.allclose(out, img * 2 + 1, atol=1e-5)


def test_sliding_window_small_image_single_pass():
    img = torch.randn(1, 20, 30)
    calls = []

    def f(b):
        calls.append(b.shape)
        return b

    out = sliding_window(f, img, tile_size=512)
    assert len(calls) == 1 and calls[0][-1] % 32 == 0
    assert torch.allclose(out, img)


def test_zoomed_training_crops_keep_valid_targets():
    from sslseg.data.datasets import LoadedSample, RandomCropDataset

    labels = touching_disks()
    sample = LoadedSample(
        "a", np.random.rand(1, 64, 64).astype(np.float32), instance_targets(labels), labels, (64, 64)
    )
    ds = RandomCropDataset([sample], crop_size=32, length=20, scale_range=(0.5, 2.0))
    for i in range(20):
        img, tgt = ds[i]
        assert img.shape == (1, 32, 32) and tgt.shape == (2, 32, 32)
        assert set(torch.unique(tgt[0]).tolist()) <= {0.0, 1.0}
        assert tgt[1].min() >= 0 and tgt[1].max() <= 1


def test_relative_min_size_drops_specks_next_to_large_objects():
    fg = np.zeros((64, 64))
    fg[5:35, 5:35] = 1  # a 900-pixel nucleus
    fg[40:52, 40:52] = 1  # 144 pixels
    fg[60, 60] = fg[60, 61] = fg[61, 60] = fg[61, 61] = fg[55, 5] = fg[55, 6] = fg[56, 5] = fg[56, 6] = (
        1  # specks
    )
    pred = distance_to_instances(fg, np.zeros((64, 64)), PostprocessConfig(min_size=0, min_size_fraction=0.1))
    assert pred.max() == 2  # typical area 900 → limit 90 px: the two 4-pixel specks go, both nuclei stay
    swarm = fg.copy()
    for i in range(10):  # ten more specks: now most objects are specks, yet the typical one is not
        swarm[2 * i, 60:62] = 1
    pred = distance_to_instances(
        swarm, np.zeros((64, 64)), PostprocessConfig(min_size=0, min_size_fraction=0.1)
    )
    assert pred.max() == 2


def test_convex_pairs_merge_a_nucleus_cut_in_two_but_not_two_touching_nuclei():
    from sslseg.segmentation.postprocess import merge_convex_pairs

    yy, xx = np.mgrid[:64, :64]
    labels = touching_disks()  # disks 1 and 2 touch along a line: a notch on each side (union 0.91 convex)
    cut = (yy - 50) ** 2 + (xx - 50) ** 2 < 80  # one round nucleus, cut in two halves (union 0.97)
    labels[cut & (xx < 50)] = 3
    labels[cut & (xx >= 50)] = 4
    merged = merge_convex_pairs(labels, 0.95)
    assert np.array_equal(merged == 3, cut)  # the halves are one object again, under the lower label
    for i in (1, 2, 7):  # the touching pair stays two objects; the lone one is untouched
        assert np.array_equal(merged == i, labels == i)
    assert np.array_equal(merge_convex_pairs(labels, 1.0), labels)  # no union is perfectly convex


def test_merge_solidity_reaches_the_watershed_and_each_object_merges_once():
    from sslseg.segmentation.postprocess import merge_convex_pairs

    # a nucleus cut in three strips: the two most convex unions compete for the middle strip, one wins
    yy, xx = np.mgrid[:48, :48]
    disk = (yy - 24) ** 2 + (xx - 24) ** 2 < 200
    labels = np.zeros((48, 48), np.int32)
    labels[disk & (xx < 20)] = 1
    labels[disk & (xx >= 20) & (xx < 28)] = 2
    labels[disk & (xx >= 28)] = 3
    once = merge_convex_pairs(labels, 0.8)
    assert len(np.unique(once)) == 3  # background and two objects: one merge, not a chain of two
    twice = merge_convex_pairs(once, 0.8)
    assert np.array_equal(twice > 0, disk) and len(np.unique(twice)) == 2
    # the same through the post-processing: perfect maps of the three strips give one object with merging
    fg = disk.astype(float)
    distance = instance_distance_map(labels)
    assert distance_to_instances(fg, distance, PostprocessConfig()).max() == 3
    assert distance_to_instances(fg, distance, PostprocessConfig(merge_solidity=0.8)).max() == 2
