"""Unlabeled images: every image under the folder (label folders skipped), for pretraining."""

from __future__ import annotations

from collections import Counter, defaultdict
from pathlib import Path

from sslseg.data.layouts.base import Found, Layout, LayoutIssue, Sample, ScanOptions, walk_images


def detect(root: Path) -> bool:
    """Any image under the folder outside label folders."""
    return next(iter(walk_images(root, skip_label_dirs=True)), None) is not None


def scan(root: Path, options: ScanOptions) -> Found:
    """Every image a sample without a label; ids are stems, or relative paths where stems repeat."""
    files = list(walk_images(root, skip_label_dirs=True))
    by_stem = Counter(p.stem for p in files)
    # Stems that repeat in different folders get their relative path as id (a/x.png → "a__x").
    keyed: dict[str, list[Path]] = defaultdict(list)
    for file in files:
        rel = file.relative_to(root).with_suffix("")
        keyed[file.stem if by_stem[file.stem] == 1 else "__".join(rel.parts)].append(file)
    samples, issues = [], []
    for sid, group in keyed.items():
        samples.append(Sample(sid, group[0], None))
        if len(group) > 1:
            names = ", ".join(str(p.relative_to(root)) for p in group)
            issues.append(
                LayoutIssue(group[0], "duplicate", f"duplicate stem '{group[0].stem}': {names}", sid)
            )
    return samples, issues


LAYOUT = Layout(
    name="unlabeled",
    description="any images anywhere under the folder (label folders skipped), without labels",
    detect=detect,
    scan=scan,
    label=None,
)
