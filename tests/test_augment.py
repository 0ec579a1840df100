import torch

from sslseg.augment.segmentation import augment_batch


def test_geometry_is_shared_by_image_and_target():
    torch.manual_seed(0)
    base = torch.arange(16 * 16, dtype=torch.float32).reshape(16, 16)
    images = base.expand(32, 1, 16, 16).clone()
    targets = base.long().expand(32, 16, 16).clone()
    ai, at = augment_batch(images, targets, intensity=0, noise=0)
    assert torch.equal(ai[:, 0].long(), at)
    # several distinct transforms were drawn across the batch
    assert len({tuple(t.flatten()[:3].tolist()) for t in at}) > 3


def test_dense_targets_keep_channels():
    images = torch.randn(4, 3, 32, 32)
    targets = torch.rand(4, 2, 32, 32)
    ai, at = augment_batch(images, targets)
    assert ai.shape == images.shape and at.shape == targets.shape
    assert torch.allclose(at.sum(), targets.sum())
