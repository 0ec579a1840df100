"""SSL pretraining throughput per method: end-to-end training images/s on the real DSB2018 images against
the bare compute limit of the same step, their ratio, and peak memory, side by side in one run.

- e2e: `sslseg.pretrain` as users run it (cached decoded images → base crops → batched views on the
  device → forward/backward/step through Lightning), timed per step after warm-up.
- bare: the same method's forward+backward+step (and momentum update) on views already in memory.
- One image = one sample = one pair of views, as in ../shared/reference/peer_throughput.md (lightly 1.6.0
  on this kind of machine), whose figures are printed beside ours.
- `--peer`: lightly's own SimCLR, MoCo v2, BYOL, Barlow Twins and DenseCL (`_lightly_peer.py`) run in this
  session just before ours, and the speed and peak-memory ratios against them (issue 26's bars: speed
  ≥ 1.2x, memory ≤ 1.2x). Each side runs in its own process; peak memory is the end-to-end run's.

    python benchmarks/ssl_throughput.py [--methods simclr,moco] [--steps 12] [--warmup 3] [--peer]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from _common import StepTimer, emit, hardware, require

from sslseg.config import PretrainConfig
from sslseg.data.datasets import RandomBaseCrops, load_unlabeled
from sslseg.data.layouts import find_samples
from sslseg.methods import METHODS
from sslseg.pretrain import build_method, pretrain
from sslseg.trainer import resolve_precision

# lightly 1.6.0, 96 px, batch 64, this kind of machine: mean of the three runs in peer_throughput.md
LIGHTLY = {
    "simclr": {"e2e": 53.1, "bare": 61.6},
    "moco": {"e2e": 70.2, "bare": 91.2},
    "byol": {"e2e": 43.0, "bare": 46.7},
    "barlow_twins": {"e2e": 49.5, "bare": 60.0},
    "densecl": {"e2e": 70.1, "bare": 95.7},
}


SPEED_BAR = 1.2  # issue 26: end to end at least 1.2x lightly's, side by side
RSS_BAR = 1.2  # and peak memory at most 1.2x lightly's
PEER_METHODS = ("simclr", "moco", "byol", "barlow_twins", "densecl")  # those _lightly_peer runs


def measure(method: str, steps: int, warmup: int, batch: int, size: int, compile: bool = False) -> dict:
    torch.set_num_threads(torch.get_num_threads())
    data = require("dsb2018", "stage1_train")
    cfg = PretrainConfig.model_validate(
        {
            "method": method,
            "encoder": "resnet18",
            "data": {"path": data},
            "views": {"size": size, "preset": "generic"},
            "train": {
                "epochs": 1,
                "steps_per_epoch": warmup + steps,
                "batch_size": batch,
                "compile": compile,
            },
        }
    )
    # end to end first, through sslseg.pretrain as users run it (images decoded inside), so that the
    # process's peak memory at this point is the run's own and not the bare loop's copy of the images
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        pretrain(cfg.model_copy(update={"output": Path(tmp)}), progress=False, callbacks=[timer])
    peak_rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    st = timer.stamps[warmup - 1 :]
    e2e = batch * (len(st) - 1) / (st[-1] - st[0])

    t0 = time.perf_counter()
    images, channels = load_unlabeled(find_samples(data), progress=False)
    decode_s = time.perf_counter() - t0

    # bare limit: the same step on one fixed batch of views held in memory, on the device, in the
    # precision and the memory format the end-to-end run uses
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    m = build_method(cfg, channels).to(device)
    m.train()
    nhwc = cfg.train.channels_last
    if nhwc:
        m = m.to(memory_format=torch.channels_last)
    if compile:
        m.encoder.compile()
    base = torch.stack([RandomBaseCrops(images, 2 * size, batch)[i] for i in range(batch)]).float().to(device)
    views = m.view_maker(base, m.n_views)
    if nhwc:
        views.images = [v.contiguous(memory_format=torch.channels_last) for v in views.images]
    bf16 = resolve_precision(cfg.train.precision, cfg.train.accelerator) == "bf16-mixed"
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=bf16):
            loss, _ = m.ssl_loss(views)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        m.after_step()
        if gpu:
            torch.cuda.synchronize()
        if i >= warmup:
            times.append(time.perf_counter() - t)
    bare = batch / (sum(times) / len(times))
    del m, opt, views

    return {
        "method": method,
        "e2e_img_s": round(e2e, 1),
        "bare_img_s": round(bare, 1),
        "ratio": round(e2e / bare, 3),
        "peak_rss_mib": round(peak_rss_mib),  # of the end-to-end run, measured before the bare loop
        "decode_once_s": round(decode_s, 1),
        "compiled": compile,
        "precision": resolve_precision(cfg.train.precision, cfg.train.accelerator),
        "channels_last": nhwc,
        # on a GPU, what users size batches by: the peak memory the tensors took on the device
        "peak_gpu_mib": round(torch.cuda.max_memory_allocated() / 2**20)
        if torch.cuda.is_available()
        else None,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--steps", type=int, default=12)
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--size", type=int, default=96)
    ap.add_argument(
        "--peer",
        action="store_true",
        help="run lightly's own SimCLR, MoCo v2, BYOL, Barlow Twins and DenseCL before ours (pip install lightly)",
    )
    ap.add_argument("--compile", action="store_true", help="torch.compile the encoder (train.compile)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one and args.one.startswith("lightly_"):
        from _lightly_peer import measure_lightly

        images = require("dsb2018", "stage1_train") / "images"
        row = measure_lightly(
            args.one.removeprefix("lightly_"), images, args.batch, args.size, args.steps, args.warmup
        )
        print(json.dumps(row))
        return
    if args.one:  # child process: one method, so peak memory is that method's own
        print(json.dumps(measure(args.one, args.steps, args.warmup, args.batch, args.size, args.compile)))
        return
    for name in args.methods.split(","):
        peer_row = None
        if args.peer and name in PEER_METHODS:  # the peer first, measured in this same session
            peer_row = _child(f"lightly_{name}", args)
            if peer_row is not None:
                emit(
                    benchmark="ssl_throughput",
                    **peer_row,
                    batch=args.batch,
                    size=args.size,
                    hardware=hardware(),
                )
        row = _child(name, args)
        if row is None:
            continue
        if peer_row is not None:
            peer = {"e2e": peer_row["e2e_img_s"], "bare": peer_row["bare_img_s"], "measured": "this run"}
        else:
            peer = LIGHTLY.get(name)
        speed = row["e2e_img_s"] / peer["e2e"] if peer else None
        memory = row["peak_rss_mib"] / peer_row["peak_rss_mib"] if peer_row else None
        emit(
            benchmark="ssl_throughput",
            **row,
            bar_ratio=0.8,
            passes=row["ratio"] >= 0.8,
            lightly_e2e_img_s=peer["e2e"] if peer else None,
            lightly_bare_img_s=peer["bare"] if peer else None,
            lightly_source=peer.get("measured", "peer_throughput.md") if peer else None,
            speed_vs_lightly=round(speed, 3) if speed else None,
            speed_bar=SPEED_BAR,
            rss_vs_lightly=round(memory, 3) if memory else None,
            rss_vs_lightly_with_its_workers=round(
                row["peak_rss_mib"] / peer_row["peak_rss_with_workers_mib"], 3
            )
            if peer_row
            else None,
            rss_bar=RSS_BAR,
            batch=args.batch,
            size=args.size,
            encoder="resnet18",
            hardware=hardware(),
        )


def _child(name: str, args: argparse.Namespace) -> dict | None:
    """One method measured in a process of its own (so that peak memory is its own), or None on failure."""
    child = subprocess.run(
        [
            sys.executable,
            __file__,
            "--one",
            name,
            "--steps",
            str(args.steps),
            "--warmup",
            str(args.warmup),
            "--batch",
            str(args.batch),
            "--size",
            str(args.size),
            *(["--compile"] if args.compile else []),
        ],
        capture_output=True,
        text=True,
        cwd=Path(__file__).parent,
    )
    if child.returncode != 0:
        emit(benchmark="ssl_throughput", method=name, error=child.stderr.strip().splitlines()[-1:])
        return None
    return json.loads(child.stdout.strip().splitlines()[-1])


if __name__ == "__main__":
    main()
