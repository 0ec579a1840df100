"""The peer for `ssl_throughput.py`: lightly's SimCLR measured the way ../shared/reference/peer_throughput.md
describes it (torchvision ResNet-18 without fc, lightly's projection head, NT-Xent and SimCLRTransform,
LightlyDataset + a 2-worker DataLoader, SGD lr 0.06, fp32, 2 threads), so both libraries run in one session.

Needs `pip install lightly` (the `bench` extra); absent, the throughput benchmark says so and goes on.
"""

from __future__ import annotations

import resource
import time
from pathlib import Path

import torch
import torchvision


def measure_lightly_simclr(images: Path, batch: int, size: int, steps: int, warmup: int) -> dict:
    """Training images/s of lightly's SimCLR end to end and on tensors already in memory (bare)."""
    from lightly.data import LightlyDataset
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    torch.set_num_threads(2)
    backbone = torchvision.models.resnet18()
    backbone.fc = torch.nn.Identity()
    model = torch.nn.Sequential(backbone, SimCLRProjectionHead(512, 512, 128))
    criterion = NTXentLoss()
    opt = torch.optim.SGD(model.parameters(), lr=0.06)

    def step(x0: torch.Tensor, x1: torch.Tensor) -> None:
        loss = criterion(model(x0), model(x1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    dataset = LightlyDataset(input_dir=str(images), transform=SimCLRTransform(input_size=size))
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

    x0, x1 = torch.rand(batch, 3, size, size), torch.rand(batch, 3, size, size)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        step(x0, x1)
        if i >= warmup:
            times.append(time.perf_counter() - t)
    bare = batch / (sum(times) / len(times))
    return {
        "method": "lightly_simclr",
        "e2e_img_s": round(e2e, 1),
        "bare_img_s": round(bare, 1),
        "ratio": round(e2e / bare, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
    }
