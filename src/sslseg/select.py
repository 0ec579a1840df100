"""Choosing which images (or regions of large images) to annotate next: features → a strategy → a proposal
folder that sslseg reads back as a dataset whose labels are still to come.

Images of the pool that already have a label count as annotated: they are never proposed, and they shape
the choice (as covered, as near, as filling their cluster), but their labels are never read."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from tqdm.auto import tqdm

import sslseg
from sslseg.config import HeldoutImages
from sslseg.data.datasets import LoadedSample, rescale_image
from sslseg.data.heldout import drop_heldout, heldout_index
from sslseg.data.io import IMAGE_EXTENSIONS, read_pixel_size
from sslseg.data.layouts import Sample, find_samples
from sslseg.data.lazy import ImageSource, open_image
from sslseg.errors import ConfigError, DataError
from sslseg.metrics.uncertainty import inverted_agreement
from sslseg.segmentation.blocks import BLOCKWISE_PIXELS, ImageStats, image_statistics
from sslseg.segmentation.segmenter import Segmenter
from sslseg.segmentation.tta import agreement_metric, tta_predictions
from sslseg.selection.features import DESCRIPTORS, Embedder, feature_space, image_descriptors, load_embedder
from sslseg.selection.outputs import (
    CONTACT_SHEET,
    PROPOSALS_FILE,
    ProposalRow,
    contact_sheet,
    thumbnail,
    write_csv,
    write_item,
)
from sslseg.selection.regions import Box, read_regions, region_grid
from sslseg.selection.strategies import Choice, strategy_named

MIN_REGION = 32  # px: smaller regions hold too little to annotate or describe


@dataclass(frozen=True)
class Item:
    """One candidate: a whole image (`box` None) or one region of it; `name` is what its file will be
    called, and so what its label must be called."""

    name: str
    sample: Sample
    box: Box | None
    annotated: bool


@dataclass
class Selection:
    """What `select` proposed and wrote: the rows of `to_annotate.csv`, in the order chosen, and the files."""

    out: Path
    rows: list[ProposalRow]
    csv: Path
    contact_sheet: Path
    images: list[Path] = field(default_factory=list)
    candidates: int = 0  # unannotated images (regions) the strategy chose from
    annotated: int = 0  # annotated ones it took into account


def select(
    pool: str | Path | Sequence[Sample],
    budget: int,
    out: str | Path,
    strategy: str | None = None,
    features: str = "descriptors",
    encoder: str | None = None,
    model: str | Path | None = None,
    region: int | None = None,
    annotated: Sequence[str | Path] = (),
    heldout: Sequence[str | Path] = (),
    seed: int = 0,
    layout: str = "auto",
    mask_suffix: str | None = None,
    scale: float | None = None,
    device: str = "auto",
    batch_size: int = 16,
    progress: bool = True,
    pixel_size: float | None = None,
    also: Mapping[int, str | Path] | None = None,
) -> Selection:
    """Propose `budget` images of `pool` (a dataset folder in any layout sslseg reads, or its samples) to
    annotate next, and write them into `out`: images/ (the files, or crops with `region`), an empty
    labels/ to fill, `to_annotate.csv` and `contact_sheet.png`.

    `strategy`: typiclust (default), probcover, kcenter, random, or uncertainty (the default with `model`,
    a fine-tuned checkpoint: its TTA disagreement weighed with the distance to what is annotated).
    `features`: descriptors (seven image statistics), random, imagenet, an encoder.safetensors (or its
    pretrain folder) or a fine-tuned checkpoint, whose encoder's deepest stage is pooled over each image at
    the run's working scale (`scale` overrides it); `encoder` names the architecture of random/imagenet.
    `region` (px): propose non-overlapping region×region regions instead of whole images (large images are
    read a band at a time). `annotated`: folders (earlier proposals) whose labelled images count as
    annotated too, matched by name (a pool image's id, or a region's `<id>__y<top>_x<left>`). `heldout`:
    test-set folders; pool images that are copies of their images (same id or same pixels, as pretraining
    and semi-supervised fine-tuning check) are left out with a warning naming both. `pixel_size` (µm) stands
    for each image's own where `model` was trained with data.object_size_um. Deterministic for a `seed`.
    `also`: further budgets, each with its own folder, chosen from the same features (computed once, as a
    study's `selection:` rows need for every budget); the Selection returned is `budget`'s."""
    if pixel_size is not None and not pixel_size > 0:
        raise ConfigError(f"--pixel-size must be a positive number of µm, got {pixel_size}")
    name = strategy or ("uncertainty" if model is not None else "typiclust")
    chosen_strategy = strategy_named(name)
    if chosen_strategy.needs_uncertainty and model is None:
        raise ConfigError(
            f"strategy '{name}' weighs a model's uncertainty; give a fine-tuned checkpoint with --model"
        )
    if model is not None and not chosen_strategy.needs_uncertainty:
        raise ConfigError(
            f"--model is weighed in by the 'uncertainty' strategy, not '{name}'; leave out --strategy or --model"
        )
    outs = {budget: Path(out), **{b: Path(o) for b, o in (also or {}).items()}}
    for b in outs:
        if b < 1:
            raise ConfigError(f"--budget must be at least 1, got {b}")
    if region is not None and region < MIN_REGION:
        raise ConfigError(f"--region must be at least {MIN_REGION} px, got {region}")
    if batch_size < 1:
        raise ConfigError(f"batch_size must be at least 1, got {batch_size}")
    for o in outs.values():
        _check_out(pool, o)
    samples = _pool_samples(pool, layout, mask_suffix)
    where = Path(pool) if isinstance(pool, str | Path) else Path(".")
    if heldout:  # the one leak guard of pretraining and semi-supervised fine-tuning
        index = heldout_index([HeldoutImages(path=Path(h)) for h in heldout], progress)
        samples, _ = drop_heldout(samples, None, index, folder=where, what="pool image", setting="--heldout")
    done = _annotated_names(annotated)
    items = [
        Item(it.name, it.sample, it.box, True) if {it.name, it.sample.id} & done else it
        for it in _items(samples, region)
    ]
    is_annotated = np.array([it.annotated for it in items], dtype=bool)
    candidates = int((~is_annotated).sum())
    unit = "regions" if region else "images"
    if candidates == 0:
        raise DataError(
            where,
            f"every one of the {len(items)} {unit} in the pool is annotated; nothing to propose (with "
            "--layout unlabeled every image counts as unannotated)",
        )
    if max(outs) > candidates:
        raise ConfigError(
            f"--budget {max(outs)} is larger than the {candidates} unannotated {unit} in {where}; ask for at "
            f"most {candidates}"
        )
    embedder = None if features == "descriptors" else load_embedder(features, encoder, seed, scale, device)
    matrix = _feature_matrix(items, embedder, batch_size, progress)
    uncertainty = _uncertainty(model, items, device, progress, pixel_size) if model is not None else None
    x = feature_space(matrix, "descriptors" if embedder is None else "embedding")
    written = {
        b: _write(
            o,
            items,
            chosen_strategy.choose(x, is_annotated, b, seed, uncertainty),
            candidates,
            int(is_annotated.sum()),
        )
        for b, o in outs.items()
    }
    return written[budget]


def _annotated_names(folders: Sequence[str | Path]) -> set[str]:
    """The ids of the labelled images in `folders` (their labels are found, never read)."""
    names: set[str] = set()
    for folder in folders:
        names |= {s.id for s in find_samples(folder, allow_unlabeled=True) if s.label is not None}
    return names


def _check_out(pool: str | Path | Sequence[Sample], out: Path) -> None:
    """An output folder must be new, and may not lie inside the pool, where the next round would take the
    proposals for pool images."""
    if (out / PROPOSALS_FILE).exists():
        raise ConfigError(f"{out}: already holds a proposal ({PROPOSALS_FILE}); choose another --out")
    if isinstance(pool, str | Path) and out.resolve().is_relative_to(Path(pool).resolve()):
        raise ConfigError(f"{out}: --out lies inside the pool {pool}; choose a folder outside it")


def _pool_samples(pool: str | Path | Sequence[Sample], layout: str, mask_suffix: str | None) -> list[Sample]:
    """The pool's samples (labelled or not)."""
    if not isinstance(pool, str | Path):
        samples = list(pool)
        if not samples:
            raise DataError(Path("."), "empty pool: no images to choose from")
        return samples
    return find_samples(Path(pool), layout=layout, mask_suffix=mask_suffix, allow_unlabeled=True)


def _items(samples: Sequence[Sample], region: int | None) -> list[Item]:
    """One item per image, or with `region` one per grid region of each image (shapes read lazily)."""
    if region is None:
        return [Item(s.id, s, None, s.label is not None) for s in samples]
    items = []
    for s in samples:
        with open_image(s.image) as source:
            h, w, _ = source.shape
        for box in region_grid(h, w, region):
            items.append(Item(f"{s.id}__y{box[0]}_x{box[1]}", s, box, s.label is not None))
    return items


def _whole(source: ImageSource) -> np.ndarray:
    """A whole image's pixels; one too large to hold is a DataError pointing to --region."""
    h, w, _ = source.shape
    if h * w > BLOCKWISE_PIXELS:
        raise DataError(
            source.path,
            f"{h}×{w} px is too large to describe whole; propose regions of it with --region SIZE",
        )
    return source.read_all()


def _pixels(
    items: Sequence[Item], normalise: tuple[int, str, bool] | None
) -> Iterator[tuple[Item, np.ndarray, ImageStats | None]]:
    """Each item's pixels (H×W×C, as stored), image by image; for regions, with `normalise` (channels,
    normalisation, bright objects), the whole image's normalisation statistics too (a region is
    normalised as part of its image, as block-wise prediction does)."""
    k = 0
    while k < len(items):
        sample = items[k].sample
        group = []
        while k < len(items) and items[k].sample is sample:
            group.append(items[k])
            k += 1
        with open_image(sample.image) as source:
            if group[0].box is None:
                yield group[0], _whole(source), None
                continue
            stats = image_statistics(source, *normalise) if normalise is not None else None
            by_box = {it.box: it for it in group}
            for box, raw in read_regions(source, [it.box for it in group if it.box is not None]):
                yield by_box[box], raw, stats


def _feature_matrix(
    items: Sequence[Item], embedder: Embedder | None, batch_size: int, progress: bool
) -> np.ndarray:
    """Features of every item (N×D float), computed in batches and stored once; only pixels are read."""
    width = len(DESCRIPTORS) if embedder is None else None
    rows: list[np.ndarray] = []
    batch: list[np.ndarray] = []
    bar = tqdm(total=len(items), desc="describing" if embedder is None else "embedding", disable=not progress)
    normalise = (
        None if embedder is None else (embedder.channels, embedder.normalization, embedder.bright_objects)
    )
    for item, raw, stats in _pixels(items, normalise):
        if embedder is None:
            rows.append(image_descriptors(raw))
        else:
            batch.append(embedder.prepare(raw, item.sample.image, stats))
            if len(batch) == batch_size:
                rows += list(embedder.embed(batch))
                batch = []
        bar.update()
    if batch:
        rows += list(embedder.embed(batch))  # type: ignore[union-attr]
    bar.close()
    matrix = np.stack(rows)
    assert width is None or matrix.shape[1] == width
    return matrix


def _uncertainty(
    model: str | Path, items: Sequence[Item], device: str, progress: bool, pixel_size: float | None = None
) -> np.ndarray:
    """Per item, a fine-tuned model's doubt: the inverted agreement of its label maps under the 8 D4
    test-time augmentations (`sslseg.metrics.uncertainty.inverted_agreement`, under the task's own
    agreement: AJI or foreground Dice), each image prepared by the checkpoint's `Segmenter` as its run
    prepares images (a region normalised by its whole image's statistics, as block-wise prediction does).
    Annotated items, never chosen, are not predicted (NaN)."""
    segmenter = Segmenter.from_checkpoint(model, engine="torch", device=device)
    module = segmenter.module  # the TTA predictions run the torch network with its settings
    d = segmenter.data
    channels = segmenter.in_channels
    metric = agreement_metric(module)
    out = np.full(len(items), np.nan)
    todo = [k for k, it in enumerate(items) if not it.annotated]
    index = {id(items[k]): k for k in todo}
    bar = tqdm(total=len(todo), desc="model uncertainty (TTA)", disable=not progress)
    for item, raw, stats in _pixels([items[k] for k in todo], (channels, d.normalization, d.bright_objects)):
        path = item.sample.image
        # with data.object_size_um, the objects' real size and the file's pixel size fix the scale
        size = None
        if segmenter.needs_pixel_size:
            size = (pixel_size, pixel_size) if pixel_size is not None else read_pixel_size(path)
        if stats is not None:
            image = rescale_image(stats.apply(raw, channels), segmenter.scale(size, path))
        else:
            image = segmenter.prepare(raw, size, path)
        predictions = tta_predictions(module, LoadedSample(item.name, image, None, None, raw.shape[:2]))
        out[index[id(item)]] = inverted_agreement(predictions, metric)
        bar.update()
    bar.close()
    return out


def _write(
    out: Path, items: Sequence[Item], choices: Sequence[Choice], candidates: int, annotated: int
) -> Selection:
    """The proposal folder: images (or crops), an empty labels/, the contact sheet, then the CSV."""
    images_dir = out / "images"
    (out / "labels").mkdir(parents=True, exist_ok=True)
    rows, pictures, files = [], [], []
    for rank, c in enumerate(choices, start=1):
        item = items[c.index]
        path = item.sample.image
        with open_image(path) as source:
            h, w, _ = source.shape
            box = item.box or (0, 0, h, w)
            raw = source.read(box[0], box[2], box[1], box[3])
        # a whole image keeps its file; crops and images read whole from other formats (Zarr) become TIFFs
        copy = item.box is None and path.suffix.lower() in IMAGE_EXTENSIONS
        files.append(write_item(images_dir, item.name, path, None if copy else raw))
        pictures.append((f"{rank}. {item.name}", thumbnail(raw)))
        rows.append(ProposalRow(rank, item.name, str(path), *box, c.cluster, c.score, c.why))
    sheet = out / CONTACT_SHEET
    contact_sheet(sheet, pictures)
    csv_path = out / PROPOSALS_FILE
    write_csv(csv_path, rows)  # last: a folder holding the CSV holds a complete proposal
    return Selection(out, rows, csv_path, sheet, files, candidates, annotated)


sslseg.entry_point(__name__)  # `from sslseg import select` is callable (see sslseg.API)
