"""Turn raw images of any bit depth and channel count into float32 C×H×W tensors the networks read."""

from __future__ import annotations

from typing import Literal

import numpy as np

Normalization = Literal["per_image", "percentile"]


def harmonise_channels(image: np.ndarray, channels: int) -> np.ndarray:
    """Bring an H×W×C image to `channels` channels: drop alpha (the last of 2 or 4 channels), repeat gray,
    average colour to gray. A 3-channel image cannot become 4 channels (a ValueError)."""
    c = image.shape[2]
    if c == channels:
        return image
    if c in (2, 4):  # gray+alpha or RGBA: alpha carries no signal for segmentation
        image, c = image[..., : c - 1], c - 1
        if c == channels:
            return image
    if c == 1:
        return np.repeat(image, channels, axis=2)
    if channels == 1:
        return image.mean(axis=2, keepdims=True).astype(image.dtype)
    raise ValueError(f"cannot turn a {c}-channel image into {channels} channels")


def brighten_objects(image: np.ndarray) -> np.ndarray:
    """Invert an H×W×C image whose objects are darker than its background (H&E, brightfield), so that every
    image shows bright objects on a dark background, as fluorescence does; others are returned unchanged.

    The background covers most pixels, so the median intensity lies on its side of the mean: a median above
    the mean means a bright background. Negation is enough, as the normalisations that follow are
    translation-invariant."""
    x = image.astype(np.float32)
    gray = x.mean(axis=2)
    return -x if np.median(gray) > gray.mean() else image


def effective_channels(image: np.ndarray) -> int:
    """Channels that carry signal: RGBA with constant alpha counts as RGB, RGB with equal planes as gray."""
    c = image.shape[2]
    if c in (2, 4) and image[..., -1].min() == image[..., -1].max():
        image = image[..., :-1]
        c -= 1
    if (
        c == 3
        and np.array_equal(image[..., 0], image[..., 1])
        and np.array_equal(image[..., 0], image[..., 2])
    ):
        return 1
    return c


MIN_SPREAD = 1e-6  # a flat channel is centred but not scaled


def floor_spread(spread: np.ndarray) -> np.ndarray:
    """Spreads with those of flat channels (below MIN_SPREAD) replaced by 1."""
    return np.where(spread < MIN_SPREAD, 1.0, spread)


def channel_statistics(flat: np.ndarray, mode: Normalization) -> tuple[np.ndarray, np.ndarray]:
    """Per-channel (center, spread) of a C×N array under a normalisation: mean and standard deviation
    (`per_image`), or the 1st percentile and a quarter of the 1–99.8 percentile range (`percentile`)."""
    if mode == "per_image":
        center, spread = flat.mean(axis=1), flat.std(axis=1)
    elif mode == "percentile":
        lo, hi = np.percentile(flat, [1.0, 99.8], axis=1)
        center, spread = lo, (hi - lo) / 4.0
    else:
        raise ValueError(f"unknown normalization {mode!r}")
    return center, floor_spread(spread)


def normalize(image: np.ndarray, mode: Normalization = "per_image") -> np.ndarray:
    """H×W×C array → float32 C×H×W, each channel standardised (mean/std or 1–99.8 percentiles)."""
    x = image.astype(np.float32).transpose(2, 0, 1)
    center, spread = channel_statistics(x.reshape(x.shape[0], -1), mode)
    return ((x - center[:, None, None]) / spread[:, None, None]).astype(np.float32)
