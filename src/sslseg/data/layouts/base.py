"""What every layout shares: samples and their label sources, the issues a scan meets, the `Layout` record
each layout module registers, and the folder helpers the layouts scan with."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sslseg.data.io import ZARR_EXTENSION, is_image_path
from sslseg.errors import DataError

IMAGE_DIR_NAMES = ("images", "imgs", "samples")
LABEL_DIR_NAMES = ("labels", "masks", "annotations", "gt")


# --------------------------------------------------------------------------------------------------
# Label sources


def check_shape(path: Path, labels: np.ndarray, shape: Sequence[int] | None) -> np.ndarray:
    """`labels` unchanged, or a DataError naming `path` when its size is not the image's `shape`."""
    if shape is not None and labels.shape != tuple(shape):
        (h, w), (ih, iw) = labels.shape, tuple(shape)
        raise DataError(path, f"label size {h}×{w} does not match image size {ih}×{iw} (height×width)")
    return labels


def id_dtype(n: int) -> type[np.unsignedinteger]:
    """The smallest unsigned integer type for instance ids up to `n`."""
    return np.uint16 if n < 2**16 else np.uint32


class LabelSource(ABC):
    """Where one sample's label comes from; `load` turns it into a 2-D integer label map."""

    path: Path

    @abstractmethod
    def load(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Return the H×W integer label map; `shape` (the image's H, W) is checked or used to rasterise."""


# --------------------------------------------------------------------------------------------------
# Samples, issues and the layout record


@dataclass(frozen=True)
class Sample:
    """One image and where its label comes from (None for unlabeled data)."""

    id: str
    image: Path
    label: LabelSource | None


@dataclass(frozen=True)
class LayoutIssue:
    """One problem found while pairing images and labels; `kind` groups them for a summary."""

    path: Path
    kind: str  # "empty", "duplicate", "missing_label", "missing_image", "invalid"
    message: str
    name: str  # the short form listed in summaries
    sample: Sample | None = None  # for "missing_label": the image as an unlabeled sample


def missing_label(sample_id: str, image: Path, message: str) -> LayoutIssue:
    """The issue of an image without a label: it carries the image as an unlabeled sample, which
    `scan_samples` keeps as one when unlabeled images are allowed."""
    return LayoutIssue(image, "missing_label", message, image.name, Sample(sample_id, image, None))


@dataclass(frozen=True)
class ScanOptions:
    """What the user may say about a dataset's folders; each layout reads the options it `uses`."""

    mask_suffix: str | None = None
    images_dir: str | Path | None = None
    labels_dir: str | Path | None = None


Found = tuple[list[Sample], list[LayoutIssue]]


@dataclass(frozen=True)
class Layout:
    """One dataset layout: how to recognise it (`detect`), pair its images and labels (`scan`) and which
    `LabelSource` loads its labels. `uses` names the `ScanOptions` it reads; `reads_file` layouts may be
    given one file (a COCO JSON) instead of a folder."""

    name: str
    description: str
    detect: Callable[[Path], bool]
    scan: Callable[[Path, ScanOptions], Found]
    label: type[LabelSource] | None
    uses: frozenset[str] = frozenset()
    reads_file: bool = False


# --------------------------------------------------------------------------------------------------
# Folder helpers


def subdirs(folder: Path) -> list[Path]:
    """The visible child folders of `folder`, sorted by name."""
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def list_images(folder: Path) -> list[Path]:
    """The image files directly in `folder`, sorted (none when it is not a folder)."""
    return sorted(p for p in folder.iterdir() if is_image_path(p)) if folder.is_dir() else []


def walk_images(root: Path, skip_label_dirs: bool = False) -> Iterable[Path]:
    """Every image under `root` in sorted order (hidden folders skipped, `.zarr` folders taken whole);
    `skip_label_dirs` also skips labels/, masks/, annotations/ and gt/, which hold labels, not images."""
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        keep = []
        for name in sorted(dirnames):
            if name.startswith(".") or (skip_label_dirs and name.lower() in LABEL_DIR_NAMES):
                continue
            if name.lower().endswith(ZARR_EXTENSION):
                yield here / name
            else:
                keep.append(name)
        dirnames[:] = keep
        for name in sorted(filenames):
            path = here / name
            if is_image_path(path):
                yield path


def find_dir(root: Path, names: Sequence[str], need_images: bool = False) -> Path | None:
    """The first child folder whose lower-cased name is in `names` (in that order of preference)."""
    children = {p.name.lower(): p for p in reversed(subdirs(root))}
    for name in names:
        folder = children.get(name)
        if folder is not None and (not need_images or list_images(folder)):
            return folder
    return None


def given_dir(root: Path, folder: str | Path) -> Path:
    """A folder the user named, relative to `root` unless absolute; DataError when it does not exist."""
    path = Path(folder)
    path = path if path.is_absolute() else root / path
    if not path.is_dir():
        raise DataError(path, "folder not found")
    return path


def index_by_stem(files: Iterable[Path]) -> tuple[dict[str, Path], list[LayoutIssue]]:
    """Map stem → file; two files with one stem (a.png and a.tif) are a duplicate issue."""
    groups: dict[str, list[Path]] = defaultdict(list)
    for file in files:
        groups[file.stem].append(file)
    index, issues = {}, []
    for stem, group in groups.items():
        index[stem] = group[0]
        if len(group) > 1:
            names = ", ".join(str(p.relative_to(p.parent.parent)) for p in group)
            issues.append(LayoutIssue(group[0], "duplicate", f"duplicate stem '{stem}': {names}", f"{stem}"))
    return index, issues
