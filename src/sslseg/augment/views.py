"""Self-supervised views, made for a whole batch at once on the training device.

Each view is a random resized crop of a base crop (native resolution), flipped, colour/intensity-jittered,
blurred, optionally solarised and noised, then standardised per image exactly as fine-tuning inputs are.
Every view carries its crop box and flips so dense methods can match the regions two views share.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import kornia.filters as KF
import torch
from torch import nn
from torchvision.ops import roi_align

from sslseg.config import ViewsConfig

# Modality defaults for the fields a ViewsConfig leaves unset (None). Microscopy has no preferred
# orientation (vertical flips), fluorescence and brightfield have no meaningful hue or saturation.
PRESETS: dict[str, dict[str, float]] = {
    "generic": dict(
        vflip=0.5, jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, gray_p=0.2, blur_p=0.5
    ),
    "fluorescence": dict(
        vflip=0.5, jitter_p=0.8, brightness=0.6, contrast=0.8, saturation=0.0, hue=0.0, gray_p=0.0, blur_p=0.5
    ),
    "brightfield": dict(
        vflip=0.5, jitter_p=0.8, brightness=0.4, contrast=0.6, saturation=0.0, hue=0.0, gray_p=0.0, blur_p=0.5
    ),
    "he": dict(
        vflip=0.5,
        jitter_p=0.8,
        brightness=0.3,
        contrast=0.3,
        saturation=0.3,
        hue=0.05,
        gray_p=0.1,
        blur_p=0.5,
    ),
    "dermoscopy": dict(
        vflip=0.5, jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, gray_p=0.2, blur_p=0.5
    ),
}
_NOISE_DEFAULT = {"fluorescence": 0.02, "brightfield": 0.02}
_RGB_TO_YIQ = torch.tensor([[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]])


def resolve_views(cfg: ViewsConfig) -> ViewsConfig:
    """Fill the unset fields of a views config from its modality preset."""
    preset = PRESETS[cfg.preset]
    updates = {k: v for k, v in preset.items() if getattr(cfg, k) is None}
    if cfg.noise_std is None:
        updates["noise_std"] = _NOISE_DEFAULT.get(cfg.preset, 0.0)
    return cfg.model_copy(update=updates)


@dataclass
class Views:
    """N views of one batch: images B×C×V×V, crop boxes B×4 (x0, y0, x1, y1 in base pixels), flips B×2."""

    images: list[torch.Tensor]
    boxes: list[torch.Tensor]
    flips: list[torch.Tensor]


def sample_boxes(
    n: int, base: int, scale: tuple[float, float], ratio: tuple[float, float], device: torch.device
) -> torch.Tensor:
    """Random-resized-crop boxes (n×4, x0 y0 x1 y1) inside a base×base square."""
    area = torch.empty(n, device=device).uniform_(*scale) * base * base
    log_r = torch.empty(n, device=device).uniform_(math.log(ratio[0]), math.log(ratio[1]))
    r = log_r.exp()
    w = (area * r).sqrt().clamp(4, base)
    h = (area / r).sqrt().clamp(4, base)
    x0 = torch.rand(n, device=device) * (base - w)
    y0 = torch.rand(n, device=device) * (base - h)
    return torch.stack([x0, y0, x0 + w, y0 + h], dim=1)


def cell_centres(boxes: torch.Tensor, flips: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Base-image (x, y) of the centre of each cell of an h×w feature grid of a view: B×h×w×2."""
    fy = (torch.arange(h, device=boxes.device) + 0.5) / h
    fx = (torch.arange(w, device=boxes.device) + 0.5) / w
    fx = torch.where(flips[:, :1], 1 - fx, fx)  # B×w
    fy = torch.where(flips[:, 1:2], 1 - fy, fy)  # B×h
    x = boxes[:, 0:1] + fx * (boxes[:, 2:3] - boxes[:, 0:1])
    y = boxes[:, 1:2] + fy * (boxes[:, 3:4] - boxes[:, 1:2])
    return torch.stack([x[:, None, :].expand(-1, h, -1), y[:, :, None].expand(-1, -1, w)], dim=-1)


def crop_views(base: torch.Tensor, boxes: torch.Tensor, flips: torch.Tensor, size: int) -> torch.Tensor:
    """The geometric part of a view: crop each box of the base crops to size×size, then flip (no colour)."""
    b = base.shape[0]
    rois = torch.cat(
        [torch.arange(b, device=base.device, dtype=base.dtype)[:, None], boxes.to(base.dtype)], 1
    )
    # one bilinear sample per output pixel: crops shrink at most a few-fold, so aliasing stays mild
    x = roi_align(base, rois, output_size=(size, size), spatial_scale=1.0, sampling_ratio=1, aligned=True)
    for axis, dim in ((0, -1), (1, -2)):
        idx = flips[:, axis].nonzero(as_tuple=True)[0]
        x[idx] = x[idx].flip(dim)
    return x


def standardize(x: torch.Tensor) -> torch.Tensor:
    """Per-image, per-channel zero mean and unit variance, as fine-tuning normalises its inputs."""
    mean = x.mean(dim=(-2, -1), keepdim=True)
    std = x.std(dim=(-2, -1), keepdim=True).clamp_min(1e-3)
    return (x - mean) / std


class ViewMaker(nn.Module):
    """Turns base crops B×C×S×S in [0, 1] into augmented, standardised views (no learnable parameters)."""

    def __init__(self, cfg: ViewsConfig, channels: int) -> None:
        super().__init__()
        self.cfg = resolve_views(cfg)
        self.channels = channels

    def _bernoulli(self, p: float, n: int, device: torch.device) -> torch.Tensor:
        return torch.rand(n, device=device) < p

    def _jitter(self, x: torch.Tensor) -> torch.Tensor:
        """Brightness, contrast and, for RGB, saturation, hue and to-gray, each drawn per image.

        For RGB, brightness, saturation, hue and gray are one linear map per image in YIQ space (scale
        luma, scale and rotate chroma), applied as a single batched matrix product: far cheaper than
        HSV round trips.
        """
        c, b, dev = self.cfg, x.shape[0], x.device
        on = self._bernoulli(c.jitter_p or 0.0, b, dev)

        def factor(strength: float, center: float = 1.0) -> torch.Tensor:
            f = torch.empty(b, device=dev).uniform_(center - strength, center + strength).clamp_min(0)
            return torch.where(on, f, torch.full_like(f, center))

        bright = factor(c.brightness or 0.0)
        if self.channels == 3:
            sat = factor(c.saturation or 0.0)
            sat = torch.where(self._bernoulli(c.gray_p or 0.0, b, dev), torch.zeros_like(sat), sat)
            theta = factor(c.hue or 0.0, center=0.0) * torch.where(torch.rand(b, device=dev) < 0.5, -1.0, 1.0)
            theta = theta * 2 * math.pi
            cos, sin, zero = sat * theta.cos(), sat * theta.sin(), torch.zeros_like(sat)
            chroma = torch.stack(
                [
                    torch.stack([torch.ones_like(sat), zero, zero], -1),
                    torch.stack([zero, cos, -sin], -1),
                    torch.stack([zero, sin, cos], -1),
                ],
                dim=1,
            )  # B×3×3 in YIQ
            yiq = _RGB_TO_YIQ.to(dev, x.dtype)
            m = bright[:, None, None] * (torch.linalg.inv(yiq) @ chroma @ yiq)
            x = torch.einsum("bij,bjhw->bihw", m, x)
        else:
            x = x * bright[:, None, None, None]
        mean = x.mean(dim=(-3, -2, -1), keepdim=True)
        x = (x - mean) * factor(c.contrast or 0.0)[:, None, None, None] + mean
        return x.clamp(0, 1)

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        c, b, dev = self.cfg, x.shape[0], x.device
        idx = self._bernoulli(c.blur_p or 0.0, b, dev).nonzero(as_tuple=True)[0]
        if len(idx) == 0:
            return x
        sigma = torch.empty(len(idx), device=dev).uniform_(*c.blur_sigma)
        k = 2 * math.ceil(3 * c.blur_sigma[1]) + 1
        x = x.clone()
        x[idx] = KF.gaussian_blur2d(x[idx], (k, k), torch.stack([sigma, sigma], dim=1))
        return x

    def one_view(self, base: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """One augmented view of every base crop: (images, boxes, flips)."""
        c = self.cfg
        b, _, s, _ = base.shape
        dev = base.device
        boxes = sample_boxes(b, s, c.scale, c.ratio, dev)
        flips = torch.stack(
            [self._bernoulli(c.hflip, b, dev), self._bernoulli(c.vflip or 0.0, b, dev)], dim=1
        )
        x = crop_views(base, boxes, flips, c.size)
        x = self._jitter(x)
        x = self._blur(x)
        if c.solarize_p > 0:
            sol = self._bernoulli(c.solarize_p, b, dev)[:, None, None, None]
            x = torch.where(sol & (x > 0.5), 1 - x, x)
        if c.noise_std and c.noise_std > 0:
            x = x + c.noise_std * torch.randn_like(x)
        return standardize(x), boxes, flips

    @torch.no_grad()
    def forward(self, base: torch.Tensor, n_views: int = 2) -> Views:
        base = base.float()
        with torch.autocast(base.device.type, enabled=False):  # views in float32 under mixed precision too
            parts = [self.one_view(base) for _ in range(n_views)]
        return Views([p[0] for p in parts], [p[1] for p in parts], [p[2] for p in parts])
