"""NT-Xent and InfoNCE against hand-computed values, and NT-Xent under 2-process DDP (gloo) against one
process holding the same global batch: same loss, same gradient, negatives gathered across processes."""

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from sslseg.losses import info_nce, nt_xent


def nt_xent_by_definition(z1: torch.Tensor, z2: torch.Tensor, t: float) -> float:
    """-log( exp(s_ij/t) / Σ_{k≠i} exp(s_ik/t) ) averaged over all 2N anchors, written as loops."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n2 = z.shape[0]
    total = 0.0
    for i in range(n2):
        j = (i + n2 // 2) % n2
        denom = sum(math.exp(float(z[i] @ z[k]) / t) for k in range(n2) if k != i)
        total += -math.log(math.exp(float(z[i] @ z[j]) / t) / denom)
    return total / n2


def test_nt_xent_equals_its_definition():
    torch.manual_seed(0)
    z1, z2 = torch.randn(5, 7), torch.randn(5, 7)
    assert nt_xent(z1, z2, 0.3).item() == pytest.approx(nt_xent_by_definition(z1, z2, 0.3), rel=1e-5)


def test_nt_xent_two_pairs_by_hand():
    # views a=[1,0], a'=[1,0], b=[0,1], b'=[0,1]; for anchor a: positive sim 1, negatives b, b' sim 0.
    # loss = -log(e^{1/t} / (e^{1/t} + 2)) for every anchor
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    t = 0.5
    expected = -math.log(math.exp(1 / t) / (math.exp(1 / t) + 2))
    assert nt_xent(z1, z1.clone(), t).item() == pytest.approx(expected, rel=1e-6)


def test_info_nce_by_hand():
    # q = k = [1,0]; one queued negative [0,1]: loss = -log(e^{1/t} / (e^{1/t} + e^0))
    q = torch.tensor([[2.0, 0.0]])
    t = 0.2
    loss = info_nce(q, q.clone(), torch.tensor([[0.0, 1.0]]), t)
    assert loss.item() == pytest.approx(-math.log(math.exp(1 / t) / (math.exp(1 / t) + 1)), rel=1e-6)
    assert info_nce(q, q.clone(), None, t).item() == pytest.approx(
        0.0, abs=1e-7
    )  # no negatives: nothing to push


def _worker(rank: int, world: int, init: str, x: torch.Tensor, w0: torch.Tensor, out: str) -> None:
    dist.init_process_group("gloo", init_method=init, rank=rank, world_size=world)
    try:
        w = w0.clone().requires_grad_(True)
        z = x.chunk(world)[rank] @ w
        z1, z2 = z.chunk(2, dim=1)
        loss = nt_xent(z1, z2, 0.2)
        loss.backward()
        dist.all_reduce(w.grad)  # DDP: average parameter gradients over processes
        mean_loss = loss.detach().clone()
        dist.all_reduce(mean_loss)
        if rank == 0:
            torch.save({"grad": w.grad / world, "loss": mean_loss / world}, out)
    finally:
        dist.destroy_process_group()


def test_nt_xent_under_ddp_matches_one_process_on_the_global_batch(tmp_path):
    torch.manual_seed(0)
    x, w0 = torch.randn(8, 5), torch.randn(5, 6)
    out = tmp_path / "ddp.pt"
    mp.spawn(_worker, args=(2, f"file://{tmp_path / 'init'}", x, w0, str(out)), nprocs=2)
    ddp = torch.load(out)
    w = w0.clone().requires_grad_(True)
    z1, z2 = (x @ w).chunk(2, dim=1)
    single = nt_xent(z1, z2, 0.2)
    single.backward()
    # same loss: each process saw the other's samples as negatives (without gathering the losses differ)
    assert ddp["loss"].item() == pytest.approx(single.item(), rel=1e-5)
    torch.testing.assert_close(ddp["grad"], w.grad, rtol=1e-4, atol=1e-6)
