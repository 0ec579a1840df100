"""Apply a trained model to images of any size: label maps (TIFF), overlay pictures (PNG) and the objects in
formats other tools open (measurements CSV, QuPath GeoJSON, ImageJ ROI zip; see `sslseg.objects`).

A batch goes on past an image it cannot read or segment, lists the failures at the end, and a rerun skips
images whose requested outputs all exist (each file is written atomically, so present means complete)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries
from tqdm.auto import tqdm

import sslseg
from sslseg.atomic import atomic_path
from sslseg.data.datasets import prepare_image
from sslseg.data.io import IMAGE_EXTENSIONS, read_image, write_label
from sslseg.errors import ConfigError, DataError, SslsegError
from sslseg.evaluate import load_model
from sslseg.objects import (
    measure_objects,
    object_polygons,
    objects_geojson,
    read_pixel_size,
    semantic_objects,
    write_geojson,
    write_measurements_csv,
    write_roi_zip,
)
from sslseg.segmentation.module import SegmentationModule

#: Output formats and the file each writes beside the image's name.
OUTPUT_SUFFIXES = {
    "tiff": "_labels.tif",
    "overlay": "_overlay.png",
    "csv": "_objects.csv",
    "geojson": "_objects.geojson",
    "roi": "_rois.zip",
}
DEFAULT_FORMATS = ("tiff", "overlay")
_OBJECT_FORMATS = frozenset({"csv", "geojson", "roi"})

_PALETTE = np.array([[230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48]], np.uint8)


def display_rgb(raw: np.ndarray) -> np.ndarray:
    """Any H×W×C image as 8-bit RGB for display (1st–99.5th percentile stretch)."""
    x = (
        raw[..., :3].astype(np.float32)
        if raw.shape[2] >= 3
        else np.repeat(raw[..., :1], 3, axis=2).astype(np.float32)
    )
    lo, hi = np.percentile(x, [1, 99.5])
    return (np.clip((x - lo) / max(hi - lo, 1e-6), 0, 1) * 255).astype(np.uint8)


def overlay(raw: np.ndarray, labels: np.ndarray, task: str) -> np.ndarray:
    """Instance outlines (one colour per object) or tinted classes drawn over the image."""
    rgb = display_rgb(raw)
    if task == "semantic":
        out = rgb.astype(np.float32)
        for k in range(1, int(labels.max()) + 1):
            m = labels == k
            out[m] = 0.6 * out[m] + 0.4 * _PALETTE[(k - 1) % len(_PALETTE)]
        out[find_boundaries(labels, mode="inner")] = (255, 255, 0)
        return out.astype(np.uint8)
    edges = find_boundaries(labels, mode="inner")
    rgb[edges] = _PALETTE[labels[edges] % len(_PALETTE)]
    return rgb


def collect_images(inputs: list[Path]) -> list[Path]:
    """Expand folders (recursively) into image files; every input must exist."""
    files: list[Path] = []
    for p in inputs:
        if p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.suffix.lower() in IMAGE_EXTENSIONS and f.is_file())
            if not found:
                raise DataError(p, "no image files in this folder")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(p, "no such file or folder")
    return files


def parse_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """Output formats from "tiff,geojson,..." or a list; unknown names are a ConfigError."""
    names = formats.split(",") if isinstance(formats, str) else list(formats)
    chosen = tuple(dict.fromkeys(n.strip().lower() for n in names if n.strip()))
    unknown = [n for n in chosen if n not in OUTPUT_SUFFIXES]
    if unknown or not chosen:
        raise ConfigError(
            f"unknown output format(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(OUTPUT_SUFFIXES)} (comma-separated)"
        )
    return chosen


def named_images(inputs: list[Path], out_dir: Path) -> list[tuple[Path, str]]:
    """Each image with the name its outputs take: the stem, under the subfolders it had inside a folder
    input. A folder's label maps and overlays inside `out_dir` are earlier outputs, not inputs, and are left
    out; two images that would share outputs are a DataError naming both."""
    out = out_dir.resolve()
    own = tuple(OUTPUT_SUFFIXES[f] for f in ("tiff", "overlay"))
    named: list[tuple[Path, str]] = []
    owner: dict[str, Path] = {}
    for root in inputs:
        for f in collect_images([root]):
            if root.is_dir() and f.name.endswith(own) and out in f.resolve().parents:
                continue
            name = f.relative_to(root).with_suffix("").as_posix() if root.is_dir() else f.stem
            if name in owner:
                raise DataError(
                    f,
                    f"its outputs would overwrite those of {owner[name]} (same name); rename one or "
                    "predict them in separate runs with different --out folders",
                )
            owner[name] = f
            named.append((f, name))
    return named


@dataclass
class PredictReport:
    """What a batch did: the files written for each predicted image, the images skipped because their
    outputs were complete, and the images that failed with the reason."""

    outputs: dict[Path, list[Path]] = field(default_factory=dict)
    skipped: list[Path] = field(default_factory=list)
    failed: dict[Path, str] = field(default_factory=dict)

    @property
    def labels(self) -> list[Path]:
        """The label-map TIFFs written in this run."""
        return [
            f for files in self.outputs.values() for f in files if f.name.endswith(OUTPUT_SUFFIXES["tiff"])
        ]


def predict_files(
    checkpoint: str | Path,
    inputs: list[Path],
    out_dir: str | Path,
    progress: bool = True,
    tta: bool | None = None,
    formats: str | Iterable[str] = DEFAULT_FORMATS,
    pixel_size: float | None = None,
    overwrite: bool = False,
    device: str = "auto",
) -> PredictReport:
    """Segment each image and write the requested `formats` (see OUTPUT_SUFFIXES) into `out_dir` as
    `<name><suffix>`. An image that cannot be read or segmented is recorded in the report's `failed` and the
    batch goes on; images whose outputs all exist are skipped unless `overwrite`. `pixel_size` (µm) overrides
    the one read from each file for the measurements; `tta` overrides the checkpoint's test-time augmentation;
    `device` is auto (cuda > mps > cpu), cpu, cuda or mps."""
    chosen = parse_formats(formats)
    if pixel_size is not None and not pixel_size > 0:
        raise ConfigError(f"--pixel-size must be a positive number of µm, got {pixel_size}")
    out = Path(out_dir)
    jobs = named_images([Path(p) for p in inputs], out)
    module = load_model(checkpoint, device=device, tta=tta)
    report = PredictReport()
    bar = tqdm(jobs, desc="predicting", disable=not progress)
    for path, name in bar:
        targets = {fmt: out / f"{name}{OUTPUT_SUFFIXES[fmt]}" for fmt in chosen}
        if not overwrite and all(t.is_file() for t in targets.values()):
            report.skipped.append(path)
            continue
        try:
            _predict_one(module, path, targets, pixel_size)
        except Exception as exc:  # one bad image must not stop a batch of thousands; the reason is kept
            report.failed[path] = _reason(exc)
            bar.set_postfix(failed=len(report.failed))
            continue
        report.outputs[path] = list(targets.values())
    return report


def _reason(exc: Exception) -> str:
    """The one-line reason an image failed (the path is reported beside it)."""
    if isinstance(exc, DataError):
        return exc.problem
    if isinstance(exc, SslsegError):
        return str(exc)
    return f"{type(exc).__name__}: {str(exc).strip() or 'no message'}"


def _predict_one(
    module: SegmentationModule, path: Path, targets: dict[str, Path], pixel_size: float | None
) -> None:
    """Read, segment and write one image's outputs."""
    cfg = module.cfg
    raw = read_image(path)
    image = prepare_image(
        raw,
        module.hparams["in_channels"],
        cfg.data.normalization,
        cfg.data.scale,
        cfg.data.bright_objects,
    )
    labels = module.segment(image, raw.shape[:2])
    if "tiff" in targets:
        write_label(targets["tiff"], labels)
    if "overlay" in targets:
        with atomic_path(targets["overlay"]) as tmp:
            Image.fromarray(overlay(raw, labels, cfg.data.task)).save(tmp, format="PNG")
    if not _OBJECT_FORMATS & targets.keys():
        return
    # a semantic map's objects are the connected regions of each class, with the class as a property
    instances, classes = semantic_objects(labels) if cfg.data.task == "semantic" else (labels, None)
    size = (pixel_size, pixel_size) if pixel_size is not None else read_pixel_size(path)
    table = measure_objects(instances, raw, size, classes)
    if "csv" in targets:
        write_measurements_csv(targets["csv"], table)
    if "geojson" in targets or "roi" in targets:
        polygons = object_polygons(instances)
        if "geojson" in targets:
            write_geojson(targets["geojson"], objects_geojson(polygons, table))
        if "roi" in targets:
            write_roi_zip(targets["roi"], polygons)


sslseg.entry_point(__name__)  # `from sslseg import predict` is callable (see sslseg.API)
