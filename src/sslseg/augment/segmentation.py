"""Joint image + target augmentation for fine-tuning, done on the whole batch on the training device."""

from __future__ import annotations

import torch


def augment_batch(
    images: torch.Tensor,
    targets: torch.Tensor,
    intensity: float = 0.1,
    noise: float = 0.03,
    gamma: float = 0.0,
    shuffle_channels: bool = False,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random flips and 90° rotations (same for image and target), per-channel gain/offset and noise;
    optionally a random gamma curve per image (`gamma`: sd of log γ) and a random order of its channels.

    `images` is B×C×H×W (normalised), `targets` B×H×W (classes) or B×K×H×W (dense regression targets).
    The geometric group (D4) keeps distance maps exact, unlike arbitrary rotations.
    """
    out_i, out_t = random_d4(images, targets)
    return photometric(out_i, intensity, noise, gamma, shuffle_channels), out_t


def random_d4(images: torch.Tensor, targets: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A random flip/quarter turn per sample, the same for its image and target (B×H×W or B×K×H×W);
    without targets the second result is an empty tensor. Quarter turns only for square images."""
    b = images.shape[0]
    dev = images.device
    if targets is None:
        targets = images.new_zeros((b, 0, *images.shape[-2:]))
    squeeze = targets.ndim == 3
    t = targets[:, None] if squeeze else targets
    square = images.shape[-1] == images.shape[-2]
    flips = torch.rand(b, 2, device=dev) < 0.5
    rots = torch.randint(0, 4 if square else 1, (b,), device=dev)
    # group samples by their (flip-h, flip-v, rotation) so each distinct transform runs once on a slice
    code = flips[:, 0].long() + 2 * flips[:, 1].long() + 4 * rots
    out_i, out_t = images.clone(), t.clone()
    for c in code.unique().tolist():
        idx = (code == c).nonzero(as_tuple=True)[0]
        xi, xt = images[idx], t[idx]
        dims = [d for d, on in ((-1, c & 1), (-2, c & 2)) if on]
        if dims:
            xi, xt = xi.flip(dims), xt.flip(dims)
        if c >> 2:
            xi, xt = torch.rot90(xi, c >> 2, (-2, -1)), torch.rot90(xt, c >> 2, (-2, -1))
        out_i[idx], out_t[idx] = xi, xt
    return out_i, (out_t[:, 0] if squeeze else out_t)


def cutmix(
    images: torch.Tensor, maps: torch.Tensor, area: tuple[float, float] = (0.25, 0.5)
) -> tuple[torch.Tensor, torch.Tensor]:
    """Paste into each sample of a B×C×H×W batch a random square box (a fraction `area` of it) of the next
    sample, into its image and its B×K×H×W maps alike (CutMix, Yun et al. 2019). A batch of one is
    returned unchanged."""
    b, _, h, w = images.shape
    if b < 2:
        return images, maps
    dev = images.device
    side = torch.empty(b, device=dev).uniform_(*area).sqrt()
    bh, bw = (side * h).long().clamp(min=1), (side * w).long().clamp(min=1)
    y0 = (torch.rand(b, device=dev) * (h - bh + 1)).long()
    x0 = (torch.rand(b, device=dev) * (w - bw + 1)).long()
    ys, xs = torch.arange(h, device=dev), torch.arange(w, device=dev)
    inside_y = (ys[None] >= y0[:, None]) & (ys[None] < (y0 + bh)[:, None])
    inside_x = (xs[None] >= x0[:, None]) & (xs[None] < (x0 + bw)[:, None])
    box = (inside_y[:, :, None] & inside_x[:, None, :])[:, None]
    donor = torch.roll(torch.arange(b, device=dev), 1)
    return torch.where(box, images[donor], images), torch.where(box, maps[donor], maps)


def photometric(
    images: torch.Tensor,
    intensity: float = 0.1,
    noise: float = 0.03,
    gamma: float = 0.0,
    shuffle_channels: bool = False,
) -> torch.Tensor:
    """Per-image intensity changes of a B×C×H×W batch (targets unchanged): an optional random gamma curve
    (`gamma`: sd of log γ) and channel order, then per-channel gain/offset (sd `intensity`) and noise."""
    b, c = images.shape[:2]
    dev = images.device
    if gamma > 0:
        images = random_gamma(images, gamma)
    if shuffle_channels and c > 1:
        order = torch.rand(b, c, device=dev).argsort(dim=1)
        images = images.gather(1, order[:, :, None, None].expand_as(images))
    if intensity > 0:
        gain = 1 + intensity * torch.randn((b, c, 1, 1), device=dev)
        offset = intensity * torch.randn((b, c, 1, 1), device=dev)
        images = images * gain + offset
    if noise > 0:
        images = images + noise * torch.randn_like(images)
    return images


def random_gamma(images: torch.Tensor, sd: float) -> torch.Tensor:
    """Bend each image's intensities by a gamma curve, γ = exp(N(0, sd)), so that dim objects come out
    closer to bright ones (γ < 1) or further below them (γ > 1); a linear gain keeps their ratio.

    The curve acts on the image's own range, the same for all its channels, and the mean and standard
    deviation of every channel are restored afterwards, as the per-image normalisation at inference would."""
    b = images.shape[0]
    flat = images.reshape(b, -1)
    lo = flat.amin(dim=1).view(b, 1, 1, 1)
    span = (flat.amax(dim=1).view(b, 1, 1, 1) - lo).clamp_min(1e-6)
    g = torch.exp(sd * torch.randn(b, 1, 1, 1, device=images.device))
    bent = ((images - lo) / span).clamp(0, 1) ** g
    mean, std = images.mean(dim=(2, 3), keepdim=True), images.std(dim=(2, 3), keepdim=True)
    bent_mean, bent_std = bent.mean(dim=(2, 3), keepdim=True), bent.std(dim=(2, 3), keepdim=True)
    return (bent - bent_mean) / bent_std.clamp_min(1e-6) * std + mean
