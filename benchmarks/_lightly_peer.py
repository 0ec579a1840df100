"""The peer for `ssl_throughput.py`: lightly's SimCLR, MoCo v2, BYOL, Barlow Twins and DenseCL measured the way
../shared/reference/peer_throughput.md describes them (torchvision ResNet-18 without fc, lightly's heads,
losses, momentum helpers and transforms, LightlyDataset + a 2-worker DataLoader, SGD lr 0.06, fp32 — lightly's
default —, 2 threads), so that both libraries run in one session.

Needs `pip install lightly` (the `bench` extra); absent, the throughput benchmark says so and goes on.
"""

from __future__ import annotations

import contextlib
import copy
import resource
import time
from collections.abc import Callable
from pathlib import Path

import torch
import torchvision
from torch import nn

PEER_METHODS = ("simclr", "moco", "byol", "barlow_twins", "densecl")


def _peak_mib(pid: int | str = "self") -> float:
    """The peak resident memory (VmHWM) of a live process, in MiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


def _worker_peaks_mib() -> float:
    """The summed peak memory of this process's live children (the DataLoader's workers), in MiB."""
    total = 0.0
    for task in Path("/proc/self/task").iterdir():
        for pid in (task / "children").read_text().split():
            with contextlib.suppress(OSError):  # it ended meanwhile
                total += _peak_mib(pid)
    return total


class _Momentum(nn.Module):
    """An online network and its momentum copy, as lightly's MoCo/BYOL/DenseCL examples build them."""

    def __init__(self, online: nn.Module) -> None:
        super().__init__()
        from lightly.models.utils import deactivate_requires_grad

        self.online = online
        self.momentum = copy.deepcopy(online)
        deactivate_requires_grad(self.momentum)

    def update(self, m: float = 0.996) -> None:
        from lightly.models.utils import update_momentum

        update_momentum(self.online, self.momentum, m=m)


def _resnet18(pool: bool = True) -> nn.Module:
    resnet = torchvision.models.resnet18()
    if pool:
        resnet.fc = nn.Identity()
        return resnet
    return nn.Sequential(*list(resnet.children())[:-2])  # DenseCL keeps the spatial map


def _method(name: str, size: int) -> tuple[nn.Module, Callable, object]:
    """lightly's model, training step (two views → loss) and transform for one method."""
    from lightly import loss as L
    from lightly import transforms as T
    from lightly.models import utils
    from lightly.models.modules import heads as H

    byol_views = T.BYOLTransform(
        view_1_transform=T.BYOLView1Transform(input_size=size),
        view_2_transform=T.BYOLView2Transform(input_size=size),
    )
    if name == "simclr":
        model = nn.Sequential(_resnet18(), H.SimCLRProjectionHead(512, 512, 128))
        ntxent = L.NTXentLoss()
        return model, lambda x0, x1: ntxent(model(x0), model(x1)), T.SimCLRTransform(input_size=size)
    if name == "barlow_twins":
        model = nn.Sequential(_resnet18(), H.BarlowTwinsProjectionHead(512, 2048, 2048))
        barlow = L.BarlowTwinsLoss()
        return model, lambda x0, x1: barlow(model(x0), model(x1)), byol_views
    if name == "moco":
        net = _Momentum(nn.Sequential(_resnet18(), H.MoCoProjectionHead(512, 512, 128)))
        bank = L.NTXentLoss(memory_bank_size=(4096, 128))

        def moco(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
            net.update()
            with torch.no_grad():
                key = net.momentum(x1)
            return bank(net.online(x0), key)

        return net, moco, T.MoCoV2Transform(input_size=size)
    if name == "byol":
        online = nn.Sequential(_resnet18(), H.BYOLProjectionHead(512, 1024, 256))
        net = _Momentum(online)
        predictor = H.BYOLPredictionHead(256, 1024, 256)
        model = nn.ModuleDict({"net": net, "predictor": predictor})
        cosine = L.NegativeCosineSimilarity()

        def byol(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
            net.update()
            p0, p1 = predictor(net.online(x0)), predictor(net.online(x1))
            with torch.no_grad():
                z0, z1 = net.momentum(x0), net.momentum(x1)
            return 0.5 * (cosine(p0, z1) + cosine(p1, z0))

        return model, byol, byol_views
    if name == "densecl":
        backbone = _Momentum(_resnet18(pool=False))
        glob = _Momentum(H.DenseCLProjectionHead(512, 512, 128))
        local = _Momentum(H.DenseCLProjectionHead(512, 512, 128))
        model = nn.ModuleList([backbone, glob, local])
        pool = nn.AdaptiveAvgPool2d((1, 1))
        bank_global = L.NTXentLoss(memory_bank_size=(4096, 128))
        bank_local = L.NTXentLoss(memory_bank_size=(4096, 128))

        def embed(x: torch.Tensor, which: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
            f = getattr(backbone, which)(x)
            g = getattr(glob, which)(pool(f).flatten(start_dim=1))
            f = f.flatten(start_dim=2).permute(0, 2, 1)
            return f, g, getattr(local, which)(f)

        def densecl(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
            for part in (backbone, glob, local):
                part.update()
            qf, qg, ql = embed(x0, "online")
            with torch.no_grad():
                kf, kg, kl = embed(x1, "momentum")
                kl = utils.select_most_similar(qf, kf, kl)
            return 0.5 * bank_global(qg, kg) + 0.5 * bank_local(ql.flatten(end_dim=1), kl.flatten(end_dim=1))

        return model, densecl, T.DenseCLTransform(input_size=size)
    raise ValueError(f"no lightly peer for '{name}' (have {', '.join(PEER_METHODS)})")


def measure_lightly(name: str, images: Path, batch: int, size: int, steps: int, warmup: int) -> dict:
    """Training images/s of lightly's `name` end to end and on tensors already in memory (bare), and the
    peak memory of the end-to-end run: the training process's, and with its DataLoader workers'."""
    from lightly.data import LightlyDataset

    torch.set_num_threads(2)
    model, loss_of, transform = _method(name, size)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.06)

    def step(x0: torch.Tensor, x1: torch.Tensor) -> None:
        loss = loss_of(x0, x1)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    dataset = LightlyDataset(input_dir=str(images), transform=transform)
    loader = torch.utils.data.DataLoader(
        dataset, batch_size=batch, shuffle=True, drop_last=True, num_workers=2, persistent_workers=True
    )
    stamps = []
    done = 0
    while done < warmup + steps:
        for (x0, x1), _, _ in loader:
            step(x0, x1)
            stamps.append(time.perf_counter())
            done += 1
            if done == warmup + steps:
                break
    st = stamps[warmup - 1 :]
    e2e = batch * (len(st) - 1) / (st[-1] - st[0])
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    workers = _worker_peaks_mib()
    del loader

    x0, x1 = torch.rand(batch, 3, size, size), torch.rand(batch, 3, size, size)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        step(x0, x1)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    bare = batch / (sum(times) / len(times))
    return {
        "method": f"lightly_{name}",
        "e2e_img_s": round(e2e, 1),
        "bare_img_s": round(bare, 1),
        "ratio": round(e2e / bare, 3),
        "peak_rss_mib": round(peak),
        "peak_rss_with_workers_mib": round(peak + workers),
        "precision": "32-true",
    }
