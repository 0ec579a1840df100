"""Finding samples (an image and where its label comes from) in the folder layouts users already have,
so that a dataset can be trained on or checked without converting it first."""

from __future__ import annotations

import json
import logging
import os
import re
import xml.etree.ElementTree as ET
from abc import ABC, abstractmethod
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from skimage.draw import polygon as draw_polygon

from sslseg.data.io import IMAGE_EXTENSIONS, ZARR_EXTENSION, is_image_path, read_image, read_label
from sslseg.errors import DataError

logger = logging.getLogger(__name__)

LAYOUTS = ("pairs", "dsb", "monuseg", "coco", "unlabeled")
IMAGE_DIR_NAMES = ("images", "imgs", "samples")
LABEL_DIR_NAMES = ("labels", "masks", "annotations", "gt")
MONUSEG_IMAGE_DIR_NAMES = ("images", "imgs", "tissue images", "tissue_images")
MONUSEG_XML_DIR_NAMES = ("annotations",)
_SHOW = 5  # how many names an error message lists before "and N more"


# --------------------------------------------------------------------------------------------------
# Label sources


def _check_shape(path: Path, labels: np.ndarray, shape: Sequence[int] | None) -> np.ndarray:
    if shape is not None and labels.shape != tuple(shape):
        (h, w), (ih, iw) = labels.shape, tuple(shape)
        raise DataError(path, f"label size {h}×{w} does not match image size {ih}×{iw} (height×width)")
    return labels


def _id_dtype(n: int) -> type[np.unsignedinteger]:
    return np.uint16 if n < 2**16 else np.uint32


class LabelSource(ABC):
    """Where one sample's label comes from; `load` turns it into a 2-D integer label map."""

    path: Path

    @abstractmethod
    def load(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        """Return the H×W integer label map; `shape` (the image's H, W) is checked or used to rasterise."""


@dataclass(frozen=True)
class LabelFile(LabelSource):
    """One file holding an instance label map or a binary/class mask."""

    path: Path

    def load(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        return _check_shape(self.path, read_label(self.path), shape)


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
                _check_shape(file, mask, shape)
                labels = np.zeros(mask.shape, _id_dtype(len(files)))
            elif mask.shape != labels.shape:
                (h, w), (fh, fw) = mask.shape, labels.shape
                raise DataError(file, f"mask size {h}×{w} differs from the folder's other masks ({fh}×{fw})")
            overlap += int(np.count_nonzero(mask & (labels != 0)))
            labels[mask] = i
        assert labels is not None
        return labels, overlap


@dataclass(frozen=True)
class MonusegXml(LabelSource):
    """MoNuSeg / Aperio XML polygons (`Region` > `Vertices` > `Vertex X= Y=`), one instance id per Region."""

    path: Path
    image: Path | None = None  # gives the shape when `load` is called without one

    def polygons(self) -> list[np.ndarray]:
        """Each Region's vertices as an N×2 array of (x, y); regions under 3 vertices are dropped."""
        root = _parse_xml(self.path)
        regions = list(root.iter("Region"))
        if not regions and root.tag != "Annotations":
            raise DataError(self.path, "no Region elements: not a MoNuSeg/Aperio XML annotation file")
        polygons = []
        for region in regions:
            try:
                points = [(float(v.attrib["X"]), float(v.attrib["Y"])) for v in region.iter("Vertex")]
            except (KeyError, ValueError):
                rid = region.get("Id", "?")
                raise DataError(self.path, f"Region {rid} has a Vertex without numeric X and Y") from None
            if len(points) >= 3:
                polygons.append(np.asarray(points, dtype=np.float64))
        return polygons

    def load(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        if shape is None:
            if self.image is None:
                raise ValueError("MonusegXml.load needs the image shape (or an image path)")
            shape = read_image(self.image).shape[:2]
        polygons = self.polygons()
        labels = np.zeros(tuple(shape), _id_dtype(len(polygons) + 1))
        for i, points in enumerate(polygons, start=1):
            # Vertices trace the boundary pixels, so the fill includes them (skimage fills pixel centres).
            rr, cc = draw_polygon(points[:, 1], points[:, 0], shape=labels.shape)
            labels[rr, cc] = i
        return labels


def _parse_xml(path: Path) -> ET.Element:
    if not path.is_file():
        raise DataError(path, "file not found")
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty (0 bytes)")
    try:
        return ET.parse(path).getroot()
    except ET.ParseError as exc:
        raise DataError(path, f"truncated or corrupt XML: {exc}") from None


@dataclass(frozen=True)
class CocoAnnotations(LabelSource):
    """One image's annotations from a COCO JSON (polygons or RLE), each annotation one instance id."""

    path: Path  # the JSON file
    image_id: int | str
    height: int | None
    width: int | None
    # Each annotation's "segmentation", in annotation-id order; kept here so the JSON is parsed once.
    segmentations: tuple[Any, ...] = field(default=(), compare=False, repr=False)

    def load(self, shape: tuple[int, int] | None = None) -> np.ndarray:
        stated = (self.height, self.width) if self.height and self.width else None
        if shape is None and stated is None:
            raise ValueError("CocoAnnotations.load needs the image shape (the JSON gives no height/width)")
        if shape is not None and stated is not None and tuple(shape) != stated:
            raise DataError(
                self.path,
                f"image {self.image_id}: the JSON says {stated[0]}×{stated[1]} "
                f"but the image is {shape[0]}×{shape[1]} (height×width)",
            )
        h, w = tuple(shape) if shape is not None else stated  # type: ignore[misc]
        labels = np.zeros((h, w), _id_dtype(len(self.segmentations) + 1))
        for i, segmentation in enumerate(self.segmentations, start=1):
            try:
                mask = coco_segmentation_to_mask(segmentation, h, w)
            except (KeyError, TypeError, ValueError, IndexError) as exc:
                raise DataError(self.path, f"image {self.image_id}: malformed segmentation: {exc}") from None
            labels[mask] = i
        return labels


def coco_segmentation_to_mask(segmentation: Any, height: int, width: int) -> np.ndarray:
    """Rasterise one COCO `segmentation` (polygon list, RLE with a counts list or string) to a bool mask."""
    if isinstance(segmentation, dict):
        size = segmentation.get("size", [height, width])
        if tuple(size) != (height, width):
            raise ValueError(f"RLE size {list(size)} differs from the image size {[height, width]}")
        counts = segmentation["counts"]
        if isinstance(counts, bytes):
            counts = counts.decode("ascii")
        if isinstance(counts, str):
            counts = decode_rle_string(counts)
        return rle_to_mask(counts, height, width)
    mask = np.zeros((height, width), bool)
    for poly in segmentation:
        xy = np.asarray(poly, dtype=np.float64)
        if xy.size < 6:
            continue
        # COCO coordinates are continuous with pixel (0, 0) covering [0, 1); skimage fills pixel centres.
        rr, cc = draw_polygon(xy[1::2] - 0.5, xy[0::2] - 0.5, shape=mask.shape)
        mask[rr, cc] = True
    return mask


def rle_to_mask(counts: Sequence[int], height: int, width: int) -> np.ndarray:
    """Uncompressed COCO RLE: alternating runs of 0 and 1 (starting with 0) over column-major pixels."""
    runs = np.asarray(counts, dtype=np.int64)
    if (runs < 0).any():
        raise ValueError("RLE has negative run lengths")
    if int(runs.sum()) != height * width:
        raise ValueError(
            f"RLE runs cover {int(runs.sum())} pixels, expected {height}×{width} = {height * width}"
        )
    flat = np.repeat(np.arange(runs.size) % 2 == 1, runs)
    return flat.reshape(width, height).T


def decode_rle_string(text: str) -> list[int]:
    """Compressed COCO RLE string to run lengths: 6-bit chars (offset 48) with 5 data bits and a
    continuation bit, sign-extended, and from the fourth run on stored as the difference to two runs back."""
    counts: list[int] = []
    pos = 0
    while pos < len(text):
        value, shift, more = 0, 0, True
        while more:
            if pos >= len(text):
                raise ValueError("RLE string ends in the middle of a number")
            char = ord(text[pos]) - 48
            pos += 1
            value |= (char & 0x1F) << shift
            shift += 5
            more = bool(char & 0x20)
            if not more and char & 0x10:
                value |= -1 << shift  # negative: sign-extend
        if len(counts) > 2:
            value += counts[-2]
        counts.append(value)
    return counts


# --------------------------------------------------------------------------------------------------
# Samples and scanning


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


@dataclass
class Scan:
    """What `scan_samples` found: the samples that pair up and every issue met on the way."""

    root: Path
    layout: str
    samples: list[Sample]
    issues: list[LayoutIssue]


_KIND_TEXT = {
    "empty": "empty dataset",
    "duplicate": "duplicate stems (ids must be unique)",
    "missing_label": "images without a label",
    "missing_image": "labels without an image",
    "invalid": "unusable entries",
}


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
    if detected:
        layout = "pairs" if labels_dir is not None else detect_layout(root)
        if images_dir is not None and layout not in ("pairs", "coco"):
            layout = "pairs"
    if layout not in LAYOUTS:
        raise DataError(root, f"unknown layout '{layout}' (expected auto or one of {', '.join(LAYOUTS)})")
    if layout != "coco" and not root.is_dir():
        raise DataError(root, f"expected a dataset folder for layout '{layout}'")
    if layout == "pairs":
        samples, issues = _scan_pairs(root, mask_suffix, images_dir, labels_dir)
    elif layout == "dsb":
        samples, issues = _scan_dsb(root)
    elif layout == "monuseg":
        samples, issues = _scan_monuseg(root)
    elif layout == "coco":
        samples, issues = _scan_coco(root, images_dir)
    else:
        samples, issues = _scan_unlabeled(root)
    if allow_unlabeled:  # a folder where only some images are annotated is the normal case
        samples += [i.sample for i in issues if i.kind == "missing_label" and i.sample is not None]
        issues = [i for i in issues if not (i.kind == "missing_label" and i.sample is not None)]
    if not samples and not issues:
        issues.insert(
            0, LayoutIssue(root, "empty", f"empty dataset: no samples found (layout '{layout}')", "")
        )
    samples, dup_issues = _unique_sorted(samples)
    issues += dup_issues
    how = "auto-detected" if detected else "as requested"
    logger.info("%s: layout '%s' (%s), %d samples, %d issues", root, layout, how, len(samples), len(issues))
    return Scan(root, layout, samples, issues)


def detect_layout(root: str | Path) -> str:
    """Name the layout of `root`, trying pairs, dsb, monuseg, coco, then unlabeled; DataError if no images."""
    root = Path(root)
    if not root.exists():
        raise DataError(root, "dataset folder not found")
    if root.is_file():
        if root.suffix.lower() == ".json":
            return "coco"
        raise DataError(root, "expected a dataset folder or a COCO .json file")
    if _find_dir(root, IMAGE_DIR_NAMES) and _find_dir(root, LABEL_DIR_NAMES, need_images=True):
        return "pairs"
    if any((d / "images").is_dir() and (d / "masks").is_dir() for d in _subdirs(root)):
        return "dsb"
    images, xmls = _monuseg_files(root)
    if {p.stem for p in images} & {p.stem for p in xmls}:
        return "monuseg"
    if _coco_candidates(root):
        return "coco"
    if next(_walk_images(root, skip_label_dirs=True), None) is not None:
        return "unlabeled"
    known = ", ".join(sorted(IMAGE_EXTENSIONS))
    raise DataError(root, f"empty dataset: no image files found ({known}, {ZARR_EXTENSION})")


# --------------------------------------------------------------------------------------------------
# Folder helpers


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _list_images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if is_image_path(p)) if folder.is_dir() else []


def _walk_images(root: Path, skip_label_dirs: bool = False) -> Iterable[Path]:
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


def _find_dir(root: Path, names: Sequence[str], need_images: bool = False) -> Path | None:
    """The first child folder whose lower-cased name is in `names` (in that order of preference)."""
    children = {p.name.lower(): p for p in reversed(_subdirs(root))}
    for name in names:
        folder = children.get(name)
        if folder is not None and (not need_images or _list_images(folder)):
            return folder
    return None


def _given_dir(root: Path, folder: str | Path) -> Path:
    path = Path(folder)
    path = path if path.is_absolute() else root / path
    if not path.is_dir():
        raise DataError(path, "folder not found")
    return path


def _index_by_stem(files: Iterable[Path]) -> tuple[dict[str, Path], list[LayoutIssue]]:
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


# --------------------------------------------------------------------------------------------------
# Layouts


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


def _scan_pairs(
    root: Path, mask_suffix: str | None, images_dir: str | Path | None, labels_dir: str | Path | None
) -> tuple[list[Sample], list[LayoutIssue]]:
    img_dir = _given_dir(root, images_dir) if images_dir is not None else _find_dir(root, IMAGE_DIR_NAMES)
    if img_dir is None:
        raise DataError(root, f"no images folder ({'/, '.join(IMAGE_DIR_NAMES)}/); pass images_dir")
    if labels_dir is not None:
        lbl_dir = _given_dir(root, labels_dir)
    else:
        lbl_dir = _find_dir(root, LABEL_DIR_NAMES, need_images=True) or _find_dir(root, LABEL_DIR_NAMES)
    if lbl_dir is None:
        raise DataError(root, f"no labels folder ({'/, '.join(LABEL_DIR_NAMES)}/); pass labels_dir")
    images, issues = _index_by_stem(_list_images(img_dir))
    labels, label_issues = _index_by_stem(_list_images(lbl_dir))
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
            issues.append(LayoutIssue(image, "missing_label", msg, image.name, Sample(stem, image, None)))
    return samples, issues


def _scan_dsb(root: Path) -> tuple[list[Sample], list[LayoutIssue]]:
    samples: list[Sample] = []
    issues: list[LayoutIssue] = []
    for folder in _subdirs(root):
        img_dir, mask_dir = folder / "images", folder / "masks"
        if not img_dir.is_dir() and not mask_dir.is_dir():
            continue  # not a sample folder
        images, dup = _index_by_stem(_list_images(img_dir))
        issues += dup
        masks = _list_images(mask_dir)
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
            unlabeled = Sample(folder.name, image, None)
            issues.append(LayoutIssue(image, "missing_label", msg, image.name, unlabeled))
    return samples, issues


def _monuseg_files(root: Path) -> tuple[list[Path], list[Path]]:
    """Images in `root` or its image folders, and XML files beside them or in an Annotations folder."""
    image_dirs = [root] + [p for p in _subdirs(root) if p.name.lower() in MONUSEG_IMAGE_DIR_NAMES]
    xml_dirs = image_dirs + [p for p in _subdirs(root) if p.name.lower() in MONUSEG_XML_DIR_NAMES]
    images = [p for d in image_dirs for p in _list_images(d)]
    xmls = sorted(
        {p for d in xml_dirs for p in d.glob("*.xml") if p.is_file() and not p.name.startswith(".")}
    )
    return images, xmls


def _scan_monuseg(root: Path) -> tuple[list[Sample], list[LayoutIssue]]:
    image_files, xml_files = _monuseg_files(root)
    images, issues = _index_by_stem(image_files)
    xmls, xml_issues = _index_by_stem(xml_files)
    issues += xml_issues
    samples = []
    for stem, image in images.items():
        if stem in xmls:
            samples.append(Sample(stem, image, MonusegXml(xmls[stem], image)))
        else:
            msg = f"image has no annotation {stem}.xml beside it or in Annotations/"
            issues.append(LayoutIssue(image, "missing_label", msg, image.name, Sample(stem, image, None)))
    for stem, xml in xmls.items():
        if stem not in images:
            issues.append(
                LayoutIssue(xml, "missing_image", "annotation has no image of the same stem", xml.name)
            )
    return samples, issues


def _looks_like_coco(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            head = fh.read(65536)
    except OSError:
        return False
    return '"images"' in head or '"annotations"' in head


def _coco_candidates(root: Path) -> list[Path]:
    folders = [root] + [p for p in _subdirs(root) if p.name.lower() == "annotations"]
    return [p for d in folders for p in sorted(d.glob("*.json")) if p.is_file() and _looks_like_coco(p)]


def _load_coco_json(path: Path) -> dict[str, Any]:
    if path.stat().st_size == 0:
        raise DataError(path, "file is empty (0 bytes)")
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise DataError(path, f"truncated or corrupt JSON: {exc}") from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError(path, "not a COCO annotation file (needs an 'images' list and an 'annotations' list)")
    if not isinstance(data.get("annotations", []), list):
        raise DataError(path, "not a COCO annotation file ('annotations' is not a list)")
    return data


def _scan_coco(root: Path, images_dir: str | Path | None = None) -> tuple[list[Sample], list[LayoutIssue]]:
    if root.is_file():
        json_path = root
    else:
        candidates = _coco_candidates(root)
        if not candidates:
            raise DataError(root, "no COCO .json file found (looked in the folder and in annotations/)")
        if len(candidates) > 1:
            names = ", ".join(p.name for p in candidates)
            raise DataError(
                root, f"{len(candidates)} COCO .json files ({names}); pass the path of the one to use"
            )
        json_path = candidates[0]
    data = _load_coco_json(json_path)
    # Where file_name is tried: images_dir, the JSON's folder (and its parent when that is annotations/),
    # the root, and the images/ folder of each; failing that, a file of that name anywhere below them.
    tops = [json_path.parent]
    if json_path.parent.name.lower() == "annotations":
        tops.append(json_path.parent.parent)
    if root.is_dir():
        tops.append(root)
    if images_dir is not None:
        tops.insert(0, _given_dir(root if root.is_dir() else root.parent, images_dir))
    bases = list(dict.fromkeys(b for t in tops for b in (t, t / "images") if b.is_dir()))
    by_name: dict[str, list[Path]] | None = None  # built only when a file is not where the JSON says

    annotations: dict[Any, list[dict[str, Any]]] = defaultdict(list)
    for ann in data.get("annotations", []):
        if isinstance(ann, dict) and "segmentation" in ann:
            annotations[ann.get("image_id")].append(ann)
    samples: list[Sample] = []
    issues: list[LayoutIssue] = []
    known_ids = set()
    for entry in data["images"]:
        if not isinstance(entry, dict) or "id" not in entry or "file_name" not in entry:
            msg = f"image entry without 'id' and 'file_name': {str(entry)[:80]}"
            issues.append(LayoutIssue(json_path, "invalid", msg, str(entry)[:40]))
            continue
        image_id, file_name = entry["id"], str(entry["file_name"])
        known_ids.add(image_id)
        image = next((b / file_name for b in bases if (b / file_name).is_file()), None)
        if image is None:
            if by_name is None:
                by_name = defaultdict(list)
                for path in {p for t in tops for p in _walk_images(t)}:
                    by_name[path.name].append(path)
            found = sorted(set(by_name.get(Path(file_name).name, [])))
            if len(found) == 1:
                image = found[0]
            else:
                why = "was not found" if not found else f"is ambiguous ({len(found)} files of that name)"
                msg = f"image file '{file_name}' (id {image_id}) listed in the JSON {why}"
                issues.append(LayoutIssue(json_path, "missing_image", msg, file_name))
                continue
        anns = annotations.get(image_id, [])
        label = CocoAnnotations(
            json_path,
            image_id,
            entry.get("height"),
            entry.get("width"),
            tuple(a["segmentation"] for a in anns),
        )
        samples.append(Sample(Path(file_name).stem, image, label))
    for image_id in sorted(set(annotations) - known_ids, key=str):
        n = len(annotations[image_id])
        msg = f"{n} annotations refer to image_id {image_id}, which is not in the JSON's 'images'"
        issues.append(LayoutIssue(json_path, "missing_image", msg, f"image_id {image_id}"))
    return samples, issues


def _scan_unlabeled(root: Path) -> tuple[list[Sample], list[LayoutIssue]]:
    files = list(_walk_images(root, skip_label_dirs=True))
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
