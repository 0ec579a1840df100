"""DDP equivalence per SSL method: one training step on 2 CPU processes (gloo) against one process holding
the same global batch, for every method in the registry, printed side by side in one run.

Each process gets half of one fixed batch of views; gradients are averaged over the processes as DDP does.
The step is equivalent when the mean of the per-process losses and the averaged gradients equal the
single-process loss and gradients. A second distributed run with the cross-process gather switched off
shows what the gather is for: the methods whose loss compares samples with each other (SimCLR's
negatives, Barlow Twins' and VICReg's batch statistics) then drift away from the single-process step.

BatchNorm layers use fixed statistics in both runs (eval mode): under DDP each process normalises its own
samples unless `train.sync_batchnorm` is on, and torch's SyncBatchNorm runs on GPUs only. DetCo's jigsaw
order and the masked-modelling masks are drawn inside the loss, so a process drawing for its half of the
batch gets other draws than one process drawing for all of it; here every image gets the draw of one fixed
seed, in both runs, so that both see the same inputs.

    python benchmarks/ddp_equivalence.py [--methods simclr,moco] [--processes 2] [--batch 8]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from _common import emit, hardware
from torch import nn

import sslseg.distributed
import sslseg.methods.detco
import sslseg.methods.masked
from sslseg.augment.views import Views
from sslseg.config import PretrainConfig
from sslseg.methods import METHODS
from sslseg.pretrain import build_method

TOLERANCE = 1e-4  # relative; float32 sums in another order differ by ~1e-6


def _same_draws_for_every_image() -> None:
    """Make the random draws inside DetCo's and masked modelling's losses independent of the batch split."""
    jigsaw, patch_mask = sslseg.methods.detco.jigsaw, sslseg.methods.masked.patch_mask
    if getattr(jigsaw, "fixed", False):
        return

    def fixed_jigsaw(x: torch.Tensor, tile: int) -> tuple[torch.Tensor, torch.Tensor]:
        parts = []
        for image in x.split(1):
            with torch.random.fork_rng():
                torch.manual_seed(0)
                parts.append(jigsaw(image, tile))
        return torch.cat([t for t, _ in parts]), torch.cat([p for _, p in parts])

    def fixed_patch_mask(n: int, *args) -> torch.Tensor:
        with torch.random.fork_rng():
            torch.manual_seed(0)
            return patch_mask(1, *args).expand(n, -1, -1, -1)

    fixed_jigsaw.fixed = True
    sslseg.methods.detco.jigsaw = fixed_jigsaw
    sslseg.methods.masked.patch_mask = fixed_patch_mask


def _method(name: str, batch: int, size: int):
    cfg = PretrainConfig.model_validate(
        {"method": name, "encoder": "resnet18", "views": {"size": size}, "train": {"batch_size": batch}}
    )
    torch.manual_seed(0)
    method = build_method(cfg, in_channels=1)
    method.train()
    for module in method.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
    return method


def _step(method, views: Views) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Loss and parameter gradients of one step (no optimiser update)."""
    loss, _ = method.ssl_loss(views)
    loss.backward()
    grads = {n: p.grad.detach().clone() for n, p in method.named_parameters() if p.grad is not None}
    return loss.detach(), grads


def _part(views: Views, rank: int, world: int) -> Views:
    """This process's share of the global batch of views."""
    return Views(
        images=[v.chunk(world)[rank] for v in views.images],
        boxes=[b.chunk(world)[rank] for b in views.boxes],
        flips=[f.chunk(world)[rank] for f in views.flips],
    )


def _to(views: Views, device: str) -> Views:
    return Views(
        images=[v.to(device) for v in views.images],
        boxes=[b.to(device) for b in views.boxes],
        flips=[f.to(device) for f in views.flips],
    )


def _worker(
    rank: int, world: int, init: str, setup: str, out: str, gather: bool, device: str = "cpu"
) -> None:
    torch.set_num_threads(1)
    _same_draws_for_every_image()
    if not gather:  # each process sees only its own samples in the loss
        sslseg.distributed._GatherWithGrad.apply = lambda x: x
    on = device
    if device == "cuda":  # one GPU per process, NCCL between them, full float32 (no TF32) as on the CPU
        torch.cuda.set_device(rank)
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        on = f"cuda:{rank}"
    dist.init_process_group(
        "nccl" if device == "cuda" else "gloo", init_method=init, rank=rank, world_size=world
    )
    try:
        saved = torch.load(setup, weights_only=False)
        method = _method(saved["method"], saved["batch"] // world, saved["size"])
        method.load_state_dict(saved["state"])
        method.to(on)
        loss, grads = _step(method, _to(_part(saved["views"], rank, world), on))
        for g in grads.values():  # what DDP does to parameter gradients
            dist.all_reduce(g)
            g /= world
        dist.all_reduce(loss)
        if rank == 0:
            torch.save({"loss": (loss / world).cpu(), "grads": {n: g.cpu() for n, g in grads.items()}}, out)
    finally:
        dist.destroy_process_group()


def _relative(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    """‖a − b‖ / ‖b‖ over all gradients together."""
    diff = sum(float((a[n] - b[n]).pow(2).sum()) for n in b)
    norm = sum(float(b[n].pow(2).sum()) for n in b)
    return (diff / max(norm, 1e-30)) ** 0.5


def check(name: str, world: int, batch: int, size: int, tmp: Path, device: str = "cpu") -> dict:
    """One method's distributed step (`world` processes, on CPUs with gloo or one GPU each with NCCL)
    against one process holding the global batch on the same kind of device."""
    _same_draws_for_every_image()
    method = _method(name, batch, size)
    torch.manual_seed(1)
    views = method.view_maker(torch.rand(batch, 1, 2 * size, 2 * size), method.n_views)
    setup = tmp / f"{name}.pt"
    torch.save(
        {"method": name, "batch": batch, "size": size, "state": method.state_dict(), "views": views}, setup
    )
    if device == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
        method.to("cuda:0")
        single_loss, single_grads = _step(method, _to(views, "cuda:0"))
        single_loss, single_grads = single_loss.cpu(), {n: g.cpu() for n, g in single_grads.items()}
    else:
        single_loss, single_grads = _step(method, views)
    runs = {}
    for gather in (True, False):
        out = tmp / f"{name}_{gather}.pt"
        init = f"file://{tmp / f'{name}_{gather}_init'}"
        mp.spawn(_worker, args=(world, init, str(setup), str(out), gather, device), nprocs=world)
        runs[gather] = torch.load(out)
    row = {"method": name}
    for gather, tag in ((True, ""), (False, "without_gather_")):
        loss = float(runs[gather]["loss"])
        row[f"{tag}loss"] = round(loss, 6)
        row[f"{tag}loss_rel_diff"] = float(f"{abs(loss - float(single_loss)) / abs(float(single_loss)):.2e}")
        row[f"{tag}grad_rel_diff"] = float(f"{_relative(runs[gather]['grads'], single_grads):.2e}")
    row["single_process_loss"] = round(float(single_loss), 6)
    row["equivalent"] = row["loss_rel_diff"] <= TOLERANCE and row["grad_rel_diff"] <= TOLERANCE
    return row


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--processes", type=int, default=2)
    ap.add_argument("--batch", type=int, default=8, help="global batch, split evenly among the processes")
    ap.add_argument("--size", type=int, default=64, help="view size in pixels")
    args = ap.parse_args()
    if args.batch % args.processes:
        raise SystemExit(f"--batch {args.batch} does not split evenly among {args.processes} processes")
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.methods.split(","):
            t0 = time.perf_counter()
            row = check(name, args.processes, args.batch, args.size, Path(tmp))
            emit(
                benchmark="ddp_equivalence",
                **row,
                tolerance=TOLERANCE,
                processes=args.processes,
                global_batch=args.batch,
                seconds=round(time.perf_counter() - t0, 1),
                hardware=hardware(),
            )


if __name__ == "__main__":
    main()
