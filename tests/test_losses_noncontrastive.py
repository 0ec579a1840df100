"""Hand-computed values and invariances of the BYOL, Barlow Twins and VICReg losses, and exact DDP gradients."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from sslseg.losses import barlow_twins_loss, byol_loss, vicreg_loss, vicreg_terms

# Columns of a 4×4 Hadamard matrix without the all-ones one: zero mean, entries ±1, mutually orthogonal,
# so biased variance 1 and unbiased variance 4/3 per column, and zero correlation between columns.
A = torch.tensor([1.0, -1.0, 1.0, -1.0])
B = torch.tensor([1.0, 1.0, -1.0, -1.0])
C = torch.tensor([1.0, -1.0, -1.0, 1.0])
LAM = 0.0051


# -- BYOL ----------------------------------------------------------------------------------------------------
def test_byol_loss_is_0_parallel_2_orthogonal_4_opposite():
    p = torch.tensor([[1.0, 0.0]])
    assert byol_loss(p, torch.tensor([[3.0, 0.0]])).item() == pytest.approx(0.0, abs=1e-6)
    assert byol_loss(p, torch.tensor([[0.0, 2.0]])).item() == pytest.approx(2.0)
    assert byol_loss(p, torch.tensor([[-5.0, 0.0]])).item() == pytest.approx(4.0)


def test_byol_loss_is_the_batch_mean_and_scale_invariant():
    p = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
    z = torch.tensor([[1.0, 0.0], [0.0, 1.0]])  # per-sample 0 and 2 → mean 1
    assert byol_loss(p, z).item() == pytest.approx(1.0)
    torch.manual_seed(0)
    p, z = torch.randn(6, 5), torch.randn(6, 5)
    scale = torch.rand(6, 1) + 0.1
    assert byol_loss(p * scale, z * 7.0).item() == pytest.approx(byol_loss(p, z).item(), rel=1e-5)


def test_byol_target_gets_no_gradient():
    p, z = torch.randn(4, 3, requires_grad=True), torch.randn(4, 3, requires_grad=True)
    byol_loss(p, z).backward()
    assert p.grad is not None and z.grad is None


# -- Barlow Twins --------------------------------------------------------------------------------------------
def test_barlow_twins_is_0_for_identical_decorrelated_standardised_embeddings():
    z = torch.stack([A, B, C], dim=1)  # C = I: every diagonal term 1, every off-diagonal 0
    assert barlow_twins_loss(z, z.clone(), LAM).item() == pytest.approx(0.0, abs=1e-6)


def test_barlow_twins_hand_computed_4x2():
    # z1 = [a, b], z2 = [a, a + b]; a + b = [2, 0, 0, -2] standardises to (a + b)/√2.
    # C = z1ᵀ z2 / 4 = [[a·a, a·(a+b)/√2], [b·a, b·(a+b)/√2]] / 4 = [[1, 1/√2], [0, 1/√2]].
    # Loss = (1 − 1)² + (1 − 1/√2)² + λ·((1/√2)² + 0²) = 0.0857864 + λ/2 = 0.0883364.
    z1 = torch.stack([A, B], dim=1)
    z2 = torch.stack([A, A + B], dim=1)
    expected = (1 - 1 / math.sqrt(2)) ** 2 + LAM / 2
    assert barlow_twins_loss(z1, z2, LAM).item() == pytest.approx(expected, abs=1e-4)
    assert barlow_twins_loss(z1, z2, 0.0).item() == pytest.approx((1 - 1 / math.sqrt(2)) ** 2, abs=1e-4)
    # C → Cᵀ when the views swap, which leaves both sums unchanged.
    assert barlow_twins_loss(z2, z1, LAM).item() == pytest.approx(expected, abs=1e-4)


def test_barlow_twins_ignores_per_dimension_shift_and_scale():
    torch.manual_seed(0)
    z1, z2 = torch.randn(16, 5), torch.randn(16, 5)
    moved = z2 * (torch.rand(5) * 10 + 0.1) + torch.randn(5) * 100
    assert barlow_twins_loss(z1, moved).item() == pytest.approx(barlow_twins_loss(z1, z2).item(), rel=1e-4)


def test_barlow_twins_collapsed_embeddings_cost_one_per_dimension_and_stay_finite():
    z = torch.ones(8, 6, requires_grad=True)  # zero variance: standardises to 0, so C = 0 and Σ(1 − 0)² = D
    loss = barlow_twins_loss(z, z)
    loss.backward()
    assert loss.item() == pytest.approx(6.0) and torch.isfinite(z.grad).all()


def test_barlow_twins_needs_two_samples():
    with pytest.raises(ValueError, match="at least 2 samples"):
        barlow_twins_loss(torch.randn(1, 4), torch.randn(1, 4))


# -- VICReg --------------------------------------------------------------------------------------------------
def test_vicreg_terms_vanish_for_identical_spread_decorrelated_embeddings():
    z = torch.stack([A, B, C], dim=1) * 3  # std 3·√(4/3) ≥ 1, columns orthogonal
    t = vicreg_terms(z, z.clone())
    assert (t.invariance.item(), t.variance.item(), t.covariance.item()) == pytest.approx((0, 0, 0), abs=1e-6)


def test_vicreg_invariance_is_the_mse():
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 5), torch.randn(8, 5)
    assert vicreg_terms(z1, z2).invariance.item() == pytest.approx(F.mse_loss(z1, z2).item())


def test_vicreg_hand_computed_example():
    # z1 = [a, b] (±1 entries, unbiased var 4/3 → std 1.155 ≥ 1, Cov = 0); z2 = z1/2 (var 1/3, Cov = 0).
    # s = mean((z1/2)²) = 1/4; v(z1) = 0, v(z2) = 1 − √(1/3 + 1e-4) = 0.4225631; c = 0.
    # Loss = 25·0.25 + 25·0.4225631 + 1·0 = 16.8140784.
    z1 = torch.stack([A, B], dim=1)
    t = vicreg_terms(z1, z1 / 2)
    assert t.invariance.item() == pytest.approx(0.25)
    assert t.variance.item() == pytest.approx(1 - math.sqrt(1 / 3 + 1e-4), abs=1e-6)
    assert t.covariance.item() == pytest.approx(0.0, abs=1e-7)
    assert vicreg_loss(z1, z1 / 2).item() == pytest.approx(16.8140784, abs=1e-4)


def test_vicreg_covariance_of_duplicated_dimensions():
    # z = [a, a]: Cov = [[4/3, 4/3], [4/3, 4/3]]; c = (2 · (4/3)²) / D = (32/9) / 2 = 16/9 per branch.
    z = torch.stack([A, A], dim=1)
    t = vicreg_terms(z, z.clone())
    assert t.covariance.item() == pytest.approx(32 / 9, rel=1e-6)
    assert vicreg_loss(z, z.clone(), cov_weight=2.0).item() == pytest.approx(64 / 9, rel=1e-6)


def test_vicreg_collapsed_embeddings_pay_the_full_variance_hinge():
    z = torch.zeros(8, 4)  # std √ε = 0.01 in every dimension of both branches: v = 2 · 0.99
    assert vicreg_terms(z, z).variance.item() == pytest.approx(1.98, abs=1e-6)


def test_noncontrastive_losses_run_in_float32_under_autocast():
    torch.manual_seed(0)
    z1, z2 = torch.randn(8, 16), torch.randn(8, 16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        bt, vr = barlow_twins_loss(z1, z2), vicreg_loss(z1, z2)
    assert bt.dtype == vr.dtype == torch.float32
    assert bt.item() == pytest.approx(barlow_twins_loss(z1, z2).item(), rel=1e-6)


# -- DDP: the global-batch loss gives the single-process gradient ---------------------------------------------
def _ddp_worker(rank: int, world: int, init: str, x: torch.Tensor, w0: torch.Tensor, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        grads = []
        for loss_fn in (barlow_twins_loss, vicreg_loss):
            w = w0.clone().requires_grad_(True)  # a "parameter" shared by both processes
            local = x.chunk(world)[rank] @ w
            z1, z2 = local.chunk(2, dim=1)
            loss_fn(z1, z2).backward()
            dist.all_reduce(w.grad)  # what DDP does: average the parameter gradients
            grads.append(w.grad / world)
        if rank == 0:
            torch.save(grads, out)
    finally:
        dist.destroy_process_group()


def test_global_batch_losses_give_the_single_process_gradient_under_ddp(tmp_path):
    torch.manual_seed(0)
    x, w0 = torch.randn(8, 5), torch.randn(5, 6)
    out = tmp_path / "grads.pt"
    mp.spawn(_ddp_worker, args=(2, f"file://{tmp_path / 'init'}", x, w0, str(out)), nprocs=2)
    ddp = torch.load(out)
    for loss_fn, g in zip((barlow_twins_loss, vicreg_loss), ddp, strict=True):
        w = w0.clone().requires_grad_(True)
        z1, z2 = (x @ w).chunk(2, dim=1)
        loss_fn(z1, z2).backward()
        torch.testing.assert_close(g, w.grad, rtol=1e-4, atol=1e-6)
