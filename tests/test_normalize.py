"""Intensity handling before the networks: dark-on-bright images turned into bright-on-dark (data.bright_objects)."""

from __future__ import annotations

import numpy as np

from sslseg.data.datasets import load_unlabeled, prepare_image, scale_unit
from sslseg.data.layouts import find_samples
from sslseg.data.normalize import brighten_objects


def _fluorescence(seed: int = 0) -> np.ndarray:
    """A dark, noisy background with a few bright round nuclei (they cover well under half the pixels)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:48, :48]
    image = rng.normal(20, 3, (48, 48))
    for cy, cx in [(12, 12), (30, 34), (36, 10)]:
        image[(yy - cy) ** 2 + (xx - cx) ** 2 < 36] += 150
    return np.clip(image, 0, 255).astype(np.uint8)[..., None]


def test_fluorescence_is_left_as_it_is() -> None:
    image = _fluorescence()
    assert brighten_objects(image) is image


def test_dark_nuclei_on_a_bright_background_are_inverted() -> None:
    gray = _fluorescence()
    stained = np.concatenate([255 - gray, 230 - gray // 2, 255 - gray], axis=2)  # H&E-like colour tile
    out = brighten_objects(stained)
    nuclei = gray[..., 0] > 100
    brightness = out.mean(axis=2)
    assert brightness[nuclei].mean() > brightness[~nuclei].mean() + 50


def test_both_polarities_of_a_scene_give_the_same_network_input() -> None:
    bright = _fluorescence(1)
    dark = 255 - bright
    expected = prepare_image(bright, 1)
    np.testing.assert_allclose(prepare_image(dark, 1, bright_objects=True), expected, atol=1e-5)
    np.testing.assert_allclose(prepare_image(dark, 1), -expected, atol=1e-5)  # off by default
    np.testing.assert_allclose(
        prepare_image(dark, 1, "percentile", bright_objects=True),
        prepare_image(bright, 1, "percentile"),
        atol=1e-5,
    )


def test_pretraining_reads_with_the_same_setting(tmp_path) -> None:
    from PIL import Image

    bright = _fluorescence(2)
    Image.fromarray(255 - bright[..., 0]).save(tmp_path / "dark.png")
    images, channels = load_unlabeled(find_samples(tmp_path), progress=False, bright_objects=True)
    assert channels == 1
    np.testing.assert_allclose(images[0].astype(np.float32), scale_unit(bright).astype(np.float32), atol=2e-3)
