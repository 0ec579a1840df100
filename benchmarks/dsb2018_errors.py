"""Why does a DSB2018 model lose nuclei? Segments stage1_test (Kaggle layout) with one fine-tuned checkpoint
and counts, for the gray and the colour images apart, the true nuclei it matches at IoU 0.5 and those it
loses: merged with a neighbour, missed (mostly background), or misshapen. Prints one JSON line per group.

    python benchmarks/dsb2018_errors.py runs/bench_dsb2018/object_size_24 [--tta]
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

from _common import emit, hardware, require
from tqdm.auto import tqdm

from sslseg.data.datasets import load_heldout
from sslseg.data.io import read_image
from sslseg.data.layouts import find_samples
from sslseg.data.normalize import effective_channels
from sslseg.evaluate import load_model
from sslseg.metrics import missed_objects


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run", type=Path, help="a fine-tuning run folder (best.ckpt) or a checkpoint")
    ap.add_argument("--tta", action="store_true", help="segment with test-time augmentation (8× slower)")
    args = ap.parse_args()
    module = load_model(args.run, tta=args.tta)
    samples = find_samples(require("dsb2018", "stage1_test"), layout="dsb")
    group = {s.id: "colour" if effective_channels(read_image(s.image)) >= 3 else "gray" for s in samples}
    loaded = load_heldout(samples, module.cfg.data, module.hparams["in_channels"], progress=False)
    counts: dict[str, Counter] = {"gray": Counter(), "colour": Counter(), "all": Counter()}
    for s in tqdm(loaded, desc="segmenting", leave=False):
        assert s.labels is not None
        lost = missed_objects(s.labels, module.segment(s.image, s.native_shape))
        for name in (group[s.id], "all"):
            counts[name].update(lost)
            counts[name]["images"] += 1
    for name, c in counts.items():
        true = c["matched"] + c["merged"] + c["missed"] + c["misshapen"]
        emit(
            benchmark=f"dsb2018_errors/{name}",
            images=c["images"],
            true_nuclei=true,
            **{k: c[k] for k in ("matched", "merged", "missed", "misshapen", "false_positives")},
            lost_share={k: round(c[k] / max(true, 1), 3) for k in ("merged", "missed", "misshapen")},
        )
    head = module.cfg.model.instance_head
    emit(
        benchmark="dsb2018_errors",
        checkpoint=str(args.run),
        instance_head=head,
        tta=args.tta,
        hardware=hardware(),
    )


if __name__ == "__main__":
    main()
