"""What a selection writes: the images or crops to annotate in an images/ + labels/ layout that sslseg reads
back (labels/ left empty for the annotator), `to_annotate.csv` (one row per proposal) and a contact sheet.

The CSV is written last: a folder holding it holds a complete proposal."""

from __future__ import annotations

import csv
import io
import math
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from sslseg.atomic import atomic_path, write_text
from sslseg.data.io import IMAGE_EXTENSIONS, write_image
from sslseg.data.layouts.pairs import PROPOSALS_FILE
from sslseg.predict import display_rgb

CONTACT_SHEET = "contact_sheet.png"
THUMB = 160  # px per side of a contact sheet's thumbnails
CAPTION = 14  # px of caption under each


@dataclass(frozen=True)
class ProposalRow:
    """One row of `to_annotate.csv`: the file to annotate (`name`, its stem the label's name), where it
    comes from (`image`, the box in its native pixels), its cluster, score and why it was chosen."""

    rank: int
    name: str
    image: str
    y0: int
    x0: int
    y1: int
    x1: int
    cluster: int
    score: float
    why: str


def write_csv(path: Path, rows: Sequence[ProposalRow]) -> None:
    """The proposals as CSV, atomically."""
    buf = io.StringIO()
    writer = csv.DictWriter(buf, fieldnames=list(ProposalRow.__dataclass_fields__))
    writer.writeheader()
    for row in rows:
        writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in asdict(row).items()})
    write_text(path, buf.getvalue())


def write_item(images_dir: Path, name: str, source: Path, raw: np.ndarray | None) -> Path:
    """One proposal into images/: a whole image file copied as it is (its format kept), or pixels (a crop,
    or an image in a format read whole, such as Zarr) as a TIFF; atomically."""
    images_dir.mkdir(parents=True, exist_ok=True)
    if raw is None and source.suffix.lower() in IMAGE_EXTENSIONS:
        target = images_dir / f"{name}{source.suffix}"
        with atomic_path(target) as tmp:
            shutil.copyfile(source, tmp)
        return target
    assert raw is not None
    target = images_dir / f"{name}.tif"
    write_image(target, raw)
    return target


def thumbnail(raw: np.ndarray, side: int = THUMB) -> Image.Image:
    """An H×W×C image as an 8-bit RGB picture whose longer side is `side` (small crops enlarged with
    visible pixels, large images strided before the display stretch)."""
    step = max(1, max(raw.shape[:2]) // (4 * side))
    picture = Image.fromarray(display_rgb(raw[::step, ::step]))
    factor = side / max(picture.size)
    size = (max(1, round(picture.width * factor)), max(1, round(picture.height * factor)))
    return picture.resize(size, Image.Resampling.NEAREST if factor > 1 else Image.Resampling.BILINEAR)


def contact_sheet(path: Path, pictures: Sequence[tuple[str, Image.Image]]) -> None:
    """A grid of captioned thumbnails (caption: rank and name), as PNG, atomically."""
    cols = min(len(pictures), 6)
    rows = math.ceil(len(pictures) / cols)
    cell_w, cell_h = THUMB + 8, THUMB + CAPTION + 8
    sheet = Image.new("RGB", (cols * cell_w, rows * cell_h), "white")
    draw = ImageDraw.Draw(sheet)
    for k, (caption, picture) in enumerate(pictures):
        x, y = (k % cols) * cell_w + 4, (k // cols) * cell_h + 4
        sheet.paste(picture, (x + (THUMB - picture.width) // 2, y + (THUMB - picture.height) // 2))
        draw.text((x, y + THUMB + 1), caption[:26], fill="black")
    with atomic_path(path) as tmp:
        sheet.save(tmp, format="PNG")


__all__ = [
    "CONTACT_SHEET",
    "PROPOSALS_FILE",
    "ProposalRow",
    "contact_sheet",
    "thumbnail",
    "write_csv",
    "write_item",
]
