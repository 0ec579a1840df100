"""Intensity handling before the networks: dark-on-bright images turned into bright-on-dark (data.bright_objects)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

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
    np.testing.assert_allclose(
        np.asarray(images[0], np.float32), scale_unit(bright).astype(np.float32), atol=3e-3
    )


def test_the_pretraining_pool_is_held_compactly_and_reads_back_as_float(tmp_path) -> None:
    """8-bit images stay uint8, 16-bit ones uint16, a gray image among colour ones is one plane, and a crop
    reads back as the float16 [0, 1] values of the percentile mapping, within the quantisation step."""
    import tifffile
    from PIL import Image

    rng = np.random.default_rng(0)
    gray8 = rng.integers(0, 256, (40, 50), dtype=np.uint8)
    rgb8 = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    gray16 = rng.integers(0, 4096, (40, 50), dtype=np.uint16)
    Image.fromarray(gray8).save(tmp_path / "a_gray8.png")
    Image.fromarray(rgb8).save(tmp_path / "b_rgb8.png")
    tifffile.imwrite(tmp_path / "c_gray16.tif", gray16)
    samples = find_samples(tmp_path, allow_unlabeled=True)
    raws = [np.asarray(Image.open(tmp_path / "a_gray8.png"))[..., None], rgb8, gray16[..., None]]
    with pytest.warns(UserWarning, match="gray used as 3 equal channels"):
        images, channels = load_unlabeled(samples, progress=False, raws=raws)
    assert channels == 3 and raws == []  # the decoded images were let go as they were converted
    assert [im.data.dtype for im in images] == [np.uint8, np.uint8, np.uint16]
    assert [im.data.shape[0] for im in images] == [1, 3, 1]  # gray: one plane for three channels
    assert all(im.shape == (3, 40, 50) and im.dtype == np.float16 for im in images)
    for im, source, step in zip(
        images,
        (np.repeat(gray8[..., None], 3, 2), rgb8, np.repeat(gray16[..., None], 3, 2)),
        (1 / 255, 1 / 255, 1 / 65535),
        strict=True,
    ):
        expected = scale_unit(source).astype(np.float32)
        crop = im[:, 5:25, 10:30]
        assert crop.dtype == np.float16 and crop.shape == (3, 20, 20)
        # half a quantisation step, plus float16's own rounding near 1
        np.testing.assert_allclose(crop.astype(np.float32), expected[:, 5:25, 10:30], atol=step / 2 + 5e-4)
        np.testing.assert_array_equal(im[1:2, :, :], im[:, :, :][1:2])  # a channel slice
    float16_bytes = sum(2 * int(np.prod(im.shape)) for im in images)
    assert sum(im.nbytes for im in images) <= float16_bytes / 2.5


def test_a_compact_pool_of_fine_tuning_images_reads_back_what_the_float_copy_held(tmp_path) -> None:
    """`load_samples(compact=True)`: the per-image normalised 8-bit pixels are an affine map of at most 256
    levels, so uint8 with the channel's low and step gives them back up to float rounding; the semi-
    supervised pool is built that way."""
    from PIL import Image

    from sslseg.data.datasets import CompactImage, load_samples

    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (30, 40), dtype=np.uint8)).save(tmp_path / "gray.png")
    Image.fromarray(rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)).save(tmp_path / "rgb.png")
    samples = find_samples(tmp_path, allow_unlabeled=True)
    with pytest.warns(UserWarning, match="gray used"):
        floats, _ = load_samples(samples, "instance", with_labels=False, progress=False)
    with pytest.warns(UserWarning, match="gray used"):
        compact, channels = load_samples(samples, "instance", with_labels=False, progress=False, compact=True)
    assert channels == 3
    for f, c in zip(floats, compact, strict=True):
        assert isinstance(c.image, CompactImage) and c.image.data.dtype == np.uint8
        crop = c.image[:, 3:20, 5:25]
        assert crop.dtype == np.float32 and crop.shape == (3, 17, 20)
        np.testing.assert_allclose(crop, f.image[:, 3:20, 5:25], atol=1e-4)
    assert [c.image.data.shape[0] for c in compact] == [1, 3]  # gray: one plane for three channels
    assert sum(c.image.nbytes for c in compact) * 6 <= sum(f.image.nbytes for f in floats)  # 1/12 and 1/4


def test_each_decoded_image_goes_as_soon_as_its_compact_copy_is_made(tmp_path, monkeypatch) -> None:
    """`load_unlabeled` (pretraining hands it the decoded list) and `load_samples(compact=True)` drop the
    i-th decoded image before its compact copy is made: while it is built only the later images are still
    held decoded, so the decoded and the compact pool are never both whole in memory (emptying the list at
    the end alone would hold both)."""
    from PIL import Image

    import sslseg.data.datasets as datasets

    rng = np.random.default_rng(2)
    for k in range(3):
        Image.fromarray(rng.integers(0, 256, (20, 24), dtype=np.uint8)).save(tmp_path / f"im{k}.png")
    samples = find_samples(tmp_path, allow_unlabeled=True)
    decoded: list = []  # the list of decoded images being converted
    still_held: list = []  # at each compact copy: which decoded images the list still holds

    class Spy(datasets.CompactImage):
        def __init__(self, *args, **kwargs) -> None:
            still_held.append([r is not None for r in decoded[0]])
            super().__init__(*args, **kwargs)

    harmonise = datasets.harmonise_dataset

    def keep(*args, **kwargs):
        out = harmonise(*args, **kwargs)
        decoded.append(out[0])
        return out

    monkeypatch.setattr(datasets, "CompactImage", Spy)
    monkeypatch.setattr(datasets, "harmonise_dataset", keep)
    only_later = [[False, True, True], [False, False, True], [False, False, False]]
    decoded.append(datasets.read_images(samples, progress=False))
    datasets.load_unlabeled(samples, progress=False, raws=decoded[0])
    assert still_held == only_later and decoded[0] == []
    decoded.clear()
    still_held.clear()
    datasets.load_samples(samples, "instance", with_labels=False, progress=False, compact=True)
    assert still_held == only_later


def test_a_flat_channel_is_held_without_dividing_by_zero() -> None:
    """A channel with one value has no span: its step is 1, not 0 (0/0 would make NaN levels), and it reads
    back its value."""
    from sslseg.data.datasets import CompactImage

    flat = np.stack([np.full((4, 5), 0.25), np.linspace(0, 1, 20).reshape(4, 5)]).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a division by zero or a NaN cast warns
        for eight_bit in (True, False):
            held = CompactImage(flat, eight_bit)
            np.testing.assert_array_equal(held[0:1, :, :], flat[0:1])
            np.testing.assert_allclose(held[:, :, :], flat, atol=1 / 255)
