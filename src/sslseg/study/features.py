"""Encoder features of trained models for the study: pooled features per encoder stage (the input to CKA,
Omega and the 2-D maps), CKA per stage between two encoders, and loading a pretrained or fine-tuned encoder.

Everything runs in eval mode under torch.no_grad (modules are put back in their former mode afterwards),
on the device the model's parameters are on; results come back as numpy arrays on the CPU.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn

from sslseg.evaluate import load_model
from sslseg.metrics.embeddings import linear_cka, rbf_cka
from sslseg.nn.unet import encoder_of, evaluating
from sslseg.weights import (
    encoder_from_weights as encoder_from_weights,  # moved to weights; kept importable here
)


def _device(module: nn.Module) -> torch.device:
    return next(module.parameters()).device


# ----------------------------------------------------------------------------------------------- encoders


def encoder_from_checkpoint(path: str | Path, device: str = "auto") -> nn.Module:
    """The encoder of a fine-tuned run (its `best.ckpt`, or the run folder), to probe what fine-tuning
    made of it; on the GPU when one is available unless `device` says otherwise."""
    return encoder_of(load_model(path, device).net).eval()


# ----------------------------------------------------------------------------------------------- features


def _center_crop(image: np.ndarray, size: int) -> np.ndarray:
    h, w = image.shape[-2:]
    if h < size or w < size:
        raise ValueError(f"cannot center-crop a {h}×{w} image to {size}×{size}; use a smaller size")
    top, left = (h - size) // 2, (w - size) // 2
    return image[..., top : top + size, left : left + size]


def _pool(feature: torch.Tensor, max_positions: int) -> torch.Tensor:
    """B×C×h×w → B×D: global average (max_positions 1) or an average over the largest g×g grid with
    g² ≤ max_positions, flattened channel-major (D = C·g²)."""
    g = max(1, int(np.sqrt(max_positions)))
    return torch.nn.functional.adaptive_avg_pool2d(feature.float(), g).flatten(1)


def stage_features(
    encoder: nn.Module,
    images: Sequence[np.ndarray],
    size: int | None = None,
    max_positions: int = 1,
    batch_size: int = 16,
) -> list[np.ndarray]:
    """Per encoder stage (the input itself, smp's first "feature", is skipped) an N×D float64 matrix of
    pooled features of the C×H×W images, the input to CKA.

    Default: global average pooling, D = channels of the stage. `max_positions` > 1 keeps a coarse layout
    (average over a g×g grid, g² ≤ max_positions, D = C·g²). Images may differ in size: each is run at its
    own size, or center-cropped (never resized, so the pixel scale is kept) to size×size when `size` is
    given. BatchNorm uses its running statistics, so batching does not change the result."""
    if len(images) == 0:
        raise ValueError("no images to probe")
    if max_positions < 1:
        raise ValueError(f"max_positions must be >= 1, got {max_positions}")
    prepared = [np.asarray(_center_crop(im, size) if size else im, dtype=np.float32) for im in images]
    device = _device(encoder)
    rows: list[list[torch.Tensor]] = [[] for _ in prepared]
    by_shape: dict[tuple[int, ...], list[int]] = {}
    for i, im in enumerate(prepared):
        if im.ndim != 3:
            raise ValueError(f"images must be C×H×W, got shape {im.shape}")
        by_shape.setdefault(im.shape, []).append(i)
    with evaluating(encoder):
        for indices in by_shape.values():
            for start in range(0, len(indices), batch_size):
                chunk = indices[start : start + batch_size]
                x = torch.from_numpy(np.stack([prepared[i] for i in chunk])).to(device)
                pooled = [_pool(f, max_positions).cpu() for f in encoder(x)[1:]]
                for j, i in enumerate(chunk):
                    rows[i] = [p[j] for p in pooled]
    n_stages = len(rows[0])
    return [torch.stack([r[s] for r in rows]).double().numpy() for s in range(n_stages)]


def global_embeddings(
    encoder: nn.Module, images: Sequence[np.ndarray], size: int | None = None
) -> np.ndarray:
    """The deepest stage, global-average-pooled (N×C): the input to Omega and the 2-D embedding maps."""
    return stage_features(encoder, images, size=size)[-1]


def stage_cka(
    enc_a: nn.Module,
    enc_b: nn.Module,
    images: Sequence[np.ndarray],
    kind: Literal["linear", "rbf"] = "linear",
    size: int | None = None,
    max_positions: int = 1,
) -> list[float]:
    """CKA per encoder stage between two encoders on the same images (shallow to deep): how similar the
    representations of two pretrainings, or of one encoder before and after fine-tuning, are."""
    if kind not in ("linear", "rbf"):
        raise ValueError(f"unknown CKA kind '{kind}'; choose 'linear' or 'rbf'")
    if len(images) < 2:
        raise ValueError(f"CKA needs at least 2 images, got {len(images)}")
    fa = stage_features(enc_a, images, size, max_positions)
    fb = stage_features(enc_b, images, size, max_positions)
    if len(fa) != len(fb):
        raise ValueError(f"the encoders have different numbers of stages: {len(fa)} vs {len(fb)}")
    cka = linear_cka if kind == "linear" else rbf_cka
    return [cka(a, b) for a, b in zip(fa, fb, strict=True)]
