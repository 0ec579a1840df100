"""Kaggle Data Science Bowl 2018: one folder per sample holding images/ (one image) and masks/ (one binary
mask per object), merged into one instance label map."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sslseg.data.io import is_image_path, read_label
from sslseg.data.layouts.base import (
    Found,
    LabelSource,
    Layout,
    LayoutIssue,
    Sample,
    ScanOptions,
    check_shape,
    id_dtype,
    index_by_stem,
    list_images,
    missing_label,
    subdirs,
)
from sslseg.errors import DataError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ObjectMaskFolder(LabelSource):
    """A folder of binary masks, one per object (Kaggle DSB 2018), merged into one instance map."""

    path: Path

    def mask_files(self) -> list[Path]:
        """The mask files in name order; object i + 1 is the i-th file."""
        return sorted(p for p in self.path.iterdir() if is_image_path(p)) if self.path.is_dir() else []

    def load(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        labels, overlap = self.load_with_overlap(shape)
        if overlap:
            logger.warning(
                "%s: %d pixels lie in more than one object mask (the later mask wins)", self.path, overlap
            )
        return labels

    def load_with_overlap(self, shape: tuple[int, int] | None = None) -> tuple[np.ndarray, int]:
        """Return the instance map and how many pixels were in two or more masks."""
        if not self.path.is_dir():
            raise DataError(self.path, "mask folder not found")
        files = self.mask_files()
        if not files:
            if shape is None:
                raise DataError(self.path, "no mask files in folder")
            return np.zeros(tuple(shape), np.uint16), 0
        labels: np.ndarray | None = None
        overlap = 0
        for i, file in enumerate(files, start=1):
            mask = read_label(file) != 0
            if labels is None:
                check_shape(file, mask, shape)
                labels = np.zeros(mask.shape, id_dtype(len(files)))
            elif mask.shape != labels.shape:
                (h, w), (fh, fw) = mask.shape, labels.shape
                raise DataError(file, f"mask size {h}×{w} differs from the folder's other masks ({fh}×{fw})")
            overlap += int(np.count_nonzero(mask & (labels != 0)))
            labels[mask] = i
        assert labels is not None
        return labels, overlap


def detect(root: Path) -> bool:
    """A child folder holding both images/ and masks/."""
    return any((d / "images").is_dir() and (d / "masks").is_dir() for d in subdirs(root))


def scan(root: Path, options: ScanOptions) -> Found:
    """One sample per child folder: its image and its folder of object masks."""
    samples: list[Sample] = []
    issues: list[LayoutIssue] = []
    for folder in subdirs(root):
        img_dir, mask_dir = folder / "images", folder / "masks"
        if not img_dir.is_dir() and not mask_dir.is_dir():
            continue  # not a sample folder
        images, dup = index_by_stem(list_images(img_dir))
        issues += dup
        masks = list_images(mask_dir)
        if not images:
            if masks:
                msg = "object masks without an image (images/ is missing or empty)"
                issues.append(LayoutIssue(mask_dir, "missing_image", msg, folder.name))
            continue
        if folder.name in images:
            image = images[folder.name]
        elif len(images) == 1:
            image = next(iter(images.values()))
        else:
            msg = f"{len(images)} images and none named {folder.name}.*; expected one image per sample folder"
            issues.append(LayoutIssue(img_dir, "invalid", msg, folder.name))
            continue
        if masks:
            samples.append(Sample(folder.name, image, ObjectMaskFolder(mask_dir)))
        else:
            msg = "image has no object masks (masks/ is missing or empty)"
            issues.append(missing_label(folder.name, image, msg))
    return samples, issues


LAYOUT = Layout(
    name="dsb",
    description="Kaggle DSB 2018: <id>/images/<id>.png and <id>/masks/*.png, one mask per object",
    detect=detect,
    scan=scan,
    label=ObjectMaskFolder,
)
