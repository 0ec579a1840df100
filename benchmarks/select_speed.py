"""How long `sslseg select` takes and how much memory it holds (issue 28): choosing 16 of the 664 DSB 2018
stage1_train images (their masks ignored: `--layout unlabeled`) with the seven image descriptors and with a
random-init ResNet-18's pooled embedding, each beside the 2-minute bar; and, with `--region-size`, 16
non-overlapping 256 px regions of one synthetic size² slide (a tiled BigTIFF of synthetic nuclei written
patch by patch, never held whole) beside the 4 GiB peak-memory bar. Each selection runs in a process of
its own, whose peak resident memory is read from the kernel (ru_maxrss), and whose CPU seconds are given
beside the wall-clock ones: on a shared machine the CPU time says what two idle cores would take.
Prints JSON lines.

    python benchmarks/select_speed.py                      # the DSB pool (a couple of minutes on 2 cores)
    python benchmarks/select_speed.py --region-size 20000  # and the slide (writing it takes a while)
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

from _common import emit, hardware, require

RUNS = Path(__file__).resolve().parents[1] / "runs" / "select_speed"
BUDGET = 16
SECONDS_BAR = 120.0
RSS_BAR_GIB = 4.0


def run_one(pool: str, features: str, region: int | None, out: str) -> None:
    """One selection in this process; prints its figures as a JSON line."""
    from sslseg.select import select

    start, cpu = time.perf_counter(), _cpu_seconds()
    result = select(
        pool, BUDGET, out, features=features, layout="unlabeled", region=region, seed=0, device="cpu"
    )
    seconds, cpu = time.perf_counter() - start, _cpu_seconds() - cpu
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, imports included
    figures = {"seconds": seconds, "cpu_seconds": cpu, "peak_kib": peak, "candidates": result.candidates}
    print(json.dumps(figures), flush=True)


def _cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def write_slide(path: Path, size: int, patch: int = 1024, kinds: int = 8) -> None:
    """A size² uint16 tiled BigTIFF of synthetic nuclei, one patch² tile at a time (`kinds` different
    patches, repeated: memory and reading are what is measured, not variety)."""
    import numpy as np
    import tifffile

    from sslseg.atomic import atomic_path
    from sslseg.data.synth import generate_sample

    made = [generate_sample(seed, patch)[0] for seed in range(kinds)]
    n = -(-size // patch)
    with atomic_path(path) as tmp:
        tiles = (made[(i * 7 + j) % kinds].reshape(patch, patch) for i in range(n) for j in range(n))
        tifffile.imwrite(
            tmp,
            tiles,
            shape=(size, size),
            dtype=np.uint16,
            tile=(patch, patch),
            compression="zlib",
            bigtiff=True,
        )


def child(pool: Path, features: str, region: int | None, out: Path) -> dict:
    """Run one selection in a fresh process (so peaks do not mix) into an empty `out`."""
    shutil.rmtree(out, ignore_errors=True)
    cmd = [sys.executable, __file__, "--child", str(pool), "--features", features, "--out", str(out)]
    if region is not None:
        cmd += ["--region", str(region)]
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--features", default="descriptors", help=argparse.SUPPRESS)
    parser.add_argument("--region", type=int, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--region-size", type=int, default=0, help="also a synthetic slide of this side")
    parser.add_argument("--skip-pool", action="store_true", help="only the slide")
    args = parser.parse_args()
    if args.child:
        run_one(args.child, args.features, args.region, args.out)
        return
    emit(benchmark="select_speed", hardware=hardware())
    if not args.skip_pool:
        pool = require("dsb2018", "stage1_train")
        for features in ("descriptors", "random"):
            r = child(pool, features, None, RUNS / f"pool_{features}")
            emit(
                benchmark="select_speed",
                pool="dsb2018/stage1_train",
                images=r["candidates"],
                budget=BUDGET,
                features=features if features == "descriptors" else "random-init resnet18",
                seconds=round(r["seconds"], 1),
                cpu_seconds=round(r["cpu_seconds"], 1),
                bar_seconds=SECONDS_BAR,
                passes=r["seconds"] <= SECONDS_BAR,
                peak_gib=round(r["peak_kib"] / 2**20, 2),
            )
    if args.region_size:
        slide = RUNS / f"slide_{args.region_size}" / "slide.tif"
        if not slide.is_file():
            write_slide(slide, args.region_size)
        r = child(slide.parent, "descriptors", 256, RUNS / f"regions_{args.region_size}")
        peak = r["peak_kib"] / 2**20
        emit(
            benchmark="select_speed",
            slide_px=args.region_size,
            region=256,
            regions=r["candidates"],
            budget=BUDGET,
            features="descriptors",
            seconds=round(r["seconds"], 1),
            cpu_seconds=round(r["cpu_seconds"], 1),
            peak_gib=round(peak, 2),
            bar_gib=RSS_BAR_GIB,
            passes=peak <= RSS_BAR_GIB,
        )


if __name__ == "__main__":
    main()
