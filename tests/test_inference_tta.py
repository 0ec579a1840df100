"""Test-time augmentation: the averaged prediction follows the image through every flip and quarter turn,
even for a network that does not; and it changes nothing for a network that already does."""

import numpy as np
import torch
from torch import nn

from sslseg.config import InferenceConfig
from sslseg.segmentation.inference import D4_SIZE, d4_inverse, d4_transform, predict_probabilities

PLAIN = InferenceConfig(tile_size=64)
TTA = InferenceConfig(tile_size=64, tta=True)


def _image(h: int = 20, w: int = 28) -> np.ndarray:
    return np.random.default_rng(0).random((1, h, w), dtype=np.float32)


def _directional_net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 4, 3, padding=1), nn.ReLU(), nn.Conv2d(4, 2, 3, padding=1)).eval()


def _predict(net: nn.Module, image: np.ndarray, cfg: InferenceConfig) -> np.ndarray:
    return predict_probabilities(net, image, "instance", image.shape[1:], cfg).numpy()


def test_d4_inverse_undoes_every_transform_on_a_non_square_image():
    x = np.arange(2 * 3 * 5, dtype=np.float32).reshape(2, 3, 5)
    for t in range(D4_SIZE):
        assert np.array_equal(d4_inverse(torch.from_numpy(d4_transform(x, t)), t).numpy(), x)
    assert len({d4_transform(x, t).tobytes() for t in range(D4_SIZE)}) == D4_SIZE  # all 8 distinct


def test_tta_prediction_follows_the_image_through_every_transform():
    net, image = _directional_net(), _image()
    with_tta = _predict(net, image, TTA)
    plain = _predict(net, image, PLAIN)
    assert not np.allclose(with_tta, plain)  # the network itself is not equivariant...
    turned = d4_transform(image, 1)
    assert not np.allclose(_predict(net, turned, PLAIN), d4_transform(plain, 1), atol=1e-5)
    for t in range(D4_SIZE):  # ...but its TTA average is
        np.testing.assert_allclose(
            _predict(net, d4_transform(image, t), TTA), d4_transform(with_tta, t), atol=1e-5
        )


def test_tta_of_a_pointwise_network_equals_one_pass():
    torch.manual_seed(0)
    net = nn.Conv2d(1, 2, 1).eval()
    image = _image()
    np.testing.assert_allclose(_predict(net, image, TTA), _predict(net, image, PLAIN), atol=1e-6)
