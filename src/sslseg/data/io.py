"""Reading and writing image and label files as numpy arrays (one reader for every format)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from sslseg.atomic import atomic_path


def write_label(path: str | Path, labels: np.ndarray) -> None:
    """Write an integer label map (instance ids or class indices) as a compressed TIFF, atomically."""
    labels = np.asarray(labels)
    if labels.ndim != 2 or not np.issubdtype(labels.dtype, np.integer):
        raise ValueError(f"a label map must be a 2-D integer array, got {labels.dtype} {labels.shape}")
    dtype = np.uint16 if labels.max(initial=0) < 2**16 else np.uint32
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, labels.astype(dtype), compression="zlib")


def write_image(path: str | Path, image: np.ndarray) -> None:
    """Write an image (H×W or H×W×C, any dtype tifffile supports) as a compressed TIFF, atomically."""
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, np.asarray(image), compression="zlib")
