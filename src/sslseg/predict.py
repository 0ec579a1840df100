"""Apply a trained model to images of any size: label maps (TIFF), overlay pictures (PNG) and the objects in
formats other tools open (measurements CSV, QuPath GeoJSON, ImageJ ROI zip; see `sslseg.objects`).

A batch goes on past an image it cannot read or segment, lists the failures at the end, and a rerun skips
images whose requested outputs all exist (each file is written atomically, so present means complete)."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import shutil
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import roifile
from PIL import Image
from skimage.segmentation import find_boundaries
from tqdm.auto import tqdm

import sslseg
from sslseg.atomic import atomic_path
from sslseg.data.io import (
    LABEL_TILE,
    ZARR_EXTENSION,
    is_image_path,
    read_image,
    write_label,
    write_label_tiles,
)
from sslseg.data.lazy import ImageSource, open_image, write_ome_zarr_labels
from sslseg.errors import ConfigError, DataError, SslsegError
from sslseg.objects import (
    RegionStream,
    _is_nan,
    imagej_rois,
    measure_objects,
    object_polygons,
    objects_geojson,
    write_geojson,
    write_measurements_csv,
    write_roi_zip,
)
from sslseg.segmentation.blocks import BLOCKWISE_PIXELS, DEFAULT_BLOCK, BlockObjects
from sslseg.segmentation.segmenter import Segmenter
from sslseg.segmentation.tasks import Task, as_task

#: Output formats and the file each writes beside the image's name.
OUTPUT_SUFFIXES = {
    "tiff": "_labels.tif",
    "overlay": "_overlay.png",
    "csv": "_objects.csv",
    "geojson": "_objects.geojson",
    "roi": "_rois.zip",
    "zarr": "_labels.zarr",
}
DEFAULT_FORMATS = ("tiff", "overlay")
_OBJECT_FORMATS = frozenset({"csv", "geojson", "roi"})
OVERLAY_SIDE = 4096  # a block-wise image's overlay is shrunk to at most this many pixels across

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


def overlay(raw: np.ndarray, labels: np.ndarray, task: str | Task) -> np.ndarray:
    """Instance outlines (one colour per object) or tinted classes drawn over the image; `task` is a task
    object (a `Segmenter`'s) or its name."""
    rgb = display_rgb(raw)
    if as_task(task).labels_are_classes:
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
        if is_image_path(p):
            files.append(p)
        elif p.is_dir():
            found = sorted(
                f
                for f in p.rglob("*")
                if is_image_path(f) and not any(a.suffix.lower() == ZARR_EXTENSION for a in f.parents)
            )
            if not found:
                raise DataError(p, "no image files in this folder")
            files.extend(found)
        elif p.is_file():
            files.append(p)
        else:
            raise DataError(p, "no such file or folder")
    return files


def parse_choices(formats: str | Iterable[str], valid: Iterable[str], kind: str) -> tuple[str, ...]:
    """Names from "a,b,..." or a list, lower-cased, repeats dropped, in order; a name not in `valid` (or
    none at all) is a ConfigError naming the `kind` of format and the valid ones."""
    names = formats.split(",") if isinstance(formats, str) else list(formats)
    chosen = tuple(dict.fromkeys(n.strip().lower() for n in names if n.strip()))
    valid = tuple(valid)
    unknown = [n for n in chosen if n not in valid]
    if unknown or not chosen:
        raise ConfigError(
            f"unknown {kind} format(s) {', '.join(unknown) or '(none given)'}; choose from "
            f"{', '.join(valid)} (comma-separated)"
        )
    return chosen


def parse_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """Output formats from "tiff,geojson,..." or a list; unknown names are a ConfigError."""
    return parse_choices(formats, OUTPUT_SUFFIXES, "output")


def named_images(inputs: list[Path], out_dir: Path) -> list[tuple[Path, str]]:
    """Each image with the name its outputs take: the stem, under the subfolders it had inside a folder
    input. A folder's label maps and overlays inside `out_dir` are earlier outputs, not inputs, and are left
    out; two images that would share outputs are a DataError naming both."""
    out = out_dir.resolve()
    own = tuple(OUTPUT_SUFFIXES[f] for f in ("tiff", "overlay", "zarr"))
    named: list[tuple[Path, str]] = []
    owner: dict[str, Path] = {}
    for root in inputs:
        folder = root.is_dir() and not is_image_path(root)  # a .zarr folder is one image
        for f in collect_images([root]):
            if folder and f.name.endswith(own) and out in f.resolve().parents:
                continue
            name = f.relative_to(root).with_suffix("").as_posix() if folder else f.stem
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


def parse_part(part: str | tuple[int, int] | None) -> tuple[int, int] | None:
    """`--part i/n` as (i, n) with 1 ≤ i ≤ n; anything else is a ConfigError saying what is expected."""
    if part is None or isinstance(part, tuple):
        i, n = part if part is not None else (1, 1)
        text = f"{i}/{n}"
    else:
        text = part.strip()
        pieces = text.split("/")
        if len(pieces) != 2 or not all(x.strip().isdigit() for x in pieces):
            raise ConfigError(f"--part must look like i/n (e.g. 2/8: the 2nd of 8 shares), got '{part}'")
        i, n = (int(x) for x in pieces)
    if not 1 <= i <= n:
        raise ConfigError(f"--part {text}: i must be between 1 and n (the shares are numbered 1..n)")
    return None if part is None else (i, n)


def shard(jobs: list[tuple[Path, str]], part: tuple[int, int] | None) -> list[tuple[Path, str]]:
    """The `part` = (i, n) share of the jobs: the i-th of n contiguous, near-equal slices of the list sorted
    by output name, the same in every process, so that n array tasks predict every image exactly once."""
    if part is None:
        return jobs
    i, n = part
    ordered = sorted(jobs, key=lambda job: job[1])
    return ordered[(i - 1) * len(ordered) // n : i * len(ordered) // n]


def predict_files(
    checkpoint: str | Path,
    inputs: list[Path],
    out_dir: str | Path,
    progress: bool = True,
    tta: bool | None = None,
    formats: str | Iterable[str] = DEFAULT_FORMATS,
    pixel_size: float | None = None,
    overwrite: bool = False,
    tile_size: int | None = None,
    batch_size: int | None = None,
    part: str | tuple[int, int] | None = None,
    block_size: int | None = None,
    level: int = 0,
    series: int = 0,
    device: str = "auto",
    engine: str = "auto",
) -> PredictReport:
    """Segment each image and write the requested `formats` (see OUTPUT_SUFFIXES) into `out_dir` as
    `<name><suffix>`. An image that cannot be read or segmented is recorded in the report's `failed` and the
    batch goes on; images whose outputs all exist are skipped unless `overwrite`. `pixel_size` (µm) overrides
    the one read from each file; `tta`, `tile_size` and `batch_size` override the checkpoint's inference
    settings; `part` ("i/n") predicts only the i-th of n shares of the sorted file list. Images over
    BLOCKWISE_PIXELS, or all with `block_size`, are segmented block-wise (`sslseg.segmentation.blocks`);
    `level`/`series` choose a pyramid level / TIFF series. `device` is where the network runs; `engine`
    what runs it (torch, onnx: onnxruntime on the CPU, auto: see `sslseg.segmentation.engines`). The
    checkpoint is resolved once into a `Segmenter` that every image is segmented by."""
    chosen = parse_formats(formats)
    if pixel_size is not None and not pixel_size > 0:
        raise ConfigError(f"--pixel-size must be a positive number of µm, got {pixel_size}")
    if block_size is not None and block_size < 64:
        raise ConfigError(f"--block-size must be at least 64 pixels, got {block_size}")
    share = parse_part(part)
    out = Path(out_dir)
    jobs = shard(named_images([Path(p) for p in inputs], out), share)
    segmenter = Segmenter.from_checkpoint(
        checkpoint, engine=engine, device=device, tta=tta, tile_size=tile_size, batch_size=batch_size
    )
    options = _Options(pixel_size, block_size, level, series, progress)
    report = PredictReport()
    bar = tqdm(jobs, desc="predicting", disable=not progress)
    for path, name in bar:
        targets = {fmt: out / f"{name}{OUTPUT_SUFFIXES[fmt]}" for fmt in _formats_for(path, chosen)}
        if not overwrite and all(t.exists() for t in targets.values()):
            report.skipped.append(path)
            continue
        try:
            _predict_one(segmenter, path, targets, options)
        except Exception as exc:  # one bad image must not stop a batch of thousands; the reason is kept
            report.failed[path] = _reason(exc)
            bar.set_postfix(failed=len(report.failed))
            continue
        report.outputs[path] = list(targets.values())
    return report


def _formats_for(path: Path, chosen: tuple[str, ...]) -> tuple[str, ...]:
    """The formats written for one image: a `.zarr` input's label map is an OME-Zarr beside it, not a TIFF."""
    if path.suffix.lower() == ZARR_EXTENSION and "tiff" in chosen:
        return tuple(dict.fromkeys("zarr" if f == "tiff" else f for f in chosen))
    return chosen


@dataclass(frozen=True)
class _Options:
    pixel_size: float | None
    block_size: int | None
    level: int
    series: int
    progress: bool


def _reason(exc: Exception) -> str:
    """The one-line reason an image failed (the path is reported beside it)."""
    if isinstance(exc, DataError):
        return exc.problem
    if isinstance(exc, SslsegError):
        return str(exc)
    return f"{type(exc).__name__}: {str(exc).strip() or 'no message'}"


def _predict_one(segmenter: Segmenter, path: Path, targets: dict[str, Path], options: _Options) -> None:
    """Read, segment (by `segmenter`) and write one image's outputs: whole, or block-wise when it is
    large."""
    with open_image(path, options.level, options.series) as source:
        h, w, _ = source.shape
        size = (options.pixel_size,) * 2 if options.pixel_size is not None else source.pixel_size
        if options.block_size is not None or h * w > BLOCKWISE_PIXELS:
            _predict_blocks(segmenter, source, targets, size, options)
            return
        # a plain TIFF is read as it always was (the same checks); pyramid levels, series, Zarr and the
        # formats read whole anyway come from the source
        plain = source.lazy and options.level == 0 and options.series == 0
        raw = read_image(path) if plain and path.suffix.lower() != ZARR_EXTENSION else source.read_all()
    # with data.object_size_um, the objects' real size and this image's pixel size fix its scale
    image = segmenter.prepare(raw, size, path)
    labels = segmenter.segment(image, raw.shape[:2])
    if "tiff" in targets:
        write_label(targets["tiff"], labels, size)
    if "zarr" in targets:
        with _atomic_folder(targets["zarr"]) as tmp:
            write_ome_zarr_labels(tmp, labels.shape, size, LABEL_TILE)[...] = labels
    if "overlay" in targets:
        with atomic_path(targets["overlay"]) as tmp:
            Image.fromarray(overlay(raw, labels, segmenter.task)).save(tmp, format="PNG")
    if not _OBJECT_FORMATS & targets.keys():
        return
    # a semantic map's objects are the connected regions of each class, with the class as a property
    instances, classes = segmenter.objects(labels)
    table = measure_objects(instances, raw, size, classes)
    if "csv" in targets:
        write_measurements_csv(targets["csv"], table)
    if "geojson" in targets or "roi" in targets:
        polygons = object_polygons(instances)
        if "geojson" in targets:
            write_geojson(targets["geojson"], objects_geojson(polygons, table))
        if "roi" in targets:
            write_roi_zip(targets["roi"], polygons)


@contextlib.contextmanager
def _atomic_folder(path: Path) -> Iterator[Path]:
    """A temporary folder beside `path`, renamed onto it on success (an older one replaced), else removed."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        yield tmp
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _predict_blocks(
    segmenter: Segmenter,
    source: ImageSource,
    targets: dict[str, Path],
    pixel_size: tuple[float, float] | None,
    options: _Options,
) -> None:
    """Segment a large image block by block, writing its label map (tiled BigTIFF, OME-Zarr) band by band
    and its objects block by block, so that memory does not grow with the image."""
    h, w, _ = source.shape
    objects = _OBJECT_FORMATS & targets.keys()
    classes = segmenter.task.labels_are_classes
    step = max(1, math.ceil(max(h, w) / OVERLAY_SIDE))
    thumb = np.zeros((-(-h // step), -(-w // step)), np.uint32) if "overlay" in targets else None
    zarr_array = None
    with contextlib.ExitStack() as stack:
        if "zarr" in targets:
            folder = stack.enter_context(_atomic_folder(targets["zarr"]))
            zarr_array = write_ome_zarr_labels(folder, (h, w), pixel_size, LABEL_TILE)
        writer = _ObjectWriter(stack, targets, pixel_size, h * w, classes) if objects else None
        # a class map's regions may span blocks: they are found in the stitched map as its bands come
        regions = None
        if writer is not None and classes:
            regions = RegionStream(
                lambda ids, of_class, y0: writer.add(
                    BlockObjects(ids, source.read(y0, y0 + len(ids), 0, w), (y0, 0), of_class)
                )
            )
        bands = segmenter.segment_blocks(
            source,
            block=options.block_size or DEFAULT_BLOCK,
            band_rows=LABEL_TILE,
            on_objects=writer.add if writer is not None and not classes else None,
            progress=options.progress,
            pixel_size=pixel_size,
        )

        def sinks() -> Iterator[tuple[int, np.ndarray]]:
            for y0, band in bands:
                if zarr_array is not None:
                    zarr_array[y0 : y0 + len(band)] = band
                if thumb is not None:
                    thumb[-(-y0 // step) : -(-(y0 + len(band)) // step)] = band[(-y0) % step :: step, ::step]
                if regions is not None:
                    regions.add(y0, band)
                yield y0, band

        if "tiff" in targets:
            write_label_tiles(targets["tiff"], (h, w), sinks(), pixel_size)
        else:
            for _ in sinks():
                pass
        if regions is not None:  # after the writer has taken the last band (it stops at it)
            regions.finish()
        if writer is not None:
            writer.close()
    if thumb is not None:
        raw = _thumbnail(source, step)
        with atomic_path(targets["overlay"]) as tmp:
            Image.fromarray(overlay(raw, thumb.astype(np.int64), segmenter.task)).save(tmp, format="PNG")


def _thumbnail(source: ImageSource, step: int) -> np.ndarray:
    """Every `step`-th pixel of every `step`-th row of an image, read block by block."""
    h, w, c = source.shape
    out = np.zeros((-(-h // step), -(-w // step), c), source.dtype)
    rows = max(step, DEFAULT_BLOCK // step * step)
    for y0 in range(0, h, rows):
        out[y0 // step : -(-min(y0 + rows, h) // step)] = source.read(y0, min(y0 + rows, h), 0, w)[
            ::step, ::step
        ]
    return out


class _ObjectWriter:
    """The objects of a block-wise image, written block by block as they come: CSV rows, GeoJSON features
    and ImageJ ROIs, each into a temporary file that becomes the output when the image is done."""

    def __init__(
        self,
        stack: contextlib.ExitStack,
        targets: dict[str, Path],
        pixel_size: tuple[float, float] | None,
        max_id: int,
        semantic: bool = False,
    ) -> None:
        self.pixel_size = pixel_size
        self.semantic = semantic  # a class column follows the id
        self.width = len(str(max_id))
        self.csv = self.geojson = None
        self.roi: Path | None = None
        self.rows: csv.writer | None = None
        self.features = 0
        if "csv" in targets:
            self.csv = stack.enter_context(
                open(stack.enter_context(atomic_path(targets["csv"])), "w", newline="")  # noqa: SIM115 (closed by the stack)
            )
            self.rows = csv.writer(self.csv)
        if "geojson" in targets:
            self.geojson = stack.enter_context(
                open(stack.enter_context(atomic_path(targets["geojson"])), "w")  # noqa: SIM115 (closed by the stack)
            )
            self.geojson.write('{"type": "FeatureCollection", "features": [')
        if "roi" in targets:
            self.roi = stack.enter_context(atomic_path(targets["roi"]))
            self.roi.unlink()  # roiwrite appends to an existing zip; it must start afresh
        self.header: list[str] | None = None

    def add(self, block: BlockObjects) -> None:
        """Measure and write the objects one block keeps (cropped to their bounding box)."""
        rows, cols = np.nonzero(block.labels.any(axis=1))[0], np.nonzero(block.labels.any(axis=0))[0]
        y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
        labels = block.labels[y0:y1, x0:x1]
        origin = (block.origin[0] + int(y0), block.origin[1] + int(x0))
        table = measure_objects(
            labels, block.raw[y0:y1, x0:x1], self.pixel_size, block.classes, origin=origin
        )
        self._write_header(list(table))
        if self.rows is not None:
            for row in zip(*table.values(), strict=True):
                self.rows.writerow(["" if _is_nan(v) else v for v in (x.item() for x in row)])
        if self.geojson is None and self.roi is None:
            return
        polygons = object_polygons(labels, origin)
        if self.geojson is not None:
            for feature in objects_geojson(polygons, table)["features"]:
                self.geojson.write(("," if self.features else "") + json.dumps(feature, allow_nan=False))
                self.features += 1
        if self.roi is not None and polygons:
            rois, names = imagej_rois(polygons, self.width)
            roifile.roiwrite(self.roi, rois, name=names, mode="a")

    def _write_header(self, columns: list[str]) -> None:
        if self.header is None and self.rows is not None:
            self.rows.writerow(columns)
        self.header = columns

    def close(self) -> None:
        """Finish the files (the header alone when no block kept an object)."""
        if self.header is None and self.rows is not None:
            of_class = {1: 1} if self.semantic else None
            one = measure_objects(np.ones((1, 1), np.int32), np.zeros((1, 1, 1)), self.pixel_size, of_class)
            self.rows.writerow(list(one))
        if self.geojson is not None:
            self.geojson.write("]}")
        if self.roi is not None and not self.roi.exists():
            roifile.roiwrite(self.roi, [], mode="w")


sslseg.entry_point(__name__)  # `from sslseg import predict` is callable (see sslseg.API)
