"""Folder pairs: an images folder and a labels folder whose files share a stem, the labels perhaps with a
suffix ("a.png" ↔ "a_mask.png"); each label file an instance label map or a binary/class mask."""

from __future__ import annotations

import logging
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sslseg.data.io import read_label
from sslseg.data.layouts.base import (
    IMAGE_DIR_NAMES,
    LABEL_DIR_NAMES,
    Found,
    LabelSource,
    Layout,
    LayoutIssue,
    Sample,
    ScanOptions,
    check_shape,
    find_dir,
    given_dir,
    index_by_stem,
    list_images,
    missing_label,
)
from sslseg.errors import DataError

logger = logging.getLogger(__name__)

#: The proposal `sslseg select` writes beside images/ and an empty labels/ for the annotator to fill.
PROPOSALS_FILE = "to_annotate.csv"


@dataclass(frozen=True)
class LabelFile(LabelSource):
    """One file holding an instance label map or a binary/class mask."""

    path: Path

    def load(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        return check_shape(self.path, read_label(self.path), shape)


def detect_mask_suffix(image_stems: Iterable[str], label_stems: Iterable[str]) -> str:
    """The suffix most label stems carry after an image stem ("" when they are equal), e.g. "_lesion"."""
    images = set(image_stems)
    votes: Counter[str] = Counter()
    for stem in label_stems:
        if stem in images:
            votes[""] += 1
        for match in re.finditer(r"[-_. ]", stem):
            if match.start() > 0 and stem[: match.start()] in images:
                votes[stem[match.start() :]] += 1
    if not votes:
        return ""
    return max(votes.items(), key=lambda kv: (kv[1], kv[0] == ""))[0]


def detect(root: Path) -> bool:
    """An images folder beside a labels folder that holds images (or, in a proposal of `sslseg select`,
    the labels folder still empty)."""
    proposal = (root / PROPOSALS_FILE).is_file()
    return bool(find_dir(root, IMAGE_DIR_NAMES) and find_dir(root, LABEL_DIR_NAMES, need_images=not proposal))


def scan(root: Path, options: ScanOptions) -> Found:
    """Pair each image with the label of its stem (plus the given or detected suffix)."""
    images_dir, labels_dir, mask_suffix = options.images_dir, options.labels_dir, options.mask_suffix
    img_dir = given_dir(root, images_dir) if images_dir is not None else find_dir(root, IMAGE_DIR_NAMES)
    if img_dir is None:
        raise DataError(root, f"no images folder ({'/, '.join(IMAGE_DIR_NAMES)}/); pass images_dir")
    if labels_dir is not None:
        lbl_dir = given_dir(root, labels_dir)
    else:
        lbl_dir = find_dir(root, LABEL_DIR_NAMES, need_images=True) or find_dir(root, LABEL_DIR_NAMES)
    if lbl_dir is None:
        raise DataError(root, f"no labels folder ({'/, '.join(LABEL_DIR_NAMES)}/); pass labels_dir")
    images, issues = index_by_stem(list_images(img_dir))
    labels, label_issues = index_by_stem(list_images(lbl_dir))
    issues += label_issues
    if not images:
        issues.append(LayoutIssue(img_dir, "empty", "empty dataset: no image files in the images folder", ""))
    suffix = mask_suffix if mask_suffix is not None else detect_mask_suffix(images, labels)
    if mask_suffix is None and suffix:
        logger.info("%s: label files carry the suffix '%s'", lbl_dir, suffix)
    matched: dict[str, Path] = {}
    for stem, label in labels.items():
        base = stem[: len(stem) - len(suffix)] if stem.endswith(suffix) else None
        if base is not None and base in images:
            matched[base] = label
        else:
            expected = f" (expected <image stem>{suffix})" if suffix else ""
            msg = f"label has no image of the same stem in {img_dir.name}/{expected}"
            issues.append(LayoutIssue(label, "missing_image", msg, label.name))
    samples = []
    for stem, image in images.items():
        if stem in matched:
            samples.append(Sample(stem, image, LabelFile(matched[stem])))
        else:
            msg = f"image has no label {stem}{suffix}.* in {lbl_dir.name}/"
            issues.append(missing_label(stem, image, msg))
    return samples, issues


LAYOUT = Layout(
    name="pairs",
    description="images/ and labels/ (or masks/, gt/, …) folders, label files named after the image",
    detect=detect,
    scan=scan,
    label=LabelFile,
    uses=frozenset({"mask_suffix", "images_dir", "labels_dir"}),
)
