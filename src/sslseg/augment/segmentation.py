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
    b = images.shape[0]
    dev = images.device
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
    if gamma > 0:
        out_i = random_gamma(out_i, gamma)
    if shuffle_channels and images.shape[1] > 1:
        order = torch.rand(b, images.shape[1], device=dev).argsort(dim=1)
        out_i = out_i.gather(1, order[:, :, None, None].expand_as(out_i))
    if intensity > 0:
        shape = (b, images.shape[1], 1, 1)
        gain = 1 + intensity * torch.randn(shape, device=dev)
        offset = intensity * torch.randn(shape, device=dev)
        out_i = out_i * gain + offset
    if noise > 0:
        out_i = out_i + noise * torch.randn_like(out_i)
    return out_i, (out_t[:, 0] if squeeze else out_t)


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
