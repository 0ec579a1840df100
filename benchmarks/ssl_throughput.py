"""SSL pretraining throughput per method: end-to-end training images/s on the real DSB2018 images against
the bare compute limit of the same step, their ratio, and peak memory, side by side in one run.

- e2e: `sslseg.pretrain` as users run it (cached decoded images → base crops → batched views on the
  device → forward/backward/step through Lightning), timed per step after warm-up.
- bare: the same method's forward+backward+step (and momentum update) on views already in memory.
- One image = one sample = one pair of views, as in ../shared/reference/peer_throughput.md (lightly 1.6.0
  on this kind of machine), whose figures are printed beside ours.

    python benchmarks/ssl_throughput.py [--methods simclr,moco] [--steps 12] [--warmup 3]
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

# lightly 1.6.0, 96 px, batch 64, this kind of machine: mean of the three runs in peer_throughput.md
LIGHTLY = {
    "simclr": {"e2e": 53.1, "bare": 61.6},
    "moco": {"e2e": 70.2, "bare": 91.2},
    "byol": {"e2e": 43.0, "bare": 46.7},
    "barlow_twins": {"e2e": 49.5, "bare": 60.0},
    "densecl": {"e2e": 70.1, "bare": 95.7},
}


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
    t0 = time.perf_counter()
    images, channels = load_unlabeled(find_samples(data), progress=False)
    decode_s = time.perf_counter() - t0

    # bare limit: the same step on one fixed batch of views held in memory, on the device and in the
    # precision the end-to-end run uses (bf16 autocast on a GPU)
    gpu = torch.cuda.is_available()
    device = "cuda" if gpu else "cpu"
    m = build_method(cfg, channels).to(device)
    m.train()
    if compile:
        m.encoder.compile()
    base = torch.stack([RandomBaseCrops(images, 2 * size, batch)[i] for i in range(batch)]).float().to(device)
    views = m.view_maker(base, m.n_views)
    opt = torch.optim.SGD([p for p in m.parameters() if p.requires_grad], lr=1e-3, momentum=0.9)
    times = []
    for i in range(warmup + steps):
        t = time.perf_counter()
        with torch.autocast(device, dtype=torch.bfloat16, enabled=gpu):
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

    # end to end, through sslseg.pretrain (images decoded again inside: counted separately, once per run)
    timer = StepTimer()
    with tempfile.TemporaryDirectory() as tmp:
        pretrain(cfg.model_copy(update={"output": Path(tmp)}), progress=False, callbacks=[timer])
    st = timer.stamps[warmup - 1 :]
    e2e = batch * (len(st) - 1) / (st[-1] - st[0])
    return {
        "method": method,
        "e2e_img_s": round(e2e, 1),
        "bare_img_s": round(bare, 1),
        "ratio": round(e2e / bare, 3),
        "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "decode_once_s": round(decode_s, 1),
        "compiled": compile,
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
        "--peer", action="store_true", help="also run lightly's SimCLR here (pip install lightly)"
    )
    ap.add_argument("--compile", action="store_true", help="torch.compile the encoder (train.compile)")
    ap.add_argument("--one", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one == "lightly_simclr":
        from _lightly_peer import measure_lightly_simclr

        images = require("dsb2018", "stage1_train") / "images"
        print(json.dumps(measure_lightly_simclr(images, args.batch, args.size, args.steps, args.warmup)))
        return
    if args.one:  # child process: one method, so peak memory is that method's own
        print(json.dumps(measure(args.one, args.steps, args.warmup, args.batch, args.size, args.compile)))
        return
    if args.peer:
        args.methods = "lightly_simclr," + args.methods
    for name in args.methods.split(","):
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
            continue
        row = json.loads(child.stdout.strip().splitlines()[-1])
        if name == "lightly_simclr":  # the peer, measured in this same session
            emit(benchmark="ssl_throughput", **row, batch=args.batch, size=args.size, hardware=hardware())
            LIGHTLY["simclr"] = {"e2e": row["e2e_img_s"], "bare": row["bare_img_s"], "measured": "this run"}
            continue
        peer = LIGHTLY.get(name)
        emit(
            benchmark="ssl_throughput",
            **row,
            bar_ratio=0.8,
            passes=row["ratio"] >= 0.8,
            lightly_e2e_img_s=peer["e2e"] if peer else None,
            lightly_bare_img_s=peer["bare"] if peer else None,
            lightly_source=peer.get("measured", "peer_throughput.md") if peer else None,
            faster_than_lightly=row["e2e_img_s"] > peer["e2e"] if peer else None,
            batch=args.batch,
            size=args.size,
            encoder="resnet18",
            hardware=hardware(),
        )


if __name__ == "__main__":
    main()
