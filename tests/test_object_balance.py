"""Object balancing (`loss.object_balance`): per-pixel weights that give small and dim objects their share of
the instance loss, hand-checked on made-up label images, carried through crops, and used in training."""

import numpy as np
import pytest
import torch
from conftest import small_instance_config

from sslseg.config import FinetuneConfig, LossConfig, load_config
from sslseg.data.datasets import LoadedSample, RandomCropDataset, load_samples
from sslseg.data.layouts import find_samples
from sslseg.data.synth import write_synthetic_dataset
from sslseg.data.targets import ObjectBalance, contact_targets, object_balance_weights
from sslseg.errors import ConfigError
from sslseg.finetune import finetune
from sslseg.segmentation.heads import instance_head
from sslseg.segmentation.module import SegmentationModule


def big_and_small() -> np.ndarray:
    """A 21×21 square (441 px, id 1) and a 7×7 square (49 px, id 2): the typical area is the big one's."""
    labels = np.zeros((48, 64), np.int32)
    labels[4:25, 4:25] = 1
    labels[30:37, 40:47] = 2
    return labels


def test_small_object_weighs_typical_over_its_area_to_the_p():
    labels = big_and_small()
    w = object_balance_weights(labels, balance=ObjectBalance(exponent=0.5, max_weight=5.0, ring=0))
    assert w.dtype == np.float32 and w.shape == labels.shape
    # (441 / 49)^0.5 = 3 on the small square, 1 on the big one and on the background
    assert np.allclose(w[labels == 2], 3.0) and np.allclose(w[labels != 2], 1.0)
    # p = 1: (441 / 49) = 9, capped at max_weight
    w1 = object_balance_weights(labels, balance=ObjectBalance(exponent=1.0, max_weight=5.0, ring=0))
    assert np.allclose(w1[labels == 2], 5.0) and np.allclose(w1[labels == 1], 1.0)
    w1 = object_balance_weights(labels, balance=ObjectBalance(exponent=1.0, max_weight=20.0, ring=0))
    assert np.allclose(w1[labels == 2], 9.0)


def test_round_disks_small_one_gets_the_larger_weight():
    yy, xx = np.mgrid[:64, :64]
    labels = np.zeros((64, 64), np.int32)
    labels[(yy - 20) ** 2 + (xx - 20) ** 2 <= 144] = 1
    labels[(yy - 48) ** 2 + (xx - 48) ** 2 <= 16] = 2
    w = object_balance_weights(labels, balance=ObjectBalance(exponent=1.0, max_weight=50.0, ring=0))
    areas = np.bincount(labels.ravel())
    assert np.allclose(w[labels == 2], areas[1] / areas[2]) and np.allclose(w[labels == 1], 1.0)


def test_dim_object_weighs_typical_over_its_contrast_to_the_p():
    labels = np.zeros((32, 48), np.int32)
    labels[4:11, 4:11] = 1
    labels[20:27, 30:37] = 2  # same size: no size factor
    image = np.zeros((1, 32, 48), np.float32)
    image[0][labels == 1] = 1.0
    image[0][labels == 2] = 0.25
    b = ObjectBalance(exponent=1.0, max_weight=5.0, ring=0)
    w = object_balance_weights(labels, image, b)
    # contrasts 1 and 0.25 over a background at 0: median 0.625, so the dim one is 0.4 of typical → 2.5
    assert np.allclose(w[labels == 2], 2.5) and np.allclose(w[labels == 1], 1.0)
    # colour: channels are averaged; without the contrast factor equal sizes weigh 1
    assert np.allclose(object_balance_weights(labels, np.repeat(image, 3, 0), b), w)
    no_contrast = ObjectBalance(exponent=1.0, max_weight=5.0, contrast=False, ring=0)
    assert np.allclose(object_balance_weights(labels, image, no_contrast), 1.0)
    # an object no brighter than the background gets the largest weight, not a division by zero
    image[0][labels == 2] = -0.1
    assert np.allclose(object_balance_weights(labels, image, b)[labels == 2], 5.0)


def test_small_and_dim_factors_multiply_up_to_the_cap():
    labels = big_and_small()
    image = np.zeros((1, 48, 64), np.float32)
    image[0][labels == 1] = 1.0
    image[0][labels == 2] = 0.25  # median contrast 0.625: relative 0.4
    w = object_balance_weights(labels, image, ObjectBalance(exponent=0.5, max_weight=50.0, ring=0))
    assert np.allclose(w[labels == 2], 3.0 * np.sqrt(2.5))
    w = object_balance_weights(labels, image, ObjectBalance(exponent=0.5, max_weight=4.0, ring=0))
    assert np.allclose(w[labels == 2], 4.0)


def test_ring_around_a_small_object_takes_its_weight():
    labels = big_and_small()
    w = object_balance_weights(labels, balance=ObjectBalance(exponent=0.5, ring=2))
    assert w[33, 38] == pytest.approx(3.0)  # 2 px left of the small square
    assert w[33, 37] == pytest.approx(1.0)  # 3 px left
    assert w[27, 43] == pytest.approx(1.0)  # 3 px above
    assert w[14, 26] == pytest.approx(1.0)  # beside the big square: its weight, 1
    assert np.allclose(w[labels == 2], 3.0)


def test_off_and_uniform_objects_weigh_one():
    assert np.array_equal(object_balance_weights(np.zeros((8, 8), np.int32)), np.ones((8, 8)))
    labels = np.zeros((32, 32), np.int32)
    labels[2:8, 2:8] = 1
    labels[20:26, 20:26] = 2
    assert np.array_equal(object_balance_weights(labels), np.ones((32, 32), np.float32))
    assert LossConfig().balance() is None  # the default keeps today's loss
    assert LossConfig(object_balance=1.5).balance() == ObjectBalance(1.5, 5.0, True, 2)


def test_config_validates_object_balance():
    with pytest.raises(ConfigError, match="loss.object_balance"):
        load_config(FinetuneConfig, overrides={"loss": {"object_balance": -1}})
    with pytest.raises(ConfigError, match="weighs instance objects"):
        load_config(FinetuneConfig, overrides={"data": {"task": "semantic"}, "loss": {"object_balance": 1}})
    with pytest.raises(ConfigError, match="did you mean 'loss.object_balance'"):
        load_config(FinetuneConfig, overrides={"loss": {"object_balanse": 1}})


def test_loss_weighs_an_error_on_the_small_object_up():
    labels = big_and_small()
    target = torch.from_numpy(contact_targets(labels))[None]
    weight = torch.from_numpy(object_balance_weights(labels, balance=ObjectBalance(0.5, ring=0)))[None, None]
    head = instance_head("contact")
    perfect = torch.where(target > 0.5, 8.0, -8.0)
    small, big = perfect.clone(), perfect.clone()
    small[0, 0][torch.from_numpy(labels == 2)] = -8.0  # the small square missed
    # a hole of the same number of pixels in the big square
    big[0, 0][
        torch.from_numpy(np.isin(np.arange(labels.size), np.flatnonzero(labels == 1)[:49])).reshape(
            labels.shape
        )
    ] = -8.0
    unweighted = head.loss(small, target) - head.loss(big, target)
    weighted = head.loss(small, target, weight) - head.loss(big, target, weight)
    assert weighted > unweighted + 1e-3
    # weight 1 everywhere is today's loss
    assert torch.isclose(head.loss(small, target, torch.ones_like(weight)), head.loss(small, target))
    dist = instance_head("distance")
    assert dist.loss(small[:, :2], target[:, :2], weight) > dist.loss(small[:, :2], target[:, :2])


def test_crops_carry_the_weights_and_pad_them_with_weight_one():
    labels = big_and_small()
    extra = object_balance_weights(labels, balance=ObjectBalance(0.5)) - 1
    target = np.concatenate([contact_targets(labels), extra[None]])
    image = np.random.default_rng(0).random((1, 48, 64)).astype(np.float32)
    sample = LoadedSample("a", image, target, labels, (48, 64))
    ds = RandomCropDataset([sample], 80, 6, scale_range=(0.5, 2.0), binary_channels=(0, 2))
    for i in range(6):
        _, tgt = ds[i]
        assert tgt.shape == (4, 80, 80)
        assert tgt[3].min() >= 0 and tgt[3].max() <= 2.0 + 1e-5  # weights in [1, 3], not re-binarised
    _, tgt = RandomCropDataset([sample], 80, 1, binary_channels=(0, 2))[0]
    assert (tgt[3, 48:] == 0).all() and (tgt[3, :, 64:] == 0).all()  # padding: weight 1


def test_load_samples_appends_the_weight_channel(tmp_path):
    data = write_synthetic_dataset(tmp_path / "synth", n_images=2, size=64, seed=1)
    samples = find_samples(data)
    plain, _ = load_samples(samples, "instance", instance_head="contact", progress=False)
    balanced, _ = load_samples(
        samples, "instance", instance_head="contact", progress=False, object_balance=ObjectBalance()
    )
    for p, b in zip(plain, balanced, strict=True):
        assert p.target.shape[0] == 3 and b.target.shape[0] == 4
        assert np.array_equal(p.target, b.target[:3])
        work = p.labels  # scale 1: the working labels are the native ones
        assert np.allclose(b.target[3], object_balance_weights(work, p.image, ObjectBalance()) - 1)
    with pytest.raises(ValueError, match="instance objects"):
        load_samples(samples, "semantic", progress=False, object_balance=ObjectBalance())


def test_module_checks_the_weight_channel(tmp_path):
    cfg = FinetuneConfig.model_validate(
        {
            "model": {"decoder_channels": [16, 16, 8, 8, 8], "instance_head": "contact"},
            "loss": {"object_balance": 1.0},
        }
    )
    module = SegmentationModule(cfg.model_dump(mode="json"), 1)
    logits = torch.zeros(1, 3, 32, 32)
    target = torch.zeros(1, 4, 32, 32)
    assert torch.isfinite(module.loss(logits, target))
    with pytest.raises(ValueError, match="with object balancing expects 4"):
        module.loss(logits, target[:, :3])


def test_object_balance_trains_end_to_end(tmp_path):
    cfg = small_instance_config(
        tmp_path, train={"steps_per_epoch": 3}, loss={"object_balance": 1.0}, postprocess={"tune": False}
    )
    res = finetune(cfg, progress=False)
    assert res.best_checkpoint.is_file()
    assert 0.0 <= res.test["aji"] <= 1.0
