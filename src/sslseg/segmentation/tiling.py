"""Sliding-window inference for images of any size, with overlap blending that hides tile seams."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F


def _starts(length: int, tile: int, stride: int) -> list[int]:
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, stride))
    starts.append(length - tile)
    return starts


def tile_grid(
    h: int, w: int, tile_size: int, overlap: float, multiple: int = 32
) -> tuple[int, list[tuple[int, int]]]:
    """The tile side and the (y, x) tile origins, in order, that `sliding_window` uses on an h×w image at
    least one tile large; block-wise prediction evaluates the same tiles so its blocks blend as one image."""
    tile = -(-min(tile_size, max(h, w)) // multiple) * multiple
    stride = max(1, int(tile * (1 - overlap)))
    return tile, [(y, x) for y in _starts(h, tile, stride) for x in _starts(w, tile, stride)]


def blend_window(tile: int, device: torch.device) -> torch.Tensor:
    """The weight of each pixel of a tile when overlapping tiles are averaged (see `sliding_window`)."""
    return _blend_window(tile, device)


def _blend_window(tile: int, device: torch.device) -> torch.Tensor:
    """A separable ramp that is highest in the tile centre and small but positive at its edges."""
    ramp = torch.minimum(torch.arange(tile, device=device) + 1.0, tile - torch.arange(tile, device=device))
    ramp = (ramp / ramp.max()).clamp(min=0.05)
    return ramp[:, None] * ramp[None, :]


@torch.no_grad()
def sliding_window(
    predict: Callable[[torch.Tensor], torch.Tensor],
    image: torch.Tensor,
    tile_size: int = 512,
    overlap: float = 0.25,
    batch_size: int = 4,
    multiple: int = 32,
) -> torch.Tensor:
    """Apply `predict` (B×C×h×w → B×K×h×w) over an image C×H×W in overlapping tiles; returns K×H×W.

    Images smaller than a tile run in one pass padded to a multiple of `multiple` (the U-Net's stride).
    """
    c, h, w = image.shape
    tile = min(tile_size, max(h, w))
    tile = -(-tile // multiple) * multiple
    ph, pw = max(tile - h, 0), max(tile - w, 0)
    padded = F.pad(image[None], (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "constant")[0]
    hh, ww = padded.shape[1:]
    stride = max(1, int(tile * (1 - overlap)))
    coords = [(y, x) for y in _starts(hh, tile, stride) for x in _starts(ww, tile, stride)]
    window = _blend_window(tile, image.device)
    acc: torch.Tensor | None = None
    weight = torch.zeros(hh, ww, device=image.device)
    for i in range(0, len(coords), batch_size):
        chunk = coords[i : i + batch_size]
        batch = torch.stack([padded[:, y : y + tile, x : x + tile] for y, x in chunk])
        out = predict(batch).float()
        if acc is None:
            acc = torch.zeros(out.shape[1], hh, ww, device=image.device)
        for (y, x), o in zip(chunk, out, strict=True):
            acc[:, y : y + tile, x : x + tile] += o * window
            weight[y : y + tile, x : x + tile] += window
    assert acc is not None
    return (acc / weight)[:, :h, :w]
