import torch

from sslseg.augment.segmentation import augment_batch, random_gamma


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


def _two_spots(n: int) -> torch.Tensor:
    """n copies of one image: a dim spot and a bright spot on a flat background."""
    image = torch.zeros(n, 1, 32, 32)
    image[:, :, 4:10, 4:10] = 1.0
    image[:, :, 20:26, 20:26] = 5.0
    return image


def test_gamma_changes_how_bright_dim_objects_are_next_to_bright_ones():
    torch.manual_seed(0)
    images = _two_spots(64)
    bent = random_gamma(images, sd=0.5)
    # per channel, the first two moments are those of the input, as per-image normalisation gives
    assert torch.allclose(bent.mean(dim=(2, 3)), images.mean(dim=(2, 3)), atol=1e-5)
    assert torch.allclose(bent.std(dim=(2, 3)), images.std(dim=(2, 3)), atol=1e-4)
    # contrast of the dim spot over the bright one: 0.2 before; both brighter and fainter after
    ratio = (bent[:, 0, 6, 6] - bent[:, 0, 0, 0]) / (bent[:, 0, 22, 22] - bent[:, 0, 0, 0])
    assert ratio.min() < 0.15 and ratio.max() > 0.3
    assert torch.allclose(random_gamma(images, sd=0.0), images, atol=1e-5)  # γ = 1 changes nothing
    flat = torch.full((2, 3, 8, 8), 0.7)  # a constant image stays itself, without NaN
    assert torch.allclose(random_gamma(flat, sd=0.5), flat)


def test_channel_shuffle_reorders_channels_and_leaves_targets_alone():
    torch.manual_seed(0)
    images = torch.arange(3, dtype=torch.float32).view(1, 3, 1, 1).expand(32, 3, 16, 16).clone()
    targets = torch.rand(32, 2, 16, 16)
    out, _ = augment_batch(images, targets, intensity=0, noise=0, shuffle_channels=True)
    orders = {tuple(o[:, 0, 0].tolist()) for o in out}
    assert all(sorted(o) == [0.0, 1.0, 2.0] for o in orders)  # a permutation, nothing mixed
    assert len(orders) > 3
    gray = torch.rand(4, 1, 16, 16)  # one channel: nothing to shuffle
    assert (
        augment_batch(gray, targets[:4], intensity=0, noise=0, shuffle_channels=True)[0].shape == gray.shape
    )
