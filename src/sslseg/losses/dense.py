"""Dense (location-level) losses and the matching they rest on: which locations of two views are positives,
by feature similarity (DenseCL, VICRegL) or by where they lie in the base image (PixPro, VICRegL).

Feature maps are handled as location sets B×N×C (`locations`, row-major over the h×w grid) and positions as
B×N×2 base-image (x, y) coordinates (`view_positions`), in the same order.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from sslseg.augment.views import cell_centres
from sslseg.distributed import gather_no_grad, world_size
from sslseg.losses.contrastive import info_nce
from sslseg.losses.noncontrastive import vicreg_loss


# -- feature maps and positions ------------------------------------------------------------------------------
def hypercolumn(features: list[torch.Tensor], stage: int) -> torch.Tensor:
    """Encoder maps from `stage` to the deepest, upsampled to `stage`'s grid and concatenated (B×ΣC×h×w).

    Matching on a finer grid than the deepest one must still train every deeper stage: the U-Net inherits them.
    """
    ref = features[stage]
    size = ref.shape[-2:]
    deeper = [
        F.interpolate(f, size=size, mode="bilinear", align_corners=False) for f in features[stage + 1 :]
    ]
    return torch.cat([ref, *deeper], dim=1)


def locations(x: torch.Tensor) -> torch.Tensor:
    """A B×C×h×w map as B×(h·w)×C location vectors (row-major)."""
    return x.flatten(2).transpose(1, 2)


def view_positions(boxes: torch.Tensor, flips: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Base-image (x, y) of each cell of a view's h×w grid, in `locations` order: B×(h·w)×2."""
    return cell_centres(boxes, flips, h, w).flatten(1, 2)


def cell_diagonal(boxes: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """Length of the diagonal of one h×w-grid cell of each view, in base-image pixels (B)."""
    return torch.hypot((boxes[:, 2] - boxes[:, 0]) / w, (boxes[:, 3] - boxes[:, 1]) / h)


def gather_locations(x: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """Rows `idx` (B×K) of each image's location set x (B×M×C): B×K×C."""
    return torch.gather(x, 1, idx[..., None].expand(-1, -1, x.shape[-1]))


# -- matching ------------------------------------------------------------------------------------------------
@torch.no_grad()
def similarity_match(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """For each location of a (B×N×C), the index of the location of b (B×M×C) of highest cosine similarity."""
    sim = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).transpose(1, 2)
    return sim.argmax(dim=2)


@torch.no_grad()
def nearest_pairs(dist: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Each location of view a matched to its nearest of view b (dist: B×N×M); the k closest such pairs of
    every image are kept (VICRegL's top-γ). Returns the indices into a and into b, each B×min(k, N)."""
    d, nn_idx = dist.min(dim=2)
    keep = d.topk(min(k, d.shape[1]), dim=1, largest=False).indices
    return keep, nn_idx.gather(1, keep)


@torch.no_grad()
def pixpro_positives(
    boxes1: torch.Tensor,
    flips1: torch.Tensor,
    boxes2: torch.Tensor,
    flips2: torch.Tensor,
    h: int,
    w: int,
    threshold: float = 0.7,
) -> torch.Tensor:
    """PixPro's positive pairs (B×N×N bool): cells of two views whose base-image centres are closer than
    `threshold` × the cell diagonal. Views differ in scale, so the coarser view's diagonal is used: every cell
    of the finer view inside the overlap then lies within half a diagonal of some coarser cell, a positive."""
    dist = torch.cdist(view_positions(boxes1, flips1, h, w), view_positions(boxes2, flips2, h, w))
    diag = torch.maximum(cell_diagonal(boxes1, h, w), cell_diagonal(boxes2, h, w))
    return dist < threshold * diag[:, None, None]


# -- losses ----------------------------------------------------------------------------------------------------
def densecl_dense_loss(
    q: torch.Tensor,
    k: torch.Tensor,
    q_features: torch.Tensor,
    k_features: torch.Tensor,
    queue: torch.Tensor | None,
    temperature: float = 0.2,
) -> torch.Tensor:
    """DenseCL's dense InfoNCE: each query location q (B×N×D) is positive with the key location k (B×M×D)
    whose backbone feature is most similar to its own (q_/k_features: B×N×C, B×M×C); negatives are `queue`."""
    idx = similarity_match(q_features, k_features)
    positives = gather_locations(k, idx)
    return info_nce(q.flatten(0, 1), positives.flatten(0, 1), queue, temperature)


def propagate(x: torch.Tensor, values: torch.Tensor, gamma: float = 2.0) -> torch.Tensor:
    """PixPro's pixel propagation: y_i = Σ_j max(cos(x_i, x_j), 0)^γ · v_j within each image (B×N×C),
    smoothing every pixel's transformed feature over the pixels that resemble it."""
    xn = F.normalize(x, dim=-1)
    weights = (xn @ xn.transpose(1, 2)).clamp_min(0).pow(gamma)
    return weights @ values


def pixel_consistency(y: torch.Tensor, target: torch.Tensor, positives: torch.Tensor) -> torch.Tensor:
    """PixPro's loss, one direction: −mean cos(y_i, t_j) over positive pairs (positives: B×N×M), so −1 at best;
    0 when no pair of locations overlaps. The target (B×M×C) gets no gradient; computed in float32.

    Under DDP the mean is over the positive pairs of all processes (processes hold different numbers of
    pairs): each divides its sum by the global count, times the number of processes that DDP averages over."""
    with torch.autocast(device_type=y.device.type, enabled=False):
        cos = F.normalize(y.float(), dim=-1) @ F.normalize(target.detach().float(), dim=-1).transpose(1, 2)
        pos = positives.float()
        count = gather_no_grad(pos.sum().reshape(1)).sum()
        return -(cos * pos).sum() * world_size() / count.clamp_min(1)


def vicregl_local_loss(
    z1: torch.Tensor,
    z2: torch.Tensor,
    dist: torch.Tensor,
    k: int,
    sim_weight: float = 25.0,
    var_weight: float = 25.0,
    cov_weight: float = 1.0,
    eps: float = 1e-4,
) -> torch.Tensor:
    """VICRegL's local criterion for one kind of matching (dist: B×N×M, by position or by embedding): each
    location of z1 (B×N×D) with its nearest of z2 (B×M×D), top-k pairs per image, plus the same from z2 to z1.
    Each direction is one VICReg loss over the B·k pairs, its variance and covariance taken over all of them."""
    terms = []
    for a, b, d in ((z1, z2, dist), (z2, z1, dist.transpose(1, 2))):
        ia, ib = nearest_pairs(d, k)
        pa, pb = gather_locations(a, ia).flatten(0, 1), gather_locations(b, ib).flatten(0, 1)
        terms.append(vicreg_loss(pa, pb, sim_weight, var_weight, cov_weight, eps))
    return terms[0] + terms[1]
