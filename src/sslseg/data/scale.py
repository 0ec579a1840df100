"""Object-size normalisation (as Cellpose's diameter): each image is resized so that its median object
becomes a fixed number of pixels across, so one network sees nuclei at one size whatever the magnification."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from sslseg.errors import DataError

MIN_FACTOR, MAX_FACTOR = 0.25, 4.0  # a wrong size estimate must not blow an image up or shrink it away


def median_diameter(labels: np.ndarray) -> float | None:
    """Median over the objects of an instance map (0 = background) of the equivalent-circle diameter
    2·sqrt(area/π), in pixels; None when the map holds no object."""
    ids = np.asarray(labels).ravel()
    if ids.size == 0 or ids.max() <= 0:
        return None
    if ids.max() <= ids.size:
        areas = np.bincount(ids.astype(np.int64, copy=False))[1:]
    else:  # sparse ids (e.g. 32-bit hashes): count only the ids present instead of a huge bincount
        areas = np.unique(ids[ids > 0], return_counts=True)[1]
    areas = areas[areas > 0]
    return float(np.median(2.0 * np.sqrt(areas / np.pi)))


def typical_area(areas: np.ndarray) -> float:
    """The area of the object that holds the median object pixel (an area-weighted median). Unlike the
    median over objects, a swarm of noise specks cannot make it small: they hold few of the pixels."""
    a = np.asarray(areas)
    a = np.sort(a[a > 0])
    if a.size == 0:
        raise ValueError("typical_area needs at least one object")
    cumulative = np.cumsum(a)
    return float(a[np.searchsorted(cumulative, cumulative[-1] / 2)])


def size_factor(diameter: float, object_size: float) -> float:
    """The resize factor that brings objects of `diameter` px to `object_size` px, clamped to
    [MIN_FACTOR, MAX_FACTOR]."""
    return float(np.clip(object_size / diameter, MIN_FACTOR, MAX_FACTOR))


# where a missing pixel size can be given, as the error names it unless a caller knows better
PIXEL_SIZE_HINT = "data.pixel_size (evaluate: --pixel-size)"


def known_size_factor(
    object_size_um: float,
    object_size: float,
    pixel_size: tuple[float, float] | None,
    path: str | Path,
    hint: str = PIXEL_SIZE_HINT,
) -> float:
    """The resize factor that brings objects of a known real diameter (`object_size_um`, µm) to
    `object_size` px in an image of `pixel_size` (y, x µm; their geometric mean when anisotropic), clamped
    as `size_factor`. An image without a pixel size is a DataError naming `path` and where to give one."""
    if pixel_size is None:
        raise DataError(
            path,
            f"data.object_size_um ({object_size_um} µm) needs the image's pixel size, and the file gives none "
            f"(no OME-XML, ImageJ or TIFF resolution tags): give it with {hint} (µm per pixel)",
        )
    py, px = (float(v) for v in pixel_size)
    if not (py > 0 and px > 0):
        raise DataError(path, f"pixel size must be positive µm, got {pixel_size}")
    return size_factor(object_size_um / math.sqrt(py * px), object_size)
