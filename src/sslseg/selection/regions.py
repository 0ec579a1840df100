"""Regions of large images to annotate instead of whole images: a grid of non-overlapping square boxes,
read a band of rows at a time so that a slide is never held whole."""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import numpy as np

from sslseg.data.lazy import ImageSource

Box = tuple[int, int, int, int]  # y0, x0, y1, x1 in native pixels, end exclusive


def _starts(length: int, size: int) -> list[tuple[int, int]]:
    """(start, end) of the whole tiles of `size` along one side, the margin left over split evenly; a side
    shorter than `size` is one tile of its own length."""
    if length <= size:
        return [(0, length)]
    n = length // size
    offset = (length - n * size) // 2
    return [(offset + k * size, offset + (k + 1) * size) for k in range(n)]


def region_grid(height: int, width: int, size: int) -> list[Box]:
    """The candidate regions of an image: every whole size×size tile of a grid centred on it (row-major),
    so no two overlap and all lie inside the image; an image smaller than `size` in a side gives tiles of
    that side's length."""
    if size < 1:
        raise ValueError(f"region size must be positive, got {size}")
    return [(y0, x0, y1, x1) for y0, y1 in _starts(height, size) for x0, x1 in _starts(width, size)]


def overlap(a: Box, b: Box) -> bool:
    """True when two boxes share a pixel."""
    return a[0] < b[2] and b[0] < a[2] and a[1] < b[3] and b[1] < a[3]


def read_regions(source: ImageSource, boxes: Sequence[Box]) -> Iterator[tuple[Box, np.ndarray]]:
    """Each box's pixels (H×W×C), reading each band of rows that boxes share once, in the boxes' order of
    rows: only one band of the image is in memory at a time."""
    bands: dict[tuple[int, int], list[Box]] = {}
    for box in boxes:
        bands.setdefault((box[0], box[2]), []).append(box)
    for (y0, y1), row in sorted(bands.items()):
        x0, x1 = min(b[1] for b in row), max(b[3] for b in row)
        band = source.read(y0, y1, x0, x1)
        for box in row:
            yield box, band[:, box[1] - x0 : box[3] - x0]
