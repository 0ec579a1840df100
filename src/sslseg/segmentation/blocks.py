"""Block-wise segmentation of images larger than memory, whose memory does not grow with the image's height.

The image is cut into square blocks (cores); each is predicted with a halo around it, post-processed on its
own, and keeps the objects whose centroid lies in its core. The halo is at least twice the typical object
across, so an object cut by a core border lies whole in the block that keeps it, and every object appears
once, under one global id. Labels leave in bands of rows, in order, as soon as no later block can touch
them, so a caller writes them to a tiled BigTIFF or a zarr store and only about one row of blocks is held.

The whole image is normalised with statistics taken over all of it (`image_statistics`), as
`sslseg.data.normalize.normalize` does for an image held whole. At scale 1 without test-time augmentation,
every block evaluates the network tiles of the whole image's sliding-window grid (kept between neighbouring
blocks in a cache), so the blended probabilities in a core are those of a whole-image pass; otherwise each
block with its halo is predicted as an image of its own. The working scale (`data.scale`, or the factor
`data.object_size` asks for, measured once on a sample window) and the speck limit of
`postprocess.min_size_fraction` are fixed for the whole image from the same sample window; when the scale
is 1 without measuring and there is no TTA, the window is measured on the whole image's tiles, which stay
in the cache for the blocks, so no network tile is evaluated twice."""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage
from torch import nn
from tqdm.auto import tqdm

from sslseg.config import FinetuneConfig, PostprocessConfig
from sslseg.data.datasets import rescale_image
from sslseg.data.lazy import ImageSource
from sslseg.data.normalize import brighten_objects, channel_statistics, floor_spread, harmonise_channels
from sslseg.data.scale import known_size_factor, typical_area
from sslseg.segmentation.engines import NetworkRunner, network_runner
from sslseg.segmentation.inference import (
    predict_at_scale,
    probabilities_to_labels,
    working_factor,
)
from sslseg.segmentation.tasks import INSTANCE, TASKS, Task, as_task
from sslseg.segmentation.tiling import blend_window, tile_grid

#: Side of a block's core in native pixels (the `--block-size` default).
DEFAULT_BLOCK = 2048
#: Images with more pixels than this are segmented block-wise; smaller ones whole, as always.
BLOCKWISE_PIXELS = 4096 * 4096
MIN_HALO = 32  # native pixels, whatever the objects' size
SAMPLE_WINDOW = 2048  # side of the window the object size, halo and speck limit are measured on
STAT_SAMPLES = 4_000_000  # pixels sampled for medians and percentiles over a large image


@dataclass(frozen=True)
class ImageStats:
    """Per-channel normalisation of a whole image: x → (sign·x − center) / spread, `sign` −1 when the
    image was inverted to bright objects (`brighten_objects`)."""

    center: np.ndarray
    spread: np.ndarray
    invert: bool = False

    def apply(self, raw: np.ndarray, channels: int) -> np.ndarray:
        """Raw H×W×C region → normalised float32 C×H×W, as `prepare_image` does with a whole image."""
        x = harmonise_channels(raw, channels).astype(np.float32).transpose(2, 0, 1)
        if self.invert:
            x = -x
        return ((x - self.center[:, None, None]) / self.spread[:, None, None]).astype(np.float32)


def image_statistics(
    source: ImageSource, channels: int, normalization: str, bright_objects: bool, block: int = DEFAULT_BLOCK
) -> ImageStats:
    """Normalisation statistics of a whole image read block by block: exact means and standard deviations
    (`per_image`), percentiles and the bright-background test from a regular sample of about STAT_SAMPLES
    pixels."""
    h, w, _ = source.shape
    step = max(1, math.ceil(math.sqrt(h * w / STAT_SAMPLES)))
    total = np.zeros(channels)
    squares = np.zeros(channels)
    gray_total = 0.0
    samples: list[np.ndarray] = []
    for y0 in range(0, h, block):
        for x0 in range(0, w, block):
            raw = source.read(y0, min(y0 + block, h), x0, min(x0 + block, w))
            x = harmonise_channels(raw, channels).astype(np.float64)
            total += x.sum(axis=(0, 1))
            squares += (x * x).sum(axis=(0, 1))
            gray_total += x.mean(axis=2).sum()
            samples.append(x[(-y0) % step :: step, (-x0) % step :: step].reshape(-1, channels))
    n = h * w
    sample = np.concatenate(samples)
    invert = bright_objects and float(np.median(sample.mean(axis=1))) > gray_total / n
    sign = -1.0 if invert else 1.0
    if normalization == "per_image":  # exact, from the running sums
        mean = total / n
        center = sign * mean
        spread = floor_spread(np.sqrt(np.maximum(squares / n - mean**2, 0.0)))
    else:
        center, spread = channel_statistics((sign * sample).T, normalization)
    return ImageStats(center.astype(np.float32), spread.astype(np.float32), invert)


def whole_image_stats(raw: np.ndarray, channels: int, normalization: str, bright_objects: bool) -> ImageStats:
    """The statistics `prepare_image` normalises a whole in-memory image with (for comparisons)."""
    x = harmonise_channels(raw, channels)
    invert = bright_objects and brighten_objects(x) is not x
    flat = (-1.0 if invert else 1.0) * x.astype(np.float32).transpose(2, 0, 1).reshape(channels, -1)
    center, spread = channel_statistics(flat, normalization)
    return ImageStats(center.astype(np.float32), spread.astype(np.float32), invert)


@dataclass(frozen=True)
class BlockSettings:
    """What holds for every block of one image: working scale, halo (native px), post-processing."""

    scale: float
    halo: int
    post: PostprocessConfig
    diameter: float | None  # median object diameter in the sample window, native px (None: none found)


@dataclass
class BlockReport:
    """What a block-wise pass did: blocks, objects, and objects cut by a halo (larger than it)."""

    blocks: int = 0
    objects: int = 0
    cut_objects: int = 0
    settings: BlockSettings | None = None
    extra: dict[str, float] = field(default_factory=dict)


def block_settings(
    net: nn.Module | NetworkRunner,
    source: ImageSource,
    stats: ImageStats,
    cfg: FinetuneConfig,
    halo: int | None = None,
    pixel_size: tuple[float, float] | None = None,
    task: Task | None = None,
    tiles: _TileCache | None = None,
) -> BlockSettings:
    """Working scale, halo and speck limit of an image, measured on its central SAMPLE_WINDOW² window: the
    object-size factor (`data.object_size`), the median and 99th-percentile object diameters (halo = twice
    the median, at least the 99th percentile and MIN_HALO, plus the smoothing's reach) and the typical
    object area that `postprocess.min_size_fraction` is a fraction of. With `data.object_size_um` the
    working scale comes from the pixel size (`pixel_size`, else the source's) instead of being measured.
    `task` is the config's task object when the caller has it (a `Segmenter`), else it is looked up. With
    `tiles` (the whole image's tile cache) and a scale of 1 known without measuring, the window is measured
    on the whole image's network tiles, which stay in the cache for the blocks: no tile is evaluated twice."""
    h, w, _ = source.shape
    instance = TASKS[INSTANCE]  # the sample window is measured as instance maps, whatever the task
    run = network_runner(net, instance)
    channels = net_in_channels(run.net)
    post = cfg.postprocess
    d = cfg.data
    scale = d.scale
    if d.object_size_um is not None:
        size = pixel_size if pixel_size is not None else source.pixel_size
        scale = known_size_factor(d.object_size_um, d.object_size, size, source.path, hint="--pixel-size")
    if (task if task is not None else as_task(cfg.data.task)).labels_are_classes:
        return BlockSettings(scale, halo if halo is not None else MIN_HALO * 2, post, None)
    sh, sw = min(h, SAMPLE_WINDOW), min(w, SAMPLE_WINDOW)
    y0, x0 = (h - sh) // 2, (w - sw) // 2
    head = cfg.model.instance_head

    def window() -> np.ndarray:  # the sample window, normalised as the whole image, at the working scale
        return rescale_image(stats.apply(source.read(y0, y0 + sh, x0, x0 + sw), channels), scale)

    if tiles is not None and scale == 1.0 and d.measured_object_size is None:
        probs = tiles.probabilities(
            (y0, y0 + sh, x0, x0 + sw), lambda a, b, c, e: stats.apply(source.read(a, b, c, e), channels)
        )
    elif d.measured_object_size is not None:
        image = window()
        factor, probs = working_factor(run, image, (sh, sw), cfg.inference, d.measured_object_size, head)
        scale *= factor
        if factor != 1.0:
            probs = predict_at_scale(run, rescale_image(image, factor), instance, (sh, sw), cfg.inference)
    else:
        probs = predict_at_scale(run, window(), instance, (sh, sw), cfg.inference)
    raw_post = post.model_copy(update={"min_size": 0, "min_size_fraction": 0.0})
    labels = probabilities_to_labels(probs, instance, raw_post, head)
    areas = np.bincount(labels.ravel())[1:]
    areas = areas[areas > 0]
    diameter = None
    reach = 0
    if areas.size:
        diameters = 2 * np.sqrt(areas / np.pi)
        diameter = float(np.median(diameters))
        reach = int(math.ceil(max(2 * diameter, float(np.percentile(diameters, 99)))))
        if post.min_size_fraction > 0:
            limit = max(post.min_size, post.min_size_fraction * typical_area(areas))
            post = post.model_copy(update={"min_size": int(math.ceil(limit)), "min_size_fraction": 0.0})
    if halo is None:
        halo = max(MIN_HALO, reach) + int(math.ceil(4 * post.smooth_sigma / max(scale, 1e-6)))
    return BlockSettings(scale, int(halo), post, diameter)


def net_in_channels(net: nn.Module) -> int:
    """Input channels of the network's first convolution."""
    for m in net.modules():
        if isinstance(m, nn.Conv2d):
            return int(m.in_channels)
    raise ValueError("the network has no convolution")


class _TileCache:
    """Network outputs of the whole image's sliding-window tiles, kept while a later block needs them."""

    def __init__(self, run: NetworkRunner, shape: tuple[int, int], cfg: FinetuneConfig) -> None:
        self.run = run
        self.device = run.device
        self.tile, self.coords = tile_grid(*shape, cfg.inference.tile_size, cfg.inference.overlap)
        self.window = blend_window(self.tile, torch.device("cpu"))
        self.batch_size = cfg.inference.batch_size
        self.outputs: dict[tuple[int, int], torch.Tensor] = {}

    @torch.no_grad()
    def probabilities(
        self, region: tuple[int, int, int, int], read: Callable[[int, int, int, int], np.ndarray]
    ) -> torch.Tensor:
        """Blended probabilities over `region` (y0, y1, x0, x1), exactly as the whole image's pass blends
        them there; `read` gives the prepared C×h×w image of a native box."""
        y0, y1, x0, x1 = region
        t = self.tile
        wanted = [(y, x) for y, x in self.coords if y < y1 and y + t > y0 and x < x1 and x + t > x0]
        missing = [c for c in wanted if c not in self.outputs]
        if missing:
            by0, bx0 = min(y for y, _ in missing), min(x for _, x in missing)
            by1, bx1 = max(y for y, _ in missing) + t, max(x for _, x in missing) + t
            image = torch.from_numpy(read(by0, by1, bx0, bx1))
            for i in range(0, len(missing), self.batch_size):
                chunk = missing[i : i + self.batch_size]
                batch = torch.stack(
                    [image[:, y - by0 : y - by0 + t, x - bx0 : x - bx0 + t] for y, x in chunk]
                )
                out = self.run(batch.to(self.device)).float().cpu()
                for c, o in zip(chunk, out, strict=True):
                    self.outputs[c] = o
        acc: torch.Tensor | None = None
        weight = torch.zeros(y1 - y0, x1 - x0)
        for y, x in wanted:  # the whole-image order, so that the sums are the same
            o = self.outputs[(y, x)]
            if acc is None:
                acc = torch.zeros(o.shape[0], y1 - y0, x1 - x0)
            ty0, ty1, tx0, tx1 = max(y, y0), min(y + t, y1), max(x, x0), min(x + t, x1)
            win = self.window[ty0 - y : ty1 - y, tx0 - x : tx1 - x]
            acc[:, ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0] += (
                o[:, ty0 - y : ty1 - y, tx0 - x : tx1 - x] * win
            )
            weight[ty0 - y0 : ty1 - y0, tx0 - x0 : tx1 - x0] += win
        assert acc is not None
        return acc / weight

    def forget(self, keep: Callable[[int, int], bool]) -> None:
        """Drop the tiles no later block needs (`keep(y, x)` false)."""
        for c in [c for c in self.outputs if not keep(*c)]:
            del self.outputs[c]


@dataclass(frozen=True)
class BlockObjects:
    """The objects one block keeps: their global-id label map over `region` (0 elsewhere) and the raw image
    of the region, for measuring them; `classes`, for a class map's regions, the class of each id."""

    labels: np.ndarray
    raw: np.ndarray
    origin: tuple[int, int]
    classes: dict[int, int] | None = None


def segment_blocks(
    net: nn.Module | NetworkRunner,
    source: ImageSource,
    cfg: FinetuneConfig,
    block: int = DEFAULT_BLOCK,
    band_rows: int = 512,
    halo: int | None = None,
    stats: ImageStats | None = None,
    on_objects: Callable[[BlockObjects], None] | None = None,
    report: BlockReport | None = None,
    progress: bool = True,
    pixel_size: tuple[float, float] | None = None,
    task: Task | None = None,
) -> Iterator[tuple[int, np.ndarray]]:
    """Segment a large image block by block; yields (first row, rows × W uint32 labels) bands in order,
    each a whole number of `band_rows` rows except the last. The halo (`halo`, else from `block_settings`)
    is capped at the block side; objects larger than it are counted in `report.cut_objects`. Instance labels are stitched (one global id per
    object, 1..N in the order blocks keep them); semantic maps are class indices. `on_objects` receives each
    block's kept objects (instance tasks). `pixel_size` (y, x µm) overrides the source's (for
    `data.object_size_um`). `net` is a network or a `NetworkRunner` (`sslseg.segmentation.engines`); `task`
    the config's task object when the caller has it (a `Segmenter`), else it is looked up once here."""
    if block < 1 or band_rows < 1:
        raise ValueError(f"block ({block}) and band_rows ({band_rows}) must be positive")
    task = task if task is not None else as_task(cfg.data.task)
    classes = task.labels_are_classes
    h, w, _ = source.shape
    run = network_runner(net, task)
    channels = net_in_channels(run.net)
    if stats is None:
        stats = image_statistics(source, channels, cfg.data.normalization, cfg.data.bright_objects, block)
    tile = tile_grid(h, w, cfg.inference.tile_size, cfg.inference.overlap)[0]
    # at scale 1 without TTA the blocks blend the whole image's tiles; the sample window may start them
    tiles = _TileCache(run, (h, w), cfg) if not cfg.inference.tta and min(h, w) >= tile else None
    settings = block_settings(run, source, stats, cfg, halo, pixel_size, task, tiles)
    report = report if report is not None else BlockReport()
    report.settings = settings
    head = cfg.model.instance_head
    cache = tiles if settings.scale == 1.0 else None

    def prepared(y0: int, y1: int, x0: int, x1: int) -> np.ndarray:
        return stats.apply(source.read(y0, y1, x0, x1), channels)

    ys = list(range(0, h, block))
    xs = list(range(0, w, block))
    # class maps need no stitching: a halo is only context, which the whole image's tiles already give
    pad = 0 if classes and cache is not None else min(settings.halo, block)
    buffer = np.zeros((min(h, block + 2 * pad + band_rows), w), np.uint32)
    buffer_y0 = 0
    next_id = 1
    bar = tqdm(total=len(ys) * len(xs), desc=f"{source.path.name} blocks", disable=not progress, leave=False)
    for r, cy0 in enumerate(ys):
        cy1 = min(cy0 + block, h)
        ry0, ry1 = max(0, cy0 - pad), min(h, cy1 + pad)
        for c, cx0 in enumerate(xs):
            cx1 = min(cx0 + block, w)
            rx0, rx1 = max(0, cx0 - pad), min(w, cx1 + pad)
            region = (ry0, ry1, rx0, rx1)
            if cache is not None:
                probs = cache.probabilities(region, prepared)
                next_x = xs[c + 1] - pad if c + 1 < len(xs) else w
                next_y = ys[r + 1] - pad if r + 1 < len(ys) else h
                cache.forget(
                    lambda y, x, ny=next_y, nx=next_x, t=cache.tile, ry1=ry1: (
                        y + t > ny or (y < ry1 and x + t > nx)
                    )
                )
            else:
                image = rescale_image(prepared(*region), settings.scale)
                probs = predict_at_scale(run, image, task, (ry1 - ry0, rx1 - rx0), cfg.inference)
            labels = probabilities_to_labels(probs, task, settings.post, head)
            del probs
            by0 = ry0 - buffer_y0
            if classes:
                core = labels[cy0 - ry0 : cy1 - ry0, cx0 - rx0 : cx1 - rx0]
                buffer[cy0 - buffer_y0 : cy1 - buffer_y0, cx0:cx1] = core
            else:
                kept, n_kept, cut = _kept_objects(labels, region, (cy0, cy1, cx0, cx1), (h, w), next_id)
                next_id += n_kept
                report.cut_objects += cut
                target = buffer[by0 : by0 + (ry1 - ry0), rx0:rx1]
                np.copyto(target, kept, where=(target == 0) & (kept > 0))
                if on_objects is not None and kept.any():
                    on_objects(BlockObjects(kept, source.read(*region), (ry0, rx0)))
            report.blocks += 1
            bar.update()
        # rows above the next block row's reach are final: hand them on in whole bands
        final = ys[r + 1] - pad if r + 1 < len(ys) else h
        end = h if final >= h else buffer_y0 + (final - buffer_y0) // band_rows * band_rows
        if end > buffer_y0:
            n = end - buffer_y0
            yield buffer_y0, buffer[:n].copy()
            buffer[:-n] = buffer[n:].copy() if n < len(buffer) else buffer[:0]
            buffer[-n:] = 0
            buffer_y0 = end
    bar.close()
    report.objects = next_id - 1


def _kept_objects(
    labels: np.ndarray,
    region: tuple[int, int, int, int],
    core: tuple[int, int, int, int],
    shape: tuple[int, int],
    first_id: int,
) -> tuple[np.ndarray, int, int]:
    """The objects of a block's label map whose centroid lies in its core, renumbered from `first_id` in
    label order (uint32, 0 elsewhere), their count, and how many of them touch a halo edge inside the image
    (objects larger than the halo, cut)."""
    ry0, ry1, rx0, rx1 = region
    cy0, cy1, cx0, cx1 = core
    n = int(labels.max(initial=0))
    if n == 0:
        return np.zeros(labels.shape, np.uint32), 0, 0
    index = np.arange(1, n + 1)
    centroids = np.asarray(ndimage.center_of_mass(np.ones(labels.shape, np.float32), labels, index))
    present = ~np.isnan(centroids[:, 0])
    cy = centroids[:, 0] + ry0
    cx = centroids[:, 1] + rx0
    keep = present & (cy >= cy0) & (cy < cy1) & (cx >= cx0) & (cx < cx1)
    lut = np.zeros(n + 1, np.uint32)
    lut[1:][keep] = first_id + np.arange(int(keep.sum()), dtype=np.uint32)
    kept = lut[labels]
    edges = []
    if ry0 > 0:
        edges.append(kept[0])
    if ry1 < shape[0]:
        edges.append(kept[-1])
    if rx0 > 0:
        edges.append(kept[:, 0])
    if rx1 < shape[1]:
        edges.append(kept[:, -1])
    on_edge = np.unique(np.concatenate(edges)) if edges else np.zeros(0, np.uint32)
    return kept, int(keep.sum()), int((on_edge > 0).sum())
