"""The registry of dataset layouts, in the order `detect_layout` tries them, and the scans that use it:
`scan_samples` (samples and issues), `find_samples` (samples, or one error summarising the issues).

A new layout is one module with `detect`, `scan` and its `LabelSource`, exported as a `Layout`, and one
entry here; put it before the layouts whose detectors would also accept its folders."""

from __future__ import annotations

import logging
import os
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

from sslseg.data.io import IMAGE_EXTENSIONS, ZARR_EXTENSION
from sslseg.data.layouts import coco, dsb, monuseg, pairs, unlabeled
from sslseg.data.layouts.base import Layout, LayoutIssue, Sample, ScanOptions
from sslseg.errors import DataError

logger = logging.getLogger(__name__)

# Detection tries the layouts in this order: the most specific first, `unlabeled` (any image) last.
LAYOUTS: dict[str, Layout] = {m.LAYOUT.name: m.LAYOUT for m in (pairs, dsb, monuseg, coco, unlabeled)}

_SHOW = 5  # how many names an error message lists before "and N more"
_KIND_TEXT = {
    "empty": "empty dataset",
    "duplicate": "duplicate stems (ids must be unique)",
    "missing_label": "images without a label",
    "missing_image": "labels without an image",
    "invalid": "unusable entries",
}


@dataclass
class Scan:
    """What `scan_samples` found: the samples that pair up and every issue met on the way."""

    root: Path
    layout: str
    samples: list[Sample]
    issues: list[LayoutIssue]


def find_samples(
    root: str | Path,
    layout: str = "auto",
    mask_suffix: str | None = None,
    images_dir: str | Path | None = None,
    labels_dir: str | Path | None = None,
    allow_unlabeled: bool = False,
) -> list[Sample]:
    """Find every sample under `root` in the given (or detected) layout, sorted by id.

    Raises one DataError summarising the problems (orphans, duplicates, nothing found) with a few names.
    With `allow_unlabeled`, images without a label are samples whose label is None, not problems."""
    scan = scan_samples(root, layout, mask_suffix, images_dir, labels_dir, allow_unlabeled)
    if scan.issues:
        raise issues_error(scan)
    return scan.samples


def issues_error(scan: Scan) -> DataError:
    """One DataError summarising a scan's issues by kind: the count and the first few names of each."""
    by_kind: dict[str, list[LayoutIssue]] = defaultdict(list)
    for issue in scan.issues:
        by_kind[issue.kind].append(issue)
    parts = []
    for kind, issues in by_kind.items():
        if len(issues) == 1:
            only = issues[0]
            # Alone, the error's path names the file; beside other issues it must say which file.
            alone = len(scan.issues) == 1 or not only.name
            parts.append(only.message if alone else f"{only.name}: {only.message}")
            continue
        names = ", ".join(i.name for i in issues[:_SHOW])
        more = f" and {len(issues) - _SHOW} more" if len(issues) > _SHOW else ""
        parts.append(f"{len(issues)} {_KIND_TEXT.get(kind, kind)}: {names}{more}")
    if len(scan.issues) == 1:
        path = scan.issues[0].path
    else:
        try:
            path = Path(os.path.commonpath([str(i.path) for i in scan.issues]))
        except ValueError:
            path = scan.root
    return DataError(path, "; ".join(parts) + f" (layout '{scan.layout}')")


def _first_using(option: str) -> str:
    """The first registered layout that reads `option` (the one an explicit folder option implies)."""
    return next(name for name, entry in LAYOUTS.items() if option in entry.uses)


def scan_samples(
    root: str | Path,
    layout: str = "auto",
    mask_suffix: str | None = None,
    images_dir: str | Path | None = None,
    labels_dir: str | Path | None = None,
    allow_unlabeled: bool = False,
) -> Scan:
    """Like `find_samples`, but returns the issues instead of raising (a missing root still raises)."""
    root = Path(root)
    if not root.exists():
        raise DataError(root, "dataset folder not found")
    detected = layout == "auto"
    if detected:  # a folder option the detected layout does not read names the layout that does
        layout = _first_using("labels_dir") if labels_dir is not None else detect_layout(root)
        if images_dir is not None and "images_dir" not in LAYOUTS[layout].uses:
            layout = _first_using("images_dir")
    if layout not in LAYOUTS:
        raise DataError(root, f"unknown layout '{layout}' (expected auto or one of {', '.join(LAYOUTS)})")
    entry = LAYOUTS[layout]
    if not entry.reads_file and not root.is_dir():
        raise DataError(root, f"expected a dataset folder for layout '{layout}'")
    samples, issues = entry.scan(root, ScanOptions(mask_suffix, images_dir, labels_dir))
    if allow_unlabeled:  # a folder where only some images are annotated is the normal case
        samples += [i.sample for i in issues if i.kind == "missing_label" and i.sample is not None]
        issues = [i for i in issues if not (i.kind == "missing_label" and i.sample is not None)]
    if not samples and not issues:
        issues.insert(0, LayoutIssue(root, "empty", "empty dataset: no samples found", ""))
    samples, dup_issues = _unique_sorted(samples)
    issues += dup_issues
    how = "auto-detected" if detected else "as requested"
    logger.info("%s: layout '%s' (%s), %d samples, %d issues", root, layout, how, len(samples), len(issues))
    return Scan(root, layout, samples, issues)


def detect_layout(root: str | Path) -> str:
    """Name the layout of `root`: the first in `LAYOUTS` whose detector accepts it; DataError if no images."""
    root = Path(root)
    if not root.exists():
        raise DataError(root, "dataset folder not found")
    if root.is_file():
        for name, entry in LAYOUTS.items():
            if entry.reads_file and entry.detect(root):
                return name
        raise DataError(root, "expected a dataset folder or a COCO .json file")
    for name, entry in LAYOUTS.items():
        if entry.detect(root):
            return name
    known = ", ".join(sorted(IMAGE_EXTENSIONS))
    raise DataError(root, f"empty dataset: no image files found ({known}, {ZARR_EXTENSION})")


def _unique_sorted(samples: list[Sample]) -> tuple[list[Sample], list[LayoutIssue]]:
    groups: dict[str, list[Sample]] = defaultdict(list)
    for sample in samples:
        groups[sample.id].append(sample)
    issues = []
    for sid, group in groups.items():
        if len(group) > 1:
            names = ", ".join(s.image.name for s in group)
            issues.append(LayoutIssue(group[0].image, "duplicate", f"duplicate id '{sid}': {names}", sid))
    return [groups[sid][0] for sid in sorted(groups)], issues
