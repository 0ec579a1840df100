"""AdamW fused into one kernel against torch's per-tensor default, side by side (issue 26: the step itself).

On a CPU torch runs AdamW as a Python loop over the parameters unless asked otherwise; `sslseg.optim.adamw`
asks for the fused kernel. This script times, on the fine-tuning U-Net (ResNet-18 encoder, the default
decoder) and one batch of random crops:

- the optimiser step alone, per-tensor / foreach / fused;
- the whole training step (forward, loss, backward, optimiser), per-tensor against fused;
- how far the two updates differ: the largest parameter difference after the same steps from the same start
  and the same gradients (float rounding only, not a different algorithm).

    python benchmarks/optimizer_step.py [--steps 20] [--crop 128] [--batch 8]
    python benchmarks/optimizer_step.py --smoke          # tiny network, a few seconds

Prints one JSON line per measurement and one with the ratios.
"""

from __future__ import annotations

import argparse
import copy
import time

import torch
from _common import emit, hardware

from sslseg.nn.unet import build_unet

VARIANTS = {"per-tensor": {"foreach": False}, "foreach": {"foreach": True}, "fused": {"fused": True}}


def _net(smoke: bool) -> torch.nn.Module:
    decoder = [16, 8, 8, 8, 8] if smoke else [256, 128, 64, 32, 16]
    return build_unet("resnet18", in_channels=1, out_channels=3, decoder_channels=tuple(decoder))


def optimiser_seconds(
    net: torch.nn.Module, variant: str, steps: int, warmup: int = 3
) -> tuple[float, list[torch.Tensor]]:
    """Mean seconds of one AdamW step over the network's parameters, with fixed random gradients, and the
    parameters after all the steps (the same start and gradients for every variant)."""
    params = [p for p in net.parameters()]
    gen = torch.Generator().manual_seed(0)
    for p in params:
        p.grad = torch.randn(p.shape, generator=gen) * 1e-3
    opt = torch.optim.AdamW(params, lr=1e-3, weight_decay=1e-4, **VARIANTS[variant])
    for _ in range(warmup):
        opt.step()
    start = time.perf_counter()
    for _ in range(steps):
        opt.step()
    return (time.perf_counter() - start) / steps, [p.detach() for p in params]


def training_seconds(
    net: torch.nn.Module, variant: str, batches: list[tuple[torch.Tensor, torch.Tensor]], warmup: int = 2
) -> float:
    """Mean seconds of a whole training step (forward, loss, backward, AdamW) over `batches` after `warmup`
    untimed ones."""
    net = copy.deepcopy(net).train()
    opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=1e-4, **VARIANTS[variant])
    times = []
    for i, (x, y) in enumerate(batches):
        start = time.perf_counter()
        loss = torch.nn.functional.binary_cross_entropy_with_logits(net(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - start)
    return sum(times) / len(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--smoke", action="store_true", help="tiny network and batch: seconds")
    args = ap.parse_args()
    if args.smoke:
        args.steps, args.crop, args.batch = 3, 32, 2
    torch.manual_seed(0)
    net = _net(args.smoke)
    n_params = sum(p.numel() for p in net.parameters())
    runs = {v: optimiser_seconds(copy.deepcopy(net), v, args.steps) for v in VARIANTS}
    step = {v: s for v, (s, _) in runs.items()}
    # the same start and gradients: any difference is float rounding in the kernels
    drift = max(
        float((a - b).abs().max()) for a, b in zip(runs["per-tensor"][1], runs["fused"][1], strict=True)
    )
    for v, s in step.items():
        emit(
            benchmark="optimizer_step",
            part="optimiser step",
            variant=v,
            ms=round(s * 1000, 2),
            params=n_params,
        )
    gen = torch.Generator().manual_seed(1)
    batches = [
        (
            torch.randn(args.batch, 1, args.crop, args.crop, generator=gen),
            (torch.rand(args.batch, 3, args.crop, args.crop, generator=gen) > 0.5).float(),
        )
        for _ in range(args.steps + 2)
    ]
    whole = {v: training_seconds(net, v, batches) for v in ("per-tensor", "fused")}
    for v, s in whole.items():
        emit(benchmark="optimizer_step", part="training step", variant=v, ms=round(s * 1000, 2))
    emit(
        benchmark="optimizer_step",
        optimiser_speedup=round(step["per-tensor"] / step["fused"], 2),
        training_step_speedup=round(whole["per-tensor"] / whole["fused"], 3),
        largest_weight_difference_same_gradients=drift,
        steps=args.steps,
        crop=args.crop,
        batch=args.batch,
        threads=torch.get_num_threads(),
        hardware=hardware(),
    )


if __name__ == "__main__":
    main()
