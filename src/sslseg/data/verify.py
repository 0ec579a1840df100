"""Checking a dataset before training (every problem at once, not the first one only), and converting any
supported layout to plain image/label TIFF pairs."""

from __future__ import annotations

import csv
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from sslseg.data.io import read_image, write_image, write_label
from sslseg.data.layouts import LabelFile, MonusegXml, ObjectMaskFolder, Sample, find_samples, scan_samples
from sslseg.data.layouts.pairs import PROPOSALS_FILE  # as labels arrive, verify shows the budget filling
from sslseg.data.task_rules import TASK_RULES, InstanceRules, SemanticRules, task_rules
from sslseg.errors import DataError

Severity = Literal["error", "warning"]
Task = Literal["semantic", "instance", "auto"]  # a task of TASK_RULES, or AUTO
AUTO = "auto"  # not a task: verify_dataset decides the task from the labels
_SHOW_VALUES = 8  # label values listed in a message
_SHOW_NAMES = 3  # unlabeled images named in the report


@dataclass(frozen=True)
class Problem:
    """One problem with one file or folder; errors stop training, warnings deserve a look."""

    path: Path
    message: str
    severity: Severity = "error"

    def format(self) -> str:
        return f"{self.severity.upper():<7} {self.path}: {self.message}"


@dataclass
class VerifyReport:
    """Everything `verify_dataset` found; `ok` is True when there are no errors (warnings allowed)."""

    root: Path
    layout: str = "unknown"
    task: str = "auto"
    n_samples: int = 0  # images found, with or without a label
    n_checked: int = 0  # samples read (fewer than n_samples with `limit`)
    problems: list[Problem] = field(default_factory=list)
    labelled: list[Path] = field(default_factory=list)  # images with a label (what fine-tuning can use)
    unlabeled: list[Path] = field(default_factory=list)  # images without one: the unlabeled pool
    proposed: list[str] = field(default_factory=list)  # names in PROPOSALS_FILE, when the folder has one
    proposed_done: list[str] = field(default_factory=list)  # those of them that have a label now

    def add(self, path: str | Path, message: str, severity: Severity = "error") -> None:
        self.problems.append(Problem(Path(path), message, severity))

    @property
    def errors(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "error"]

    @property
    def warnings(self) -> list[Problem]:
        return [p for p in self.problems if p.severity == "warning"]

    @property
    def n_errors(self) -> int:
        return len(self.errors)

    @property
    def n_warnings(self) -> int:
        return len(self.warnings)

    @property
    def ok(self) -> bool:
        return not self.errors

    def format(self) -> str:
        """One line per problem, the labelled/unlabeled split, then a summary line."""
        lines = [p.format() for p in self.problems]
        n_lab, n_unl = len(self.labelled), len(self.unlabeled)
        line = f"IMAGES  {n_lab} labelled (the budget fine-tuning can draw on), {n_unl} unlabeled"
        if self.unlabeled:
            names = ", ".join(p.name for p in self.unlabeled[:_SHOW_NAMES])
            more = ", …" if n_unl > _SHOW_NAMES else ""
            line += f" (for pretraining; e.g. {names}{more})"
        lines.append(line)
        if self.proposed:
            todo = [n for n in self.proposed if n not in set(self.proposed_done)]
            line = f"BUDGET  {len(self.proposed_done)} of {len(self.proposed)} proposed images annotated"
            if todo:
                line += f"; to do: {', '.join(todo[:_SHOW_NAMES])}{', …' if len(todo) > _SHOW_NAMES else ''}"
            lines.append(line)
        verdict = "OK" if self.ok else "NOT OK"
        lines.append(
            f"{verdict}: {self.root}: {self.n_checked} of {self.n_samples} samples checked "
            f"(layout '{self.layout}', task '{self.task}'): "
            f"{self.n_errors} errors, {self.n_warnings} warnings"
        )
        return "\n".join(lines)


@dataclass(eq=False)
class _LabelInfo:
    sample: Sample
    path: Path
    values: np.ndarray  # the label's distinct values, sorted


def verify_dataset(
    root: str | Path,
    layout: str = "auto",
    task: Task = "auto",
    mask_suffix: str | None = None,
    *,
    images_dir: str | Path | None = None,
    labels_dir: str | Path | None = None,
    limit: int | None = None,
) -> VerifyReport:
    """Read every sample (the first `limit` with one) and collect all problems into a report. Images
    without a label are not problems: they are counted apart as the unlabeled pool."""
    if task != AUTO and task not in TASK_RULES:
        names = ", ".join(f"'{name}'" for name in TASK_RULES)
        raise ValueError(f"task must be {names} or '{AUTO}', got {task!r}")
    report = VerifyReport(Path(root), task=task)
    try:
        scan = scan_samples(root, layout, mask_suffix, images_dir, labels_dir, allow_unlabeled=True)
    except DataError as exc:
        report.add(exc.path, exc.problem)
        return report
    report.layout = scan.layout
    for issue in scan.issues:
        report.add(issue.path, issue.message)
    report.n_samples = len(scan.samples)
    report.labelled = [s.image for s in scan.samples if s.label is not None]
    report.unlabeled = [s.image for s in scan.samples if s.label is None]
    _read_proposal(report, {s.id for s in scan.samples if s.label is not None})
    if scan.samples and not report.labelled and scan.layout != "unlabeled":
        msg = f"none of the {len(scan.samples)} images has a label: fine for pretraining, nothing to fine-tune on"
        report.add(report.root, msg, "warning")
    samples = scan.samples if limit is None else scan.samples[:limit]

    channels: dict[int, list[Path]] = defaultdict(list)
    dtypes: dict[str, list[Path]] = defaultdict(list)
    labels: list[_LabelInfo] = []
    for sample in samples:
        report.n_checked += 1
        try:
            image = read_image(sample.image)
        except DataError as exc:
            report.add(exc.path, exc.problem)
            image = None
        if image is not None:
            channels[image.shape[2]].append(sample.image)
            dtypes[str(image.dtype)].append(sample.image)
        if sample.label is not None:
            info = _check_label(sample, None if image is None else image.shape[:2], report)
            if info is not None:
                labels.append(info)

    # what training does about mixed channels: see datasets.harmonise_dataset
    fix = "; training brings them to one count (gray repeated, alpha dropped)"
    _report_mix(report, channels, "channel counts", lambda c: f"{c} channel{'s' if c != 1 else ''}", fix)
    _report_mix(report, dtypes, "data types", str)
    report.task = _check_values(report, labels, task)
    return report


def _read_proposal(report: VerifyReport, labelled_ids: set[str]) -> None:
    """The names `sslseg select` proposed in this folder, and which of them have a label now."""
    path = report.root / PROPOSALS_FILE
    if not path.is_file():
        return
    try:
        names = [row["name"] for row in csv.DictReader(path.read_text().splitlines())]
    except (OSError, KeyError, csv.Error) as exc:
        report.add(path, f"unreadable proposal ({exc}); expected the CSV `sslseg select` writes", "warning")
        return
    report.proposed = names
    report.proposed_done = [n for n in names if n in labelled_ids]


def _check_label(sample: Sample, shape: tuple[int, int] | None, report: VerifyReport) -> _LabelInfo | None:
    """Load the label (checking its size against the image) and return its distinct values."""
    source = sample.label
    assert source is not None
    try:
        if shape is None and isinstance(source, MonusegXml):
            source.polygons()  # the image failed: still check that the XML parses
            return None
        if isinstance(source, ObjectMaskFolder):
            labels, overlap = source.load_with_overlap(shape)
            if overlap:
                msg = f"{overlap} pixels lie in more than one object mask (the later mask wins)"
                report.add(source.path, msg, "warning")
        else:
            labels = source.load(shape)
    except DataError as exc:
        report.add(exc.path, exc.problem)
        return None
    except ValueError:  # a polygon or RLE label that needs the shape of an image that could not be read
        return None
    return _LabelInfo(sample, source.path, np.unique(labels))


def _is_binary(values: np.ndarray) -> bool:
    present = set(values.tolist())
    return present <= {0, 1} or present <= {0, 255}


def _show(values: np.ndarray) -> str:
    shown = ", ".join(str(v) for v in values[:_SHOW_VALUES].tolist())
    more = f", … ({values.size} values)" if values.size > _SHOW_VALUES else ""
    return "{" + shown + more + "}"


def _check_values(report: VerifyReport, labels: list[_LabelInfo], task: Task) -> str:
    """Flag label values that do not fit the task; with task 'auto', decide the task first and return it."""
    files = [info for info in labels if isinstance(info.sample.label, LabelFile)]
    binary = [info for info in files if _is_binary(info.values)]
    mostly_binary = bool(files) and len(binary) * 2 >= len(files)
    decided: str = task
    if task == AUTO:
        # Object masks, polygons and COCO are instance labels; label files are binary masks when most are.
        decided = SemanticRules.name if mostly_binary else InstanceRules.name
    # class maps in label files that are mostly binary masks should all be
    expect_binary = task_rules(decided).labels_are_classes and mostly_binary
    for info in labels:
        values = info.values
        if values.size and values[0] < 0:
            msg = f"label has negative values (minimum {values[0]}); ids and classes must be ≥ 0"
            report.add(info.path, msg)
        elif expect_binary and isinstance(info.sample.label, LabelFile) and not _is_binary(values):
            msg = f"unexpected label values {_show(values)}: a binary mask should hold {{0, 1}} or {{0, 255}}"
            report.add(info.path, msg)
        if values.size and values.max() == 0:
            report.add(info.path, "label is empty (background only)", "warning")
    if expect_binary:
        ones = [i for i in binary if 1 in i.values]
        full = [i for i in binary if 255 in i.values]
        if ones and full:
            msg = (
                f"binary masks mix two encodings: {len(ones)} use {{0, 1}} (e.g. {ones[0].path.name}), "
                f"{len(full)} use {{0, 255}} (e.g. {full[0].path.name})"
            )
            report.add(report.root, msg, "warning")
    return decided


def _report_mix(
    report: VerifyReport, groups: dict, what: str, name: Callable[[Any], str], note: str = ""
) -> None:
    """A warning when images differ in `what` (channels, dtype): models expect one kind of input."""
    if len(groups) < 2:
        return
    parts = [f"{name(key)} in {len(paths)} (e.g. {paths[0].name})" for key, paths in sorted(groups.items())]
    report.add(report.root, f"images have mixed {what}: " + "; ".join(parts) + note, "warning")


def convert_dataset(
    root: str | Path,
    out_dir: str | Path,
    layout: str = "auto",
    **kw: object,
) -> int:
    """Write every sample as `out_dir/images/<id>.tif` (+ `out_dir/labels/<id>.tif`), a `pairs` layout.

    Keyword arguments go to `find_samples` (mask_suffix, images_dir, labels_dir); returns the sample count."""
    samples = find_samples(root, layout, **kw)  # type: ignore[arg-type]
    out = Path(out_dir)
    for sample in samples:
        image = read_image(sample.image)
        write_image(out / "images" / f"{sample.id}.tif", image)
        if sample.label is None:
            continue
        labels = sample.label.load(image.shape[:2])
        if labels.size and labels.min() < 0:
            msg = "label has negative values; they cannot be stored as label ids"
            raise DataError(sample.label.path, msg)
        write_label(out / "labels" / f"{sample.id}.tif", labels)
    return len(samples)
