"""COCO JSON: an annotation file listing images and their object polygons or run-length masks; each
annotation one instance. The dataset may be given as the JSON itself or the folder holding it."""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from skimage.draw import polygon as draw_polygon

from sslseg.data.layouts.base import (
    Found,
    LabelSource,
    Layout,
    LayoutIssue,
    Sample,
    ScanOptions,
    given_dir,
    id_dtype,
    subdirs,
    walk_images,
)
from sslseg.errors import DataError


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
        labels = np.zeros((h, w), id_dtype(len(self.segmentations) + 1))
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


def _looks_like_coco(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            head = fh.read(65536)
    except OSError:
        return False
    return '"images"' in head or '"annotations"' in head


def _coco_candidates(root: Path) -> list[Path]:
    folders = [root] + [p for p in subdirs(root) if p.name.lower() == "annotations"]
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


def detect(root: Path) -> bool:
    """A .json file itself, or a COCO-looking JSON in the folder or its annotations/ folder."""
    if root.is_file():
        return root.suffix.lower() == ".json"
    return bool(_coco_candidates(root))


def scan(root: Path, options: ScanOptions) -> Found:
    """One sample per image entry of the JSON, its image found beside the JSON or below its folders."""
    images_dir = options.images_dir
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
        tops.insert(0, given_dir(root if root.is_dir() else root.parent, images_dir))
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
                for path in {p for t in tops for p in walk_images(t)}:
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


LAYOUT = Layout(
    name="coco",
    description="a COCO JSON (polygons or RLE) with its images, given as the file or its folder",
    detect=detect,
    scan=scan,
    label=CocoAnnotations,
    uses=frozenset({"images_dir"}),
    reads_file=True,
)
