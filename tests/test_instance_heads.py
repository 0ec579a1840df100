"""Instance representations (`model.instance_head`): targets, loss and post-processing on hand-made touching
disks, and a contact-head run end to end."""

import numpy as np
import pytest
import torch
from conftest import small_instance_config
from scipy import ndimage

from sslseg.config import FinetuneConfig, PostprocessConfig
from sslseg.data.datasets import LoadedSample, RandomCropDataset
from sslseg.data.targets import INSTANCE_TARGETS, contact_map, contact_targets
from sslseg.errors import ConfigError
from sslseg.evaluate import evaluate_checkpoint, load_model
from sslseg.finetune import finetune
from sslseg.segmentation.heads import INSTANCE_HEADS, instance_head


def two_disks(gap: int) -> np.ndarray:
    """Two disks of radius 10 on one row; `gap` < 0 makes them overlap (the later one wins the overlap)."""
    yy, xx = np.mgrid[:48, :64]
    labels = np.zeros((48, 64), np.int32)
    labels[(yy - 24) ** 2 + (xx - 16) ** 2 <= 100] = 1
    labels[(yy - 24) ** 2 + (xx - (16 + 20 + gap)) ** 2 <= 100] = 2
    return labels


def one_disk() -> np.ndarray:
    yy, xx = np.mgrid[:48, :64]
    return ((yy - 24) ** 2 + (xx - 30) ** 2 <= 144).astype(np.int32)


def test_contact_marks_both_sides_of_a_touching_border_and_nothing_else():
    labels = two_disks(gap=-4)
    contact = contact_map(labels, radius=2)
    assert contact.dtype == np.float32 and set(np.unique(contact)) == {0.0, 1.0}
    border = (labels == 1) & ndimage.binary_dilation(labels == 2)  # disk 1's pixels next to disk 2
    assert contact[border].all() and contact[ndimage.binary_dilation(labels == 1) & (labels == 2)].all()
    # every contact pixel lies within 2 px (chessboard) of both disks
    near1 = ndimage.binary_dilation(labels == 1, np.ones((5, 5)))
    near2 = ndimage.binary_dilation(labels == 2, np.ones((5, 5)))
    assert not (contact.astype(bool) & ~(near1 & near2)).any()
    assert contact[labels > 0].mean() < 0.15  # a thin band, not the objects
    assert not contact_map(one_disk()).any()


def test_contact_covers_narrow_gaps_but_not_wide_ones():
    narrow = two_disks(gap=2)  # two background columns between the disks
    c = contact_map(narrow, radius=2)
    gap = (narrow == 0) & ndimage.binary_dilation(narrow == 1, np.ones((3, 3)), 2)
    gap &= ndimage.binary_dilation(narrow == 2, np.ones((3, 3)), 2)
    assert gap.any() and c[gap].all()
    assert not contact_map(two_disks(gap=8), radius=2).any()


def test_contact_targets_stack_foreground_distance_and_contact():
    labels = two_disks(gap=-4)
    t = contact_targets(labels)
    assert t.shape == (3, 48, 64) and t.dtype == np.float32
    assert np.array_equal(t[0] > 0, labels > 0) and np.array_equal(t[2], contact_map(labels))
    assert np.isclose(t[1][labels == 2].max(), 1.0)


def _merged_maps(labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Foreground and a distance map with no valley between the touching objects: the distance of their
    union, as a network that does not see the border predicts it."""
    fg = (labels > 0).astype(np.float32)
    dist = ndimage.distance_transform_edt(fg)
    return fg, (dist / dist.max()).astype(np.float32)


def test_contact_separates_touching_disks_the_distance_map_merges():
    labels = two_disks(gap=-6)
    fg, dist = _merged_maps(labels)
    post = PostprocessConfig(seed_threshold=0.3, min_size=0)
    merged = instance_head("distance").to_labels(np.stack([fg, dist]), post)
    assert merged.max() == 1  # today's head: one seed over the neck, one object
    split = instance_head("contact").to_labels(np.stack([fg, dist, contact_map(labels)]), post)
    assert split.max() == 2
    # each predicted object is one of the disks (the border may shift by a pixel or two)
    for k in (1, 2):
        overlap = np.bincount(split[labels == k], minlength=3)[1:]
        assert overlap.max() / (labels == k).sum() > 0.9
    single = one_disk()
    fg1, dist1 = _merged_maps(single)
    one = instance_head("contact").to_labels(np.stack([fg1, dist1, contact_map(single)]), post)
    assert one.max() == 1 and (one > 0).sum() == (single > 0).sum()


def test_head_refuses_maps_of_another_head():
    with pytest.raises(ValueError, match="expects 3 channels"):
        instance_head("contact").to_labels(np.zeros((2, 8, 8), np.float32))


def test_registries_agree_and_unknown_heads_are_clear_errors():
    assert set(INSTANCE_HEADS) == set(INSTANCE_TARGETS)
    for name, head in INSTANCE_HEADS.items():
        assert head.channels == len(INSTANCE_TARGETS[name].channels)
        assert set(head.tuning_grid) <= set(PostprocessConfig.model_fields)
    with pytest.raises(ValueError, match="choose one of distance, contact"):
        instance_head("stardist")
    from sslseg.config import load_config

    with pytest.raises(ConfigError, match="unknown instance head 'flows'"):
        load_config(FinetuneConfig, overrides={"model": {"instance_head": "flows"}})


def test_contact_loss_uses_the_contact_map_and_weights_contact_pixels():
    torch.manual_seed(0)
    labels = two_disks(gap=-4)
    target = torch.from_numpy(contact_targets(labels))[None]
    logits = torch.randn(1, 3, 48, 64, requires_grad=True)
    head = instance_head("contact")
    loss = head.loss(logits, target)
    loss.backward()
    assert torch.isfinite(loss) and logits.grad[:, 2].abs().sum() > 0
    no_contact = target.clone()
    no_contact[:, 2] = 0
    assert not torch.isclose(head.loss(logits, no_contact), loss)
    # a foreground error on a contact pixel costs more than the same error on an interior pixel
    perfect = torch.where(target > 0.5, 8.0, -8.0)
    at_contact, inside = perfect.clone(), perfect.clone()
    cy, cx = np.argwhere((contact_map(labels) > 0) & (labels > 0))[0]
    iy, ix = np.argwhere((contact_map(labels) == 0) & (labels > 0))[0]
    at_contact[0, 0, cy, cx] = -8.0
    inside[0, 0, iy, ix] = -8.0
    assert head.loss(at_contact, target) > head.loss(inside, target)


def test_zoomed_crops_keep_the_contact_map_binary():
    labels = two_disks(gap=-4)
    image = np.random.default_rng(0).random((1, 48, 64)).astype(np.float32)
    sample = LoadedSample("a", image, contact_targets(labels), labels, (48, 64))
    ds = RandomCropDataset([sample], 32, 12, scale_range=(0.5, 2.0), binary_channels=(0, 2))
    for i in range(12):
        _, tgt = ds[i]
        assert tgt.shape == (3, 32, 32)
        assert set(torch.unique(tgt[2]).tolist()) <= {0.0, 1.0}
        assert set(torch.unique(tgt[0]).tolist()) <= {0.0, 1.0}


def test_contact_head_trains_tunes_and_segments_end_to_end(tmp_path):
    cfg = small_instance_config(tmp_path)
    assert cfg.model.instance_head == "contact"  # the default
    res = finetune(cfg, progress=False)
    module = load_model(res.best_checkpoint, device="cpu")
    assert module.net.segmentation_head[0].out_channels == 3
    chosen = res.summary["postprocess_tuning"]["chosen"]
    assert chosen["contact_threshold"] in INSTANCE_HEADS["contact"].tuning_grid["contact_threshold"]
    scores = evaluate_checkpoint(res.best_checkpoint, cfg.data.train, progress=False)
    assert 0.0 <= scores["aji"] <= 1.0
