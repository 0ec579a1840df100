"""Decoded, normalised samples held in memory, and the random-crop dataset that feeds training.

Decoding happens once per image; training draws crops from memory, so the loader never starves the model.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F
from skimage.transform import resize
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from sslseg.data.io import read_image, read_pixel_size
from sslseg.data.layouts import Sample
from sslseg.data.normalize import (
    Normalization,
    brighten_objects,
    effective_channels,
    harmonise_channels,
    normalize,
)
from sslseg.data.scale import known_size_factor, median_diameter, size_factor
from sslseg.data.targets import (
    DEFAULT_INSTANCE_HEAD,
    ObjectBalance,
    instance_target_layout,
    object_balance_weights,
    semantic_classes,
)
from sslseg.data.task_rules import task_rules
from sslseg.errors import DataError

if TYPE_CHECKING:
    from sslseg.config import DataConfig


@dataclass
class LoadedSample:
    """One image ready for the network, with its training target and its native-resolution labels."""

    id: str
    image: np.ndarray | CompactImage  # float32 C×h×w at the working scale (compact: see load_samples)
    target: np.ndarray | None  # semantic: int64 h×w; instance: float32 K×h×w (the head's maps [+ weight - 1])
    labels: np.ndarray | None  # native-resolution class map or instance map, for honest evaluation
    native_shape: tuple[int, int]


def rescale_image(image: np.ndarray, scale: float) -> np.ndarray:
    """Resize a C×H×W float image by `scale` (antialiased when shrinking)."""
    if scale == 1.0:
        return image
    h, w = image.shape[1:]
    size = (max(1, round(h * scale)), max(1, round(w * scale)))
    t = torch.from_numpy(image)[None]
    return F.interpolate(t, size=size, mode="bilinear", antialias=scale < 1, align_corners=False)[0].numpy()


def rescale_labels(labels: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of a label map to `shape`."""
    if labels.shape == shape:
        return labels
    return resize(labels, shape, order=0, preserve_range=True, anti_aliasing=False).astype(labels.dtype)


def dataset_channels(images: Sequence[np.ndarray]) -> int:
    """The channel count the network needs for these images: the signal-carrying channels (see
    `effective_channels`) when all images agree, else the most colour channels once alpha is set aside:
    gray and RGB images together make 3 (gray repeated), RGBA among RGB or gray makes 3 (alpha dropped)."""
    kinds = {effective_channels(im) for im in images}
    if len(kinds) == 1:
        return kinds.pop()
    return max(k - 1 if k in (2, 4) else k for k in kinds)


def harmonise_dataset(
    raws: Sequence[np.ndarray], paths: Sequence[Path], channels: int | None = None
) -> tuple[list[np.ndarray], int]:
    """Bring every image to one channel count (the dataset's, or `channels` when given, e.g. a trained
    model's), warning once when that changes images: which counts were turned into what, with examples.
    An image that cannot be converted (3 channels for a 4-channel model) is a DataError naming it."""
    if channels is None:
        channels = dataset_channels(raws)
    return list(iter_harmonised(raws, paths, channels)), channels


def iter_harmonised(raws: Sequence[np.ndarray], paths: Sequence[Path], channels: int) -> Iterator[np.ndarray]:
    """`harmonise_dataset`'s images one at a time, so that a caller can keep a compact copy of each and let
    the decoded one go; the warning about changed images comes after the last one."""
    changed: dict[int, list[Path]] = defaultdict(list)
    for raw, path in zip(raws, paths, strict=True):
        kind = effective_channels(raw)
        if kind != channels:
            changed[kind].append(path)
        try:
            image = harmonise_channels(raw, channels)
        except ValueError as e:
            raise DataError(path, f"{e} (the model or the rest of the dataset has {channels})") from None
        yield image
    if changed:
        parts = [
            f"{_count(len(files), 'image')} with {_count(kind, 'channel')} (e.g. {files[0].name}): "
            f"{_channel_change(kind, channels)}"
            for kind, files in sorted(changed.items())
        ]
        warnings.warn(
            f"images have mixed channel counts; using {_count(channels, 'channel')}: " + "; ".join(parts),
            stacklevel=3,
        )


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'s' if n != 1 else ''}"


def _channel_change(kind: int, channels: int) -> str:
    """What `harmonise_channels` does to an image with `kind` signal-carrying channels, in words."""
    steps = []
    if kind in (2, 4):
        steps.append("alpha dropped")
        kind -= 1
    if kind == 1 and channels > 1:
        steps.append(f"gray used as {channels} equal channels")
    elif kind > 1 and channels == 1:
        steps.append("colour averaged to gray")
    return ", ".join(steps)


def prepare_image(
    raw: np.ndarray,
    channels: int,
    normalization: Normalization = "per_image",
    scale: float = 1.0,
    bright_objects: bool = False,
) -> np.ndarray:
    """Raw H×W×C image → normalised float32 C×h×w at the working scale (`bright_objects`: dark-on-bright
    images inverted first, see `brighten_objects`)."""
    image = harmonise_channels(raw, channels)
    if bright_objects:
        image = brighten_objects(image)
    return rescale_image(normalize(image, normalization), scale)


def load_samples(
    samples: Sequence[Sample],
    task: str,
    num_classes: int = 2,
    channels: int | None = None,
    normalization: Normalization = "per_image",
    scale: float = 1.0,
    with_labels: bool = True,
    progress: bool = True,
    object_size: float | None = None,
    bright_objects: bool = False,
    instance_head: str = DEFAULT_INSTANCE_HEAD,
    object_balance: ObjectBalance | None = None,
    object_size_um: float | None = None,
    pixel_size: float | None = None,
    compact: bool = False,
) -> tuple[list[LoadedSample], int]:
    """Decode, harmonise and normalise every sample once; returns the samples and the channel count used.
    Instance targets are the maps of `instance_head` (`sslseg.data.targets.INSTANCE_TARGETS`); with
    `object_balance` one more channel follows them: each pixel's loss weight minus 1
    (`object_balance_weights`, from the labels and the image at the working scale), so that the zero padding
    of a crop means weight 1 and a zoomed crop interpolates weights linearly.

    With `object_size` (instance tasks, training samples only) each image's working scale is chosen from
    its own labels so that its median object becomes `object_size` px across (images without objects keep
    scale 1); targets follow the resized image, `labels` stay native. Validation and test samples must be
    loaded without it: their scale is estimated at inference, as it will be for new images.

    With `object_size_um` as well (any task, every sample) the objects' real diameter fixes each image's
    working scale instead: `object_size` × its pixel size / `object_size_um`, the pixel size being
    `pixel_size` (µm) when given, else the file's (`read_pixel_size`); a file without one is a DataError.

    With `compact` each image is a `CompactImage` (float32 crops) and its decoded copy goes as soon as it is
    prepared: for pools of unlabeled images, whose float32 copies would not fit in memory."""
    rules = task_rules(task)
    if object_balance is not None and not rules.balances_objects:
        raise ValueError(f"object_balance weighs instance objects, not '{task}' targets")
    if object_size_um is not None and object_size is None:
        raise ValueError("object_size_um needs object_size, the diameter in px the objects are brought to")
    if object_size is not None:
        if not rules.sizes_objects and object_size_um is None:
            raise ValueError(f"object_size applies to instance tasks, not '{task}'")
        if scale != 1.0:
            raise ValueError(f"object_size and scale ({scale}) both choose the working scale; give one")
    make_instance_targets = instance_target_layout(instance_head).make
    raws = []
    for s in tqdm(samples, desc="reading images", disable=not progress or len(samples) < 20, leave=False):
        raws.append(read_image(s.image))
    raws, channels = harmonise_dataset(raws, [s.image for s in samples], channels)
    out = []
    for i, s in enumerate(samples):
        raw = raws[i]
        if compact:
            raws[i] = None  # the decoded copy goes once the compact one exists
        shape = raw.shape[:2]
        source = s.label if with_labels else None
        labels = target = None
        if source is not None:
            labels = source.load(shape)
            if labels.shape != shape:
                raise DataError(source.path, f"label size {labels.shape} differs from image size {shape}")
            if not rules.labels_are_classes and labels.min(initial=0) < 0:
                raise DataError(source.path, "instance labels must be ≥ 0 (0 = background)")
        image_scale = scale
        if object_size_um is not None:
            size = (pixel_size, pixel_size) if pixel_size is not None else read_pixel_size(s.image)
            image_scale = known_size_factor(object_size_um, object_size, size, s.image)
        elif object_size is not None:
            diameter = median_diameter(labels) if labels is not None else None
            image_scale = 1.0 if diameter is None else size_factor(diameter, object_size)
        image = prepare_image(raw, channels, normalization, image_scale, bright_objects)
        if labels is not None:
            work = rescale_labels(labels, image.shape[1:])
            if rules.labels_are_classes:
                try:
                    labels = semantic_classes(labels, num_classes)
                except ValueError as e:
                    raise DataError(source.path, str(e)) from None
                target = semantic_classes(work, num_classes)
            else:
                target = make_instance_targets(work.astype(np.int64))
                if object_balance is not None:
                    extra = object_balance_weights(work, image, object_balance) - 1.0
                    target = np.concatenate([target, extra[None]])
        held = CompactImage(image, _eight_bit(raw)) if compact else image
        out.append(LoadedSample(s.id, held, target, labels, shape))
    return out, channels


class RandomCropDataset(Dataset):
    """Random fixed-size crops from in-memory samples; an epoch is a fixed number of crops.

    With a `scale_range` other than (1, 1), each crop is zoomed by a log-uniform factor, so the network sees
    objects at sizes the training images do not show (nuclei imaged at another magnification). Distance
    targets are normalised per object, so they stay valid under zoom; class maps are resized nearest, and
    the `binary_channels` of dense targets (foreground, contact) are re-binarised after interpolation.
    Samples are drawn uniformly, or in proportion to `weights` (e.g. labelled against pseudo-labelled).
    """

    def __init__(
        self,
        samples: Sequence[LoadedSample],
        crop_size: int,
        length: int,
        scale_range: tuple[float, float] = (1.0, 1.0),
        binary_channels: tuple[int, ...] = (0,),
        weights: Sequence[float] | None = None,
    ) -> None:
        if not samples:
            raise ValueError("no labelled training samples")
        if any(s.target is None for s in samples):
            raise ValueError("every training sample needs a target")
        if weights is not None and (len(weights) != len(samples) or min(weights) < 0 or sum(weights) <= 0):
            raise ValueError(f"need one non-negative weight per sample ({len(samples)}), not all zero")
        self.samples = list(samples)
        self.weights = None if weights is None else torch.tensor(weights, dtype=torch.float64)
        self.crop = crop_size
        self.length = length
        self.log_scale = (float(np.log(scale_range[0])), float(np.log(scale_range[1])))
        self.binary_channels = list(binary_channels)

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.weights is None:
            s = self.samples[int(torch.randint(len(self.samples), (1,)))]
        else:
            s = self.samples[int(torch.multinomial(self.weights, 1))]
        image, target = s.image, s.target
        assert target is not None
        lo, hi = self.log_scale
        zoom = float(np.exp(lo + (hi - lo) * float(torch.rand(()))))
        c = max(8, round(self.crop / zoom))  # the region that becomes one crop after zooming
        h, w = image.shape[1:]
        top = int(torch.randint(max(h - c, 0) + 1, (1,)))
        left = int(torch.randint(max(w - c, 0) + 1, (1,)))
        img = image[:, top : top + c, left : left + c]
        tgt = target[..., top : top + c, left : left + c]
        ph, pw = c - img.shape[1], c - img.shape[2]
        if ph or pw:  # images smaller than the crop: pad (normalised zero = image mean; target = background)
            img = np.pad(img, ((0, 0), (0, ph), (0, pw)))
            tgt = np.pad(tgt, [(0, 0)] * (tgt.ndim - 2) + [(0, ph), (0, pw)])
        img_t = torch.from_numpy(np.ascontiguousarray(img))
        tgt_t = torch.from_numpy(np.ascontiguousarray(tgt))
        if c != self.crop:
            size = (self.crop, self.crop)
            img_t = F.interpolate(img_t[None], size=size, mode="bilinear", align_corners=False)[0]
            if tgt_t.ndim == 2:  # class map
                tgt_t = F.interpolate(tgt_t[None, None].float(), size=size, mode="nearest")[0, 0].long()
            else:  # dense maps: bilinear, binary ones (foreground, contact) re-binarised
                tgt_t = F.interpolate(tgt_t[None], size=size, mode="bilinear", align_corners=False)[0]
                b = self.binary_channels
                tgt_t[b] = (tgt_t[b] > 0.5).float()
        return img_t, tgt_t


def load_heldout(
    samples: Sequence[Sample], data: DataConfig, channels: int, progress: bool = True
) -> list[LoadedSample]:
    """Validation, test or evaluation images with the intensity handling and working scale of `data`, as
    inference reads new images: never sized by their own labels (with `data.object_size_um`, by their pixel
    size, as new images are)."""
    loaded, _ = load_samples(
        samples,
        data.task,
        data.num_classes,
        channels,
        data.normalization,
        data.scale,
        progress=progress,
        bright_objects=data.bright_objects,
        object_size=data.object_size if data.object_size_um is not None else None,
        object_size_um=data.object_size_um,
        pixel_size=data.pixel_size,
    )
    return loaded


def scale_unit(image: np.ndarray, low: float = 1.0, high: float = 99.8) -> np.ndarray:
    """H×W×C image of any bit depth → float16 C×H×W in [0, 1] by per-channel percentiles (for SSL views)."""
    x = image.astype(np.float32).transpose(2, 0, 1)
    lo, hi = np.percentile(x.reshape(x.shape[0], -1), [low, high], axis=1)
    span = np.where(hi - lo < 1e-6, 1.0, hi - lo)
    return np.clip((x - lo[:, None, None]) / span[:, None, None], 0, 1).astype(np.float16)


def read_images(samples: Sequence[Sample], progress: bool = True) -> list[np.ndarray]:
    """Decode every sample's image once (H×W×C, as stored)."""
    return [
        read_image(s.image)
        for s in tqdm(samples, desc="reading images", disable=not progress or len(samples) < 20, leave=False)
    ]


class CompactImage:
    """A C×H×W float image held as small integers, for the in-memory pools of SSL pretraining and of
    semi-supervised fine-tuning: per channel, value = low + step·q with q uint8 (8-bit sources) or uint16
    (others: 65,536 levels between the channel's extremes), and an image whose channels are all equal (gray
    repeated) as one plane. Slicing it like an array (`image[:, y0:y1, x0:x1]`) gives `dtype` values with
    every channel, so a crop costs its conversion and the pool an eighth to a half of a float32 copy."""

    def __init__(self, image: np.ndarray, eight_bit: bool = False, dtype: type = np.float32) -> None:
        x = np.asarray(image, np.float32)
        self.channels = x.shape[0]
        if self.channels > 1 and all(np.array_equal(x[0], x[c]) for c in range(1, self.channels)):
            x = x[:1]
        levels = 255 if eight_bit else 65535
        self.low = x.min(axis=(1, 2))
        high = x.max(axis=(1, 2))
        self.step = np.where(high > self.low, (high - self.low) / levels, 1.0).astype(np.float32)
        q = np.round((x - self.low[:, None, None]) / self.step[:, None, None])
        self.data = q.astype(np.uint8 if eight_bit else np.uint16)
        self.dtype = np.dtype(dtype)  # what slicing it gives

    @property
    def shape(self) -> tuple[int, int, int]:
        return (self.channels, *self.data.shape[1:])

    @property
    def nbytes(self) -> int:
        return self.data.nbytes

    def __getitem__(self, key: object) -> np.ndarray:
        key = key if isinstance(key, tuple) else (key,)
        q, low, step = self.data[(slice(None), *key[1:])], self.low, self.step
        if q.shape[0] != self.channels:  # one gray plane shared by every channel
            q = np.broadcast_to(q, (self.channels, *q.shape[1:]))
            low = np.broadcast_to(low, (self.channels,))
            step = np.broadcast_to(step, (self.channels,))
        q, low, step = q[key[0]], low[key[0]], step[key[0]]
        values = q.astype(np.float32) * step[..., None, None] + low[..., None, None]
        return values.astype(self.dtype, copy=False)

    def __array__(self, dtype: object = None, copy: object = None) -> np.ndarray:
        whole = self[:, :, :]
        return whole if dtype is None else whole.astype(dtype)


def load_unlabeled(
    samples: Sequence[Sample],
    channels: int | None = None,
    progress: bool = True,
    bright_objects: bool = False,
    scale: float = 1.0,
    raws: list[np.ndarray] | None = None,
) -> tuple[list[CompactImage], int]:
    """Decode every image once into [0, 1] at the working `scale`, held compactly; returns them and
    the channel count (`bright_objects`: dark-on-bright images inverted first, as fine-tuning does with the
    same setting). `raws`: the samples' images already decoded by `read_images`, not read again; the list is
    emptied as they are converted, so that the decoded and the compact pool are never both whole in memory.
    Each image is a `CompactImage` giving float16 [0, 1] crops."""
    raws = read_images(samples, progress) if raws is None else raws
    channels = dataset_channels(raws) if channels is None else channels
    eight_bit = [_eight_bit(r) for r in raws]
    images = []
    for i, image in enumerate(iter_harmonised(raws, [s.image for s in samples], channels)):
        raws[i] = None  # type: ignore[call-overload]  # the decoded copy goes as soon as it is converted
        unit = scale_unit(brighten_objects(image) if bright_objects else image)
        if scale != 1.0:  # resized after the [0, 1] mapping: bilinear weights keep values in [0, 1]
            unit = rescale_image(unit.astype(np.float32), scale)
        images.append(CompactImage(unit, eight_bit[i], np.float16))
    raws.clear()
    return images, channels


def _eight_bit(raw: np.ndarray) -> bool:
    """Whether an image's values have at most 256 levels (8-bit or boolean pixels), so uint8 holds them."""
    return raw.dtype in (np.uint8, np.int8, np.bool_)


class RandomBaseCrops(Dataset):
    """Random native-resolution square crops of in-memory images; SSL views are drawn from them on device."""

    def __init__(self, images: Sequence[np.ndarray], size: int, length: int) -> None:
        if not images:
            raise ValueError("no images to pretrain on")
        self.images = list(images)
        self.size = size
        self.length = length

    def __len__(self) -> int:
        return self.length

    def __getitem__(self, index: int) -> torch.Tensor:
        image = self.images[int(torch.randint(len(self.images), (1,)))]
        h, w = image.shape[1:]
        s = self.size
        top = int(torch.randint(max(h - s, 0) + 1, (1,)))
        left = int(torch.randint(max(w - s, 0) + 1, (1,)))
        crop = image[:, top : top + s, left : left + s]
        ph, pw = s - crop.shape[1], s - crop.shape[2]
        if ph or pw:  # small images: reflect so no flat border looks like content
            mode = "reflect" if ph < crop.shape[1] and pw < crop.shape[2] else "edge"
            crop = np.pad(crop, ((0, 0), (0, ph), (0, pw)), mode=mode)
        return torch.from_numpy(np.ascontiguousarray(crop))
