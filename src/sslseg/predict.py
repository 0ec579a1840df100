"""Apply a trained model to images of any size: label maps (TIFF) and overlay pictures (PNG)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image
from skimage.segmentation import find_boundaries
from tqdm.auto import tqdm

from sslseg.atomic import atomic_path
from sslseg.data.datasets import prepare_image
from sslseg.data.io import IMAGE_EXTENSIONS, read_image, write_label
from sslseg.errors import DataError
from sslseg.evaluate import load_model

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


def predict_files(
    checkpoint: str | Path,
    inputs: list[Path],
    out_dir: str | Path,
    progress: bool = True,
    tta: bool | None = None,
) -> list[Path]:
    """Segment each image; writes `<stem>_labels.tif` and `<stem>_overlay.png` into `out_dir`. `tta`
    overrides the checkpoint's test-time augmentation setting."""
    module = load_model(checkpoint, tta=tta)
    cfg = module.cfg
    out = Path(out_dir)
    written = []
    for path in tqdm(collect_images(inputs), desc="predicting", disable=not progress):
        raw = read_image(path)
        image = prepare_image(
            raw,
            module.hparams["in_channels"],
            cfg.data.normalization,
            cfg.data.scale,
            cfg.data.bright_objects,
        )
        labels = module.segment(image, raw.shape[:2])
        label_path = out / f"{path.stem}_labels.tif"
        write_label(label_path, labels)
        with atomic_path(out / f"{path.stem}_overlay.png") as tmp:
            Image.fromarray(overlay(raw, labels, cfg.data.task)).save(tmp, format="PNG")
        written.append(label_path)
    return written
