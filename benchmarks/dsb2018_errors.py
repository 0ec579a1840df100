"""Why does a DSB2018 model lose nuclei? Segments stage1_test (Kaggle layout) with one fine-tuned checkpoint
and counts, for the gray and the colour images apart, the true nuclei it matches at IoU 0.5 and those it
loses: merged with a neighbour, missed (mostly background), or misshapen. Prints one JSON line per group,
and one per outcome saying what its nuclei have in common: size and contrast relative to the other nuclei
of their image, and the foreground probability the network gave them (to tell dim from small from merged).

    python benchmarks/dsb2018_errors.py runs/bench_dsb2018/object_size_24 [--tta]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import numpy as np
from _common import colour_or_gray, emit, hardware, require
from scipy import ndimage
from skimage.transform import resize
from tqdm.auto import tqdm

from sslseg.data.datasets import load_heldout
from sslseg.data.layouts import find_samples
from sslseg.data.scale import typical_area
from sslseg.evaluate import load_model
from sslseg.metrics import OUTCOMES, missed_objects, object_outcomes
from sslseg.segmentation.inference import probabilities_to_labels


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run", type=Path, help="a fine-tuning run folder (best.ckpt) or a checkpoint")
    ap.add_argument("--tta", action="store_true", help="segment with test-time augmentation (8× slower)")
    args = ap.parse_args()
    module = load_model(args.run, tta=args.tta)
    samples = find_samples(require("dsb2018", "stage1_test"), layout="dsb")
    group = colour_or_gray(samples)
    loaded = load_heldout(samples, module.cfg.data, module.hparams["in_channels"], progress=False)
    counts: dict[str, Counter] = {"gray": Counter(), "colour": Counter(), "all": Counter()}
    traits: list[np.ndarray] = []  # per true nucleus: outcome, relative area, relative contrast, fg prob
    cfg = module.cfg
    for s in tqdm(loaded, desc="segmenting", leave=False):
        assert s.labels is not None
        probs = module.probabilities(s.image, s.native_shape)
        pred = probabilities_to_labels(probs, "instance", cfg.postprocess, cfg.model.instance_head)
        lost = missed_objects(s.labels, pred)
        for name in (group[s.id], "all"):
            counts[name].update(lost)
            counts[name]["images"] += 1
        seen = s.image.mean(axis=0)  # at the working scale; the traits are measured at native size
        if seen.shape != s.native_shape:
            seen = resize(seen, s.native_shape, order=1, preserve_range=True)
        traits.append(object_traits(s.labels, pred, seen, probs[0].numpy()))
    for name, c in counts.items():
        true = c["matched"] + c["merged"] + c["missed"] + c["misshapen"]
        emit(
            benchmark=f"dsb2018_errors/{name}",
            images=c["images"],
            true_nuclei=true,
            **{k: c[k] for k in ("matched", "merged", "missed", "misshapen", "false_positives")},
            lost_share={k: round(c[k] / max(true, 1), 3) for k in ("merged", "missed", "misshapen")},
        )
    t = np.concatenate(traits, axis=1)
    for k, name in enumerate(OUTCOMES):
        sel = t[:, t[0] == k]
        if sel.shape[1] == 0:
            continue
        emit(
            benchmark=f"dsb2018_errors/traits/{name}",
            nuclei=sel.shape[1],
            median_relative_area=round(float(np.median(sel[1])), 3),
            median_relative_contrast=round(float(np.nanmedian(sel[2])), 3),
            median_foreground_probability=round(float(np.median(sel[3])), 3),
            share_small=round(float(np.mean(sel[1] < 0.5)), 3),
            share_dim=round(float(np.mean(sel[2] < 0.5)), 3),
        )
    head = module.cfg.model.instance_head
    emit(
        benchmark="dsb2018_errors",
        checkpoint=str(args.run),
        instance_head=head,
        tta=args.tta,
        hardware=hardware(),
    )


def object_traits(gt: np.ndarray, pred: np.ndarray, image: np.ndarray, foreground: np.ndarray) -> np.ndarray:
    """4 × n rows for the true nuclei of one image: outcome (index into OUTCOMES), area relative to the
    image's typical nucleus, contrast (mean minus the background's median) relative to the image's median
    nucleus contrast, and the mean predicted foreground probability over the nucleus. The image is the one
    the network saw (normalised, and inverted with bright_objects), so dim means dim to the network."""
    ids, outcome = object_outcomes(gt, pred)
    if len(ids) == 0:
        return np.zeros((4, 0))
    area = ndimage.sum_labels(np.ones_like(gt), gt, ids)
    background = float(np.median(image[gt == 0])) if (gt == 0).any() else 0.0
    contrast = ndimage.mean(image, gt, ids) - background
    typical_contrast = float(np.median(contrast))
    relative_contrast = contrast / typical_contrast if typical_contrast > 0 else np.full(len(ids), np.nan)
    fg = ndimage.mean(foreground, gt, ids)
    return np.stack([outcome, area / typical_area(area), relative_contrast, fg])


if __name__ == "__main__":
    main()
