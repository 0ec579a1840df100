"""Block-wise prediction of an image larger than memory (issue 16): peak memory, the same objects as a
whole-image prediction, and throughput beside the whole-image path.

A synthetic fluorescence image of `--size`² px (20,000² by default) is written patch by patch (sslseg.data.synth
nuclei, never held whole) to a tiled BigTIFF under runs/, a tiny model is fine-tuned for a few steps on
synthetic data (its quality does not matter, only consistency), and then, each in a process of its own:
- `sslseg predict --block-size` on the whole image, whose peak resident memory is read from the kernel
  (ru_maxrss of the child) and compared with the 4 GiB bar;
- today's whole-image path on a `--crop`² window of the image (the largest that path comfortably holds),
  normalised with the whole image's statistics as block-wise prediction normalises it.
The objects of the crop are compared with the same region of the block-wise label map. The crop's origin
lies on the whole image's sliding-window grid, and only the part of the crop that both passes cover with
the same network tiles is compared: near the crop's edge the whole image has tiles (context) the crop
lacks, and the crop's last tile is shifted to end at its edge, so there the maps differ legitimately (a
network is not exactly shift-invariant). That part is narrowed by the reach of the post-processing's
smoothing, and an object is compared only if its whole foreground component lies in it (the watershed
splits a component by all of its seeds). The rest must pair one to one with IoU ≥ 0.99. Prints JSON
lines, each figure beside its bar or its comparison.

    python benchmarks/large_image.py                # 20,000² (about 25 min on 2 CPU cores)
    python benchmarks/large_image.py --size 6000    # a quick check
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
from _common import emit, hardware
from scipy import ndimage

from sslseg.segmentation.tiling import tile_grid

RUNS = Path(__file__).resolve().parents[1] / "runs" / "large_image"
PATCH = 1008  # synthetic patches (one TIFF tile each); 1008 and the 2048 blocks share no border below 129,024
RSS_BAR_GIB = 4.0
IOU_BAR = 0.99


def _patch(seed: int) -> np.ndarray:
    """One synthetic patch (module level, so worker processes can make it)."""
    from sslseg.data.synth import generate_sample

    return generate_sample(seed, PATCH, coverage=(0.1, 0.2))[0]


def write_synthetic(path: Path, size: int, seed: int = 0, workers: int = 1) -> float:
    """A size² uint16 tiled BigTIFF of synthetic nuclei, patch by patch (at most 2·`workers` patches in
    memory), the patches made by `workers` processes in parallel while this one compresses and writes them
    in order. Returns the seconds per patch."""
    from collections import deque
    from concurrent.futures import ProcessPoolExecutor

    from tqdm import tqdm

    from sslseg.atomic import atomic_path

    n = -(-size // PATCH)
    seeds = [seed * 1_000_003 + k for k in range(n * n)]
    start = time.perf_counter()

    def patches(pool: ProcessPoolExecutor | None):
        if pool is None:
            for s in tqdm(seeds, desc="writing the synthetic image"):
                yield _patch(s)
            return
        ahead: deque = deque()
        todo = iter(seeds)
        for _ in tqdm(seeds, desc=f"writing the synthetic image ({workers} processes)"):
            while len(ahead) < 2 * workers and (s := next(todo, None)) is not None:
                ahead.append(pool.submit(_patch, s))
            yield ahead.popleft().result()

    with (
        ProcessPoolExecutor(workers) if workers > 1 else contextlib.nullcontext() as pool,
        atomic_path(path) as tmp,
    ):
        tifffile.imwrite(
            tmp,
            patches(pool),
            shape=(size, size),
            dtype=np.uint16,
            tile=(PATCH, PATCH),
            compression="zlib",
            bigtiff=True,
            metadata={"axes": "YX", "PhysicalSizeX": 0.65, "PhysicalSizeY": 0.65},
            ome=True,
        )
    return (time.perf_counter() - start) / len(seeds)


def train_tiny(out: Path) -> Path:
    """A resnet18 U-Net fine-tuned for a few steps on synthetic nuclei (kept under runs/ and reused)."""
    from sslseg.config import FinetuneConfig
    from sslseg.data.synth import write_synthetic_dataset
    from sslseg.finetune import finetune

    if (out / "run" / "best.ckpt").is_file():
        return out / "run" / "best.ckpt"
    data = write_synthetic_dataset(out / "train", n_images=8, size=128, seed=3)
    cfg = FinetuneConfig.model_validate(
        {
            "data": {"train": data, "task": "instance", "val_fraction": 0.25},
            "model": {"encoder": "resnet18", "decoder_channels": [32, 32, 16, 16, 8]},
            "train": {"epochs": 2, "steps_per_epoch": 8, "batch_size": 4, "crop_size": 128},
            "postprocess": {"tune": False},
            "output": out / "run",
        }
    )
    return finetune(cfg, progress=False).best_checkpoint


def phase_blocks(args: argparse.Namespace) -> None:
    """Child process: predict the whole image block-wise through `predict_files` (as the CLI does)."""
    from sslseg.predict import predict_files

    t0 = time.perf_counter()
    report = predict_files(
        args.checkpoint, [args.image], args.out, formats="tiff,csv", block_size=args.block, overwrite=True
    )
    if report.failed:
        raise SystemExit(f"block-wise prediction failed: {report.failed}")
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_kib": _peak_kib()}))


def phase_whole(args: argparse.Namespace) -> None:
    """Child process: today's whole-image path on the crop, normalised with the whole image's statistics."""
    from sslseg.data.lazy import open_image
    from sslseg.evaluate import load_model
    from sslseg.segmentation.blocks import image_statistics

    module = load_model(args.checkpoint)
    cfg = module.cfg
    channels = module.hparams["in_channels"]
    y0 = x0 = args.origin
    with open_image(args.image) as source:
        stats = image_statistics(
            source, channels, cfg.data.normalization, cfg.data.bright_objects, args.block
        )
        raw = source.read(y0, y0 + args.crop, x0, x0 + args.crop)
    image = stats.apply(raw, channels)
    t0 = time.perf_counter()
    labels = module.segment(image, raw.shape[:2])
    seconds = time.perf_counter() - t0
    np.save(args.out / "crop_whole.npy", labels)
    print(json.dumps({"seconds": seconds, "peak_kib": _peak_kib()}))


def _checkpoint_settings(checkpoint: Path) -> tuple[int, float, int]:
    """The checkpoint's sliding-window tile size and overlap (both passes tile by them) and the reach in
    pixels of its post-processing's Gaussian smoothing (scipy truncates at 4 σ)."""
    from sslseg.evaluate import load_model

    cfg = load_model(checkpoint, device="cpu").cfg
    return cfg.inference.tile_size, cfg.inference.overlap, math.ceil(4 * cfg.postprocess.smooth_sigma)


def _peak_kib() -> int:
    """This process's peak resident memory so far (ru_maxrss, KiB on Linux), imports included."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def child(phase: str, args: argparse.Namespace) -> tuple[dict, float]:
    """Run one phase in a fresh process; its result and its peak resident memory in GiB (as it measured it)."""
    cmd = [sys.executable, __file__, "--phase", phase, "--size", str(args.size), "--crop", str(args.crop)]
    cmd += ["--block", str(args.block), "--checkpoint", str(args.checkpoint), "--origin", str(args.origin)]
    done = subprocess.run(cmd, check=True, stdout=subprocess.PIPE, text=True)
    result = json.loads(done.stdout.strip().splitlines()[-1])
    return result, result["peak_kib"] / 2**20


def crop_origin(size: int, crop: int, tile_size: int, overlap: float) -> int:
    """The crop's origin along one axis: centred, moved down onto the whole image's tile stride so that the
    crop's own tiles coincide with the whole image's."""
    tile = tile_grid(size, 1, tile_size, overlap)[0]
    stride = max(1, int(tile * (1 - overlap)))
    return (size - crop) // 2 // stride * stride


def same_tiles(size: int, origin: int, crop: int, tile_size: int, overlap: float) -> np.ndarray:
    """Along one axis of the crop, whether each position is covered by the same network tiles in the
    crop's own sliding-window pass as in the whole image's (then the blended probabilities there agree)."""
    tile, grid = tile_grid(size, 1, tile_size, overlap)
    in_whole = {y for y, _ in grid}
    in_crop = {y + origin for y, _ in tile_grid(crop, 1, tile_size, overlap)[1]}
    where = np.arange(origin, origin + crop)
    same = np.ones(crop, bool)
    for start in in_whole ^ in_crop:  # a tile only one of the two passes has
        same &= (where < start) | (where >= start + tile)
    return same


def narrowed(same: np.ndarray, reach: int) -> np.ndarray:
    """`same` without the positions within `reach` of a position outside it (where smoothing mixes them in)."""
    if reach <= 0:
        return same
    return ndimage.binary_erosion(same, iterations=reach, border_value=1)


def compare(whole: np.ndarray, blocks: np.ndarray, same: np.ndarray) -> dict[str, float]:
    """Objects of the crop whose foreground component lies wholly where `same` (crop-shaped) holds and does
    not touch the crop's edge, whole-image vs block-wise: counts, one-to-one pairing by largest overlap, and
    the IoU of every pair."""

    def interior(labels: np.ndarray) -> np.ndarray:
        components = ndimage.label(labels > 0)[0]
        edge = np.concatenate([components[0], components[-1], components[:, 0], components[:, -1]])
        reaching_out = np.unique(np.concatenate([edge, components[~same]]))
        ids = np.unique(labels[(labels > 0) & ~np.isin(components, reaching_out)])
        return ids

    a_ids, b_ids = interior(whole), interior(blocks)
    a = np.where(np.isin(whole, a_ids), whole, 0).astype(np.int64)
    b = np.where(np.isin(blocks, b_ids), blocks, 0).astype(np.int64)
    both = (a > 0) & (b > 0)
    pairs, overlap = np.unique(np.stack([a[both], b[both]]), axis=1, return_counts=True)
    area_a = dict(zip(*np.unique(a[a > 0], return_counts=True), strict=True))
    area_b = dict(zip(*np.unique(b[b > 0], return_counts=True), strict=True))
    best: dict[int, tuple[int, int]] = {}
    for (i, j), n in zip(pairs.T, overlap, strict=True):
        if n > best.get(int(i), (0, 0))[1]:
            best[int(i)] = (int(j), int(n))
    ious = [n / (area_a[i] + area_b[j] - n) for i, (j, n) in best.items()]
    ious += [0.0] * (len(a_ids) - len(best))  # whole-image objects with no block-wise counterpart
    one_to_one = len({j for j, _ in best.values()}) == len(best)
    return {
        "objects_whole": len(a_ids),
        "objects_blocks": len(b_ids),
        "one_to_one": one_to_one,
        "iou_min": float(min(ious, default=1.0)),
        "iou_below_bar": int(sum(v < IOU_BAR for v in ious)),
        "iou_mean": float(np.mean(ious)) if ious else 1.0,
        "compared_fraction_of_crop": float(same.mean()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", type=int, default=20000, help="side of the synthetic image (px)")
    ap.add_argument("--crop", type=int, default=4096, help="side of the window predicted whole (px)")
    ap.add_argument("--block", type=int, default=2048, help="block side of the block-wise prediction (px)")
    ap.add_argument("--checkpoint", type=Path, default=None, help="a model to use instead of the tiny one")
    ap.add_argument(
        "--workers",
        type=int,
        default=len(os.sched_getaffinity(0)),
        help="processes making the synthetic image's patches (default: the CPU cores this process may use)",
    )
    ap.add_argument("--phase", choices=("blocks", "whole"), default=None, help=argparse.SUPPRESS)
    ap.add_argument("--origin", type=int, default=0, help=argparse.SUPPRESS)  # the crop's, for --phase whole
    args = ap.parse_args()
    if args.crop > args.size:
        raise SystemExit(f"--crop ({args.crop}) must not exceed --size ({args.size})")
    RUNS.mkdir(parents=True, exist_ok=True)
    args.image = RUNS / f"synthetic_{args.size}.ome.tif"
    args.out = RUNS / f"predicted_{args.size}"
    args.out.mkdir(exist_ok=True)
    if args.phase is None:
        if not args.image.is_file():
            per_patch = write_synthetic(args.image, args.size, workers=max(1, args.workers))
            emit(synthetic_image_s_per_patch=round(per_patch, 3), patch_px=PATCH, workers=args.workers)
        args.checkpoint = args.checkpoint or train_tiny(RUNS)
    if args.phase == "blocks":
        return phase_blocks(args)
    if args.phase == "whole":
        return phase_whole(args)
    tile_size, overlap, reach = _checkpoint_settings(args.checkpoint)
    origin = args.origin = crop_origin(args.size, args.crop, tile_size, overlap)
    blocks_result, blocks_rss = child("blocks", args)
    whole_result, whole_rss = child("whole", args)
    y0 = x0 = origin
    from sslseg.data.lazy import open_image

    labels_path = args.out / f"{args.image.name.removesuffix('.tif')}_labels.tif"
    with open_image(labels_path) as labels:
        region = labels.read(y0, y0 + args.crop, x0, x0 + args.crop)[..., 0]
    along = narrowed(same_tiles(args.size, origin, args.crop, tile_size, overlap), reach)
    scores = compare(np.load(args.out / "crop_whole.npy"), region, along[:, None] & along[None, :])
    mpx, crop_mpx = args.size**2 / 1e6, args.crop**2 / 1e6
    common = {"benchmark": "large_image", "size": args.size, "crop": args.crop, "block": args.block}
    emit(
        **common,
        metric="peak_rss_gib_blockwise",
        value=round(blocks_rss, 3),
        bar=RSS_BAR_GIB,
        passes=blocks_rss <= RSS_BAR_GIB,
        whole_image_path_on_crop=round(whole_rss, 3),
    )
    emit(
        **common,
        metric="objects_in_crop",
        blockwise=scores["objects_blocks"],
        whole_image=scores["objects_whole"],
        passes=scores["objects_blocks"] == scores["objects_whole"] and scores["one_to_one"],
        crop_origin=origin,
        compared_fraction_of_crop=round(scores["compared_fraction_of_crop"], 3),
    )
    emit(
        **common,
        metric="iou_per_object_min",
        value=round(scores["iou_min"], 4),
        bar=IOU_BAR,
        passes=scores["iou_min"] >= IOU_BAR,
        below_bar=scores["iou_below_bar"],
        mean=round(scores["iou_mean"], 5),
    )
    emit(
        **common,
        metric="throughput_mpx_per_s",
        blockwise=round(mpx / blocks_result["seconds"], 4),
        whole_image_path_on_crop=round(crop_mpx / whole_result["seconds"], 4),
        note="block-wise includes reading, statistics pass, writing the tiled BigTIFF and CSV",
        hardware=hardware(),
    )


if __name__ == "__main__":
    main()
