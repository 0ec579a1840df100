"""Keep held-out test images out of everything that reads unlabeled images (pretraining, semi-supervised
fine-tuning's pool, self-training's pseudo-labels): an unlabeled image is a test image when it has a test
image's sample id or the same pixels. One index of the test images (`heldout_index`, `HeldoutIndex.add`),
one filter (`drop_heldout`).

Content is compared on the decoded pixels, not on the file bytes: an "unlabeled" folder is often a second
export of the same pictures (TIFF instead of PNG, other compression or metadata, an RGBA or RGB copy of a
gray image), whose bytes all differ while every pixel is the same. A resized or lossy re-encoded copy is
not caught by any exact hash; the sample-id match catches it when it kept its name.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
from tqdm.auto import tqdm

from sslseg.data.io import read_image
from sslseg.data.layouts import Sample, find_samples
from sslseg.data.normalize import effective_channels, harmonise_channels
from sslseg.data.splits import load_split
from sslseg.errors import DataError

if TYPE_CHECKING:
    from sslseg.config import HeldoutImages

SHOWN = 10  # file names listed in a message; the rest are counted


def pixel_digest(image: np.ndarray) -> str:
    """SHA-1 of an H×W×C image's pixels, blind to how they were stored: a constant alpha channel is
    dropped, three equal colour planes count as gray, and byte order is made native."""
    x = harmonise_channels(image, effective_channels(image))
    x = np.ascontiguousarray(x, dtype=x.dtype.newbyteorder("="))
    h = hashlib.sha1(f"{x.dtype.str}{x.shape}".encode())
    h.update(x.tobytes())
    return h.hexdigest()


@dataclass
class HeldoutIndex:
    """Every held-out test image by sample id and by pixel digest (each → its file)."""

    ids: dict[str, Path] = field(default_factory=dict)
    digests: dict[str, Path] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(set(self.ids.values()) | set(self.digests.values()))

    def add(self, samples: Iterable[Sample], progress: bool = True) -> HeldoutIndex:
        """Index test images already found (e.g. a fine-tuning run's test split); returns the index."""
        samples = list(samples)
        for s in tqdm(
            samples, desc="hashing test images", disable=not progress or len(samples) < 20, leave=False
        ):
            self.ids[s.id] = s.image
            self.digests[pixel_digest(read_image(s.image))] = s.image
        return self


def heldout_index(sources: Sequence[HeldoutImages], progress: bool = True) -> HeldoutIndex:
    """Read the test images named by `sources` (whole folders, or the 'test' list of a split file)."""
    index = HeldoutIndex()
    for src in sources:
        # a test folder or split lists labelled images, but the folder may hold unlabeled ones beside them
        samples = find_samples(src.path, layout=src.layout, mask_suffix=src.mask_suffix, allow_unlabeled=True)
        if src.split_file is not None:
            test = set(load_split(src.split_file, [s.id for s in samples])["test"])
            samples = [s for s in samples if s.id in test]
        index.add(samples, progress)
    return index


def _listing(hits: list[tuple[Path, Path, str]]) -> str:
    shown = "; ".join(f"{a} ({how} as test image {b})" for a, b, how in hits[:SHOWN])
    more = f"; and {len(hits) - SHOWN} more" if len(hits) > SHOWN else ""
    return shown + more


def drop_heldout(
    samples: Sequence[Sample],
    raws: Sequence[np.ndarray] | None,
    index: HeldoutIndex,
    on_overlap: Literal["exclude", "error"] = "exclude",
    folder: str | Path = "",
    what: str = "pretraining image",
    setting: str = "data.heldout_overlap",
    allow_empty: bool = False,
    progress: bool = False,
) -> tuple[list[Sample], list[np.ndarray]]:
    """The samples that are not held-out test images, with their decoded images (`raws`, or read here
    when None, as a pool that is loaded later needs only its samples).

    `on_overlap`: 'exclude' leaves the test images out with one warning naming each and its test twin;
    'error' raises a DataError naming them (and `setting`, which chooses). `what` names the images in
    messages. Leaving no image at all is an error unless `allow_empty`."""
    if raws is not None and len(raws) != len(samples):
        raise ValueError(f"{len(samples)} samples but {len(raws)} decoded images")
    keep_s: list[Sample] = []
    keep_r: list[np.ndarray] = []
    hits: list[tuple[Path, Path, str]] = []
    where = f"{folder}: " if str(folder) else ""
    checking = tqdm(
        samples, desc=f"checking {what}s against the test images", disable=not progress, leave=False
    )
    for i, s in enumerate(checking):
        if s.id in index.ids:
            hits.append((s.image, index.ids[s.id], "same sample id"))
            continue
        raw = read_image(s.image) if raws is None else raws[i]
        twin = index.digests.get(pixel_digest(raw))
        if twin is not None:
            hits.append((s.image, twin, "same pixels"))
            continue
        keep_s.append(s)
        if raws is not None:  # decoded images are kept only when handed in: a pool may be large
            keep_r.append(raw)
    if hits and on_overlap == "error":
        raise DataError(
            folder,
            f"{len(hits)} of {len(samples)} {what}s are held-out test images: {_listing(hits)}. "
            f"Remove them, or set {setting}: exclude to leave them out",
        )
    if hits:
        warnings.warn(
            f"{where}left {len(hits)} of {len(samples)} {what}s out because they are held-out "
            f"test images: {_listing(hits)}",
            stacklevel=2,
        )
    if not keep_s and not allow_empty:
        raise DataError(folder, f"no {what} is left once the held-out test images are taken out")
    return keep_s, keep_r
