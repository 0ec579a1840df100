"""Dense matching and losses against values derived by hand on 2-location examples, plus geometry checks:
an identical view matches the diagonal, a horizontally flipped one the mirrored cells."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from sslseg.losses.dense import (
    cell_diagonal,
    densecl_dense_loss,
    hypercolumn,
    locations,
    nearest_pairs,
    pixel_consistency,
    pixpro_positives,
    propagate,
    similarity_match,
    vicregl_local_loss,
    view_positions,
)
from sslseg.losses.noncontrastive import vicreg_loss

BOX = torch.tensor([[0.0, 0.0, 32.0, 32.0]])
NO_FLIP = torch.tensor([[False, False]])
H_FLIP = torch.tensor([[True, False]])


def mirrored(h: int, w: int) -> torch.Tensor:
    """Index of cell (r, w − 1 − c) for every cell (r, c), row-major."""
    return torch.arange(h * w).view(h, w).flip(1).flatten()


# -- maps and geometry ---------------------------------------------------------------------------------------
def test_hypercolumn_upsamples_deeper_stages_onto_the_chosen_grid():
    feats = [torch.randn(2, c, s, s) for c, s in ((1, 32), (4, 16), (8, 8), (16, 4))]
    hc = hypercolumn(feats, 2)
    assert hc.shape == (2, 24, 8, 8)
    assert torch.equal(hc[:, :8], feats[2])
    # a constant deeper map stays constant when upsampled
    feats[3] = torch.ones(2, 16, 4, 4)
    assert torch.allclose(hypercolumn(feats, 2)[:, 8:], torch.ones(2, 16, 8, 8))
    assert torch.equal(hypercolumn(feats, 3), feats[3])


def test_locations_and_positions_share_row_major_order():
    x = torch.arange(6.0).view(1, 1, 2, 3)
    assert locations(x)[0, :, 0].tolist() == [0, 1, 2, 3, 4, 5]
    # a 2×3 grid over a 30×20 box at (10, 0): cell centres at x = 15, 25, 35 and y = 5, 15
    pos = view_positions(torch.tensor([[10.0, 0.0, 40.0, 20.0]]), NO_FLIP, 2, 3)[0]
    assert pos.tolist() == [[15, 5], [25, 5], [35, 5], [15, 15], [25, 15], [35, 15]]
    assert cell_diagonal(torch.tensor([[10.0, 0.0, 40.0, 20.0]]), 2, 3).item() == pytest.approx(
        math.hypot(10, 10)
    )


def test_geometric_matching_is_diagonal_for_an_identical_view_and_mirrored_for_a_flipped_one():
    h = w = 3
    p = view_positions(BOX, NO_FLIP, h, w)
    ia, ib = nearest_pairs(torch.cdist(p, p), k=9)
    assert torch.equal(ib[0], ia[0])
    pf = view_positions(BOX, H_FLIP, h, w)
    ia, ib = nearest_pairs(torch.cdist(p, pf), k=9)
    assert torch.equal(ib[0], mirrored(h, w)[ia[0]])


def test_nearest_pairs_keeps_the_k_closest():
    # location 0 → nearest 1 at distance 3, location 1 → nearest 0 at 1, location 2 → nearest 2 at 2
    dist = torch.tensor([[[5.0, 3.0, 9.0], [1.0, 4.0, 7.0], [8.0, 6.0, 2.0]]])
    ia, ib = nearest_pairs(dist, k=2)
    assert ia.tolist() == [[1, 2]] and ib.tolist() == [[0, 2]]
    ia, ib = nearest_pairs(dist, k=10)  # clamped to the number of locations
    assert sorted(zip(ia[0].tolist(), ib[0].tolist(), strict=True)) == [(0, 1), (1, 0), (2, 2)]


def test_pixpro_positives_identity_flip_shift_and_scale():
    eye = torch.eye(4, dtype=torch.bool)
    assert torch.equal(pixpro_positives(BOX, NO_FLIP, BOX, NO_FLIP, 2, 2)[0], eye)
    flipped = pixpro_positives(BOX, NO_FLIP, BOX, H_FLIP, 2, 2)[0]
    assert torch.equal(flipped, eye[:, mirrored(2, 2)])
    # view 2 shifted right by half the box: centres x = 8, 24 (view 1) and 24, 40 (view 2); the diagonal is
    # √(16² + 16²) = 22.6, threshold 15.8: only view-1 column 1 meets view-2 column 0 (distance 0), while
    # view-1 column 0 is 16 away from it
    shifted = pixpro_positives(BOX, NO_FLIP, torch.tensor([[16.0, 0.0, 48.0, 32.0]]), NO_FLIP, 2, 2)[0]
    assert shifted.nonzero().tolist() == [[1, 0], [3, 2]]
    # view 2 twice as large: its diagonal 45.3 sets the threshold 31.7. View-2 cell (16, 16) is ≤ 11.3 from
    # all four view-1 cells; (48, 16) is 25.3 from (24, 8) and (24, 24) but 40.8 from the other two; (16, 48)
    # likewise from (8, 24) and (24, 24); (48, 48) is ≥ 33.9 from all. With view 1's own diagonal (threshold
    # 15.8) the 25.3 pairs would be lost.
    large = pixpro_positives(BOX, NO_FLIP, torch.tensor([[0.0, 0.0, 64.0, 64.0]]), NO_FLIP, 2, 2)[0]
    assert large[:, 0].all() and not large[:, 3].any()
    assert large[:, 1].tolist() == [False, True, False, True]
    assert large[:, 2].tolist() == [False, False, True, True]


# -- DenseCL ---------------------------------------------------------------------------------------------------
def test_similarity_match_picks_the_argmax_cosine_not_the_largest_dot_product():
    a = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    b = torch.tensor([[[0.0, 2.0], [30.0, 30.0], [1.0, 0.0]]])
    # a0: cosines 0, 0.71, 1 (dot products 0, 30, 1) → 2;  a1: cosines 1, 0.71, 0 → 0
    assert similarity_match(a, b).tolist() == [[2, 0]]


def test_densecl_dense_loss_by_hand():
    q = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    k = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    # backbone features swap the locations: q0 ↔ k1, q1 ↔ k0, so both positives have cosine 1
    qf = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    kf = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    queue = torch.tensor([[1.0, 0.0]])
    # T = 0.5: q0 logits [1, 1]/T → log 2; q1 logits [1, 0]/T → log(1 + e^−2); mean of the two
    expected = (math.log(2) + math.log(1 + math.exp(-2))) / 2
    assert densecl_dense_loss(q, k, qf, kf, queue, 0.5).item() == pytest.approx(expected, rel=1e-6)
    # matched by position instead, the positives are orthogonal: q0 logits [0, 2] → log(1 + e²), q1 logits
    # [0, 0] → log 2; since log(1 + e²) − log(1 + e⁻²) = 2, exactly 1 more than above
    assert densecl_dense_loss(q, k, qf, qf, queue, 0.5).item() == pytest.approx(expected + 1, rel=1e-6)
    # no queue: a single logit per location, so a perfect match costs nothing
    assert densecl_dense_loss(q, k, qf, kf, None, 0.5).item() == pytest.approx(0.0, abs=1e-7)


# -- PixPro ----------------------------------------------------------------------------------------------------
def test_propagation_by_hand():
    v = torch.eye(2)[None]
    # cos(x0, x1) = 1/√2, so s = (1/√2)² = 1/2 off the diagonal: y = [[1, ½], [½, 1]]
    x = torch.tensor([[[1.0, 0.0], [1.0, 1.0]]])
    assert torch.allclose(propagate(x, v, 2.0), torch.tensor([[[1.0, 0.5], [0.5, 1.0]]]))
    # γ = 1: the weight is the cosine itself
    r = 1 / math.sqrt(2)
    assert torch.allclose(propagate(x, v, 1.0), torch.tensor([[[1.0, r], [r, 1.0]]]))
    # orthogonal or opposite pixels do not propagate to each other (negative cosines are clipped)
    assert torch.allclose(propagate(torch.tensor([[[1.0, 0.0], [-1.0, 0.0]]]), v, 2.0), v)
    assert torch.allclose(propagate(torch.eye(2)[None], v, 2.0), v)


def test_pixel_consistency_by_hand():
    y = torch.tensor([[[1.0, 0.0], [0.0, 1.0]]])
    eye = torch.eye(2, dtype=torch.bool)[None]
    assert pixel_consistency(y, 3 * y, eye).item() == pytest.approx(-1.0)  # its minimum: identical directions
    assert pixel_consistency(y, -y, eye).item() == pytest.approx(1.0)
    assert pixel_consistency(y, y.flip(1), eye).item() == pytest.approx(0.0)  # orthogonal
    # cosines 1/√2 and 1 on the two positive pairs: −(1/√2 + 1)/2
    t = torch.tensor([[[1.0, 1.0], [0.0, 1.0]]])
    assert pixel_consistency(y, t, eye).item() == pytest.approx(-(1 / math.sqrt(2) + 1) / 2)
    # only positive pairs count: (y1, t0) alone has cosine 1/√2; none at all gives 0
    cross = torch.tensor([[[False, False], [True, False]]])
    assert pixel_consistency(y, t, cross).item() == pytest.approx(-1 / math.sqrt(2))
    assert pixel_consistency(y, t, torch.zeros_like(eye)).item() == 0.0


def test_pixel_consistency_sends_no_gradient_into_the_target():
    y = torch.randn(1, 3, 4, requires_grad=True)
    t = torch.randn(1, 3, 4, requires_grad=True)
    pixel_consistency(y, t, torch.ones(1, 3, 3, dtype=torch.bool)).backward()
    assert y.grad is not None and t.grad is None


def _pixpro_worker(rank: int, world: int, init: str, y: torch.Tensor, t: torch.Tensor, pos, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        mine = y.chunk(world)[rank].clone().requires_grad_(True)
        loss = pixel_consistency(mine, t.chunk(world)[rank], pos.chunk(world)[rank])
        loss.backward()
        loss = loss.detach()
        dist.all_reduce(loss)
        grad = [torch.empty_like(mine.grad) for _ in range(world)]
        dist.all_gather(grad, mine.grad / world)  # DDP averages over the processes
        if rank == 0:
            torch.save({"loss": loss / world, "grad": torch.cat(grad)}, out)
    finally:
        dist.destroy_process_group()


def test_pixel_consistency_under_ddp_averages_over_all_positive_pairs(tmp_path):
    # image 0 has 1 positive pair, image 1 has 4: per-process means would weigh them 1:1, not 1:4
    torch.manual_seed(0)
    y, t = torch.randn(2, 2, 3), torch.randn(2, 2, 3)
    pos = torch.tensor([[[True, False], [False, False]], [[True, True], [True, True]]])
    out = tmp_path / "ddp.pt"
    mp.spawn(_pixpro_worker, args=(2, f"file://{tmp_path / 'init'}", y, t, pos, str(out)), nprocs=2)
    ddp = torch.load(out)
    single = y.clone().requires_grad_(True)
    loss = pixel_consistency(single, t, pos)
    loss.backward()
    assert ddp["loss"].item() == pytest.approx(loss.item(), rel=1e-6)
    torch.testing.assert_close(ddp["grad"], single.grad)


# -- VICRegL ---------------------------------------------------------------------------------------------------
def test_vicregl_local_loss_by_hand():
    # one image, two locations, 1-d embeddings (so no covariance): z = [0, 1] in both views, matched on the
    # diagonal. Invariance 0; each view's variance over the 2 pairs is ½ (unbiased), its hinge 1 − √(½ + ε);
    # per direction 25·2·hinge, and two directions.
    z = torch.tensor([[[0.0], [1.0]]])
    dist = torch.tensor([[[0.0, 1.0], [1.0, 0.0]]])
    expected = 2 * 25 * 2 * (1 - math.sqrt(0.5 + 1e-4))
    assert vicregl_local_loss(z, z, dist, k=2).item() == pytest.approx(expected, rel=1e-6)
    # spread apart ([0, 2]: variance 2 > 1) the hinge vanishes and so does the loss
    assert vicregl_local_loss(2 * z, 2 * z, dist, k=2).item() == pytest.approx(0.0, abs=1e-7)


def test_vicregl_local_loss_is_vicreg_over_matched_pairs_in_both_directions():
    torch.manual_seed(0)
    z1, z2 = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    # view-1 location i is nearest view-2 location (i + 1) % 3, and the reverse for view 2
    perm = torch.tensor([1, 2, 0])
    dist = torch.ones(2, 3, 3)
    dist[:, torch.arange(3), perm] = 0.0
    forward = vicreg_loss(z1.flatten(0, 1), z2[:, perm].flatten(0, 1))
    inv = torch.argsort(perm)
    backward = vicreg_loss(z2.flatten(0, 1), z1[:, inv].flatten(0, 1))
    assert vicregl_local_loss(z1, z2, dist, k=3).item() == pytest.approx(
        (forward + backward).item(), rel=1e-5
    )


def test_vicregl_geometric_pairs_make_a_flipped_copy_invariant():
    # view 2 is view 1 flipped horizontally, embeddings flipped alike: every matched pair is identical
    torch.manual_seed(0)
    boxes, h, w = BOX.expand(4, -1), 3, 3
    z1 = torch.randn(4, h * w, 5)
    z2 = z1[:, mirrored(h, w)]
    p1 = view_positions(boxes, NO_FLIP.expand(4, -1), h, w)
    p2 = view_positions(boxes, H_FLIP.expand(4, -1), h, w)
    loss = vicregl_local_loss(z1, z2, torch.cdist(p1, p2), k=9, var_weight=0.0, cov_weight=0.0)
    assert loss.item() == pytest.approx(0.0, abs=1e-6)
    # against the unflipped geometry the same embeddings disagree
    wrong = vicregl_local_loss(z1, z2, torch.cdist(p1, p1), k=9, var_weight=0.0, cov_weight=0.0)
    assert wrong.item() > 1.0
