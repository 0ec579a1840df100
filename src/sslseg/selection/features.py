"""What selection compares images by: seven image descriptors, or an encoder's embedding pooled over the
image at the run's working scale, and the space distances are taken in.

Descriptors need no network: intensity, contrast, colour, foreground share, blob density, blob size and
image size. An encoder's embedding is its deepest stage averaged over the whole image (large images in
tiles of at most EMBED_TILE px, weighted by area, so memory does not grow with the image); images of one
shape go through the network in batches."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from scipy import ndimage
from skimage.filters import threshold_otsu
from torch import nn

from sslseg.data.datasets import rescale_image
from sslseg.data.normalize import Normalization, brighten_objects, harmonise_channels, normalize
from sslseg.device import fast_autocast, resolve_device
from sslseg.errors import ConfigError, DataError
from sslseg.evaluate import load_model
from sslseg.nn.unet import build_encoder, build_unet, encoder_of
from sslseg.segmentation.blocks import ImageStats, net_in_channels
from sslseg.weights import encoder_from_weights, read_metadata

DESCRIPTORS = (
    "intensity",
    "contrast",
    "colour",
    "foreground_share",
    "blob_density",
    "blob_size",
    "image_size",
)
EMBED_TILE = 1024  # working-scale pixels per side of the tiles a large image is embedded in
RANDOM_ENCODER = "resnet18"  # the architecture of `random` and `imagenet` features unless named


def _unit_gray_colour(raw: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """An H×W×C image as gray and RGB in [0, 1]: integers by their type's range (so a dim image stays dim),
    floats by their own range."""
    channels = 3 if raw.shape[2] >= 3 else 1
    x = harmonise_channels(raw, channels).astype(np.float32)
    if np.issubdtype(raw.dtype, np.integer):
        x /= float(np.iinfo(raw.dtype).max)
    else:
        lo, hi = float(x.min()), float(x.max())
        x = (x - lo) / (hi - lo) if hi > lo else np.zeros_like(x)
    return x.mean(axis=2), x


def image_descriptors(raw: np.ndarray) -> np.ndarray:
    """The seven DESCRIPTORS of an H×W×C image: mean and standard deviation of the gray intensity, mean
    chroma (max − min channel; 0 for gray), the share of pixels above Otsu's threshold once objects are
    made bright (`brighten_objects`), foreground blobs per 10⁴ px and log(1 + their median area), and
    log of the pixel count."""
    gray, colour = _unit_gray_colour(raw)
    chroma = float((colour.max(axis=2) - colour.min(axis=2)).mean())
    bright = brighten_objects(gray[:, :, None])[:, :, 0]
    share = density = size = 0.0
    if bright.max() > bright.min():
        foreground = bright > threshold_otsu(bright)
        share = float(foreground.mean())
        blobs, n = ndimage.label(foreground)
        if n:
            density = n / foreground.size * 1e4
            size = float(np.log1p(np.median(np.bincount(blobs.ravel())[1:])))
    pixels = float(np.log(gray.size))
    return np.array([gray.mean(), gray.std(), chroma, share, density, size, pixels], dtype=np.float64)


def feature_space(features: np.ndarray, kind: str) -> np.ndarray:
    """The rows distances are taken between: descriptors standardised per column (each statistic weighs
    alike; a constant one drops out), embeddings scaled to unit length (cosine geometry, as SSL
    embeddings are compared)."""
    x = np.asarray(features, dtype=np.float64)
    if kind == "descriptors":
        spread = x.std(axis=0)
        return (x - x.mean(axis=0)) / np.where(spread > 1e-12, spread, 1.0)
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    return x / np.where(norms > 1e-12, norms, 1.0)


@dataclass
class Embedder:
    """An encoder and how images are prepared for it: channels, normalisation, inversion, working scale."""

    encoder: nn.Module
    channels: int
    normalization: Normalization = "per_image"
    bright_objects: bool = False
    scale: float = 1.0
    source: str = ""  # what the encoder is, for the CSV and messages
    scale_of: Callable[[np.ndarray], float] | None = None  # a per-image working scale (measured sizes)

    def prepare(self, raw: np.ndarray, path: Path, stats: ImageStats | None = None) -> np.ndarray:
        """A raw H×W×C image → normalised float32 C×h×w at the working scale; a region of a larger image
        is normalised with that image's `stats` (`sslseg.segmentation.blocks.image_statistics`)."""
        try:
            if stats is not None:
                x = stats.apply(raw, self.channels)
            else:
                image = harmonise_channels(raw, self.channels)
                if self.bright_objects:
                    image = brighten_objects(image)
                x = normalize(image, self.normalization)
        except ValueError as e:
            raise DataError(path, f"{e} (the encoder takes {self.channels})") from None
        scale = self.scale_of(x) if self.scale_of is not None else self.scale
        return rescale_image(x, scale)

    @torch.inference_mode()
    def embed(self, images: list[np.ndarray]) -> np.ndarray:
        """Pooled deepest-stage features (N×D) of prepared images, batched by shape, large ones in tiles;
        in bfloat16 where the device computes it natively (distances between pooled features do not need
        more, and it halves the time on such CPUs)."""
        device = next(self.encoder.parameters()).device
        self.encoder.eval().to(memory_format=torch.channels_last)
        with fast_autocast(device):
            return self._embed(images, device)

    def _embed(self, images: list[np.ndarray], device: torch.device) -> np.ndarray:
        rows: list[np.ndarray | None] = [None] * len(images)
        by_shape: dict[tuple[int, ...], list[int]] = {}
        for i, im in enumerate(images):
            by_shape.setdefault(im.shape, []).append(i)
        for shape, indices in by_shape.items():
            if max(shape[1:]) <= EMBED_TILE:
                x = torch.from_numpy(np.stack([images[i] for i in indices])).to(device)
                x = x.contiguous(memory_format=torch.channels_last)
                pooled = self.encoder(x)[-1].float().mean(dim=(2, 3)).cpu().numpy()
                for j, i in enumerate(indices):
                    rows[i] = pooled[j]
            else:
                for i in indices:
                    rows[i] = self._tiled(images[i], device)
        return np.stack([r for r in rows if r is not None]).astype(np.float32)

    def _tiled(self, image: np.ndarray, device: torch.device) -> np.ndarray:
        """The area-weighted mean of the pooled features of an image's tiles of at most EMBED_TILE px."""
        h, w = image.shape[1:]
        total, area = None, 0
        for y0 in range(0, h, EMBED_TILE):
            for x0 in range(0, w, EMBED_TILE):
                tile = np.ascontiguousarray(image[:, y0 : y0 + EMBED_TILE, x0 : x0 + EMBED_TILE])
                f = self.encoder(torch.from_numpy(tile)[None].to(device))[-1].float().mean(dim=(2, 3))[0]
                n = tile.shape[1] * tile.shape[2]
                total = f.cpu().numpy() * n if total is None else total + f.cpu().numpy() * n
                area += n
        assert total is not None
        return total / area


def _seeded_random_encoder(name: str, channels: int, seed: int) -> nn.Module:
    """A randomly initialised encoder whose weights depend on `seed` only (the global RNG is left as is)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return build_encoder(name, channels)


def load_embedder(
    features: str,
    encoder_name: str | None = None,
    seed: int = 0,
    scale: float | None = None,
    device: str = "auto",
) -> Embedder:
    """The encoder `features` names: `random` (a seeded random init of `encoder_name`, resnet18 unless
    named), `imagenet` (its ImageNet weights, from the local cache only), a `sslseg pretrain` encoder
    (`encoder.safetensors` or its run folder: channels, normalisation and working scale from its sidecar)
    or a fine-tuned checkpoint (`.ckpt` or a run folder holding `best.ckpt`: its encoder, prepared as that
    run prepares images, at its working scale). `scale` overrides the working scale."""
    target = resolve_device(device)
    path = Path(features)
    if features in ("random", "imagenet"):
        name = encoder_name or RANDOM_ENCODER
        if features == "random":
            encoder = _seeded_random_encoder(name, 3, seed)
        else:
            encoder = encoder_of(build_unet(name, 3, 1, imagenet=True))
        return Embedder(encoder.to(target).eval(), 3, scale=scale or 1.0, source=f"{features} {name}")
    if path.suffix == ".ckpt" or (path.is_dir() and (path / "best.ckpt").is_file()):
        return checkpoint_embedder(path, scale, device)
    weights = path / "encoder.safetensors" if path.is_dir() else path
    if not weights.is_file():
        raise DataError(
            path,
            "not found as encoder weights or a checkpoint; --features takes descriptors, random, imagenet, "
            "an encoder.safetensors (or its pretrain folder) or a fine-tuned checkpoint",
        )
    meta = read_metadata(weights)
    encoder = encoder_from_weights(weights, encoder_name)
    return Embedder(
        encoder.to(target).eval(),
        int(meta.get("in_channels") or net_in_channels(encoder)),
        meta.get("normalization", "per_image"),
        bool(meta.get("bright_objects", False)),
        scale if scale is not None else float(meta.get("scale", 1.0)),
        source=str(weights),
    )


def checkpoint_embedder(path: Path, scale: float | None = None, device: str = "auto") -> Embedder:
    """The encoder of a fine-tuned checkpoint, with its run's image preparation (channels, normalisation,
    inversion) at its working scale: data.scale, or, for a run that sizes objects (data.object_size), the
    factor its network measures on each image, as inference does. `scale` overrides both."""
    from sslseg.segmentation.inference import working_factor

    module = load_model(path, device)
    d = module.cfg.data
    if d.object_size_um is not None and scale is None:
        raise ConfigError(
            f"{path}: this run sizes images by their pixel size (data.object_size_um); give the working "
            "scale with --scale"
        )
    embedder = Embedder(
        encoder_of(module.net).eval(),
        int(module.hparams["in_channels"]),
        d.normalization,
        d.bright_objects,
        scale if scale is not None else d.scale,
        source=str(path),
    )
    if scale is None and d.measured_object_size is not None:
        size, cfg, head = d.measured_object_size, module.cfg.inference, module.cfg.model.instance_head

        def measured(image: np.ndarray) -> float:
            return working_factor(module.net, image, image.shape[1:], cfg, size, head)[0]

        embedder.scale_of = measured
    return embedder
