"""How much does the fragment check of object-size inference (`inference.check_fragments`) change the
scores? Scores one checkpoint trained with `data.object_size` (e.g. by dsb2018_instance.py) with the check
off and on, in one run: on DSB2018 stage1_test (Kaggle layout) and on the checkpoint's own validation
split, which the check was not designed on. Prints one JSON line per metric, off beside on.

    python benchmarks/object_sizing.py runs/bench_dsb2018/object_size_24 [--tta]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import emit, hardware, require

from sslseg.data.datasets import load_heldout
from sslseg.data.layouts import find_samples
from sslseg.data.splits import load_split
from sslseg.evaluate import evaluate_samples, load_model, summarize

METRICS = ("aji", "pq", "ap@0.5", "dsb_score")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("run", type=Path, help="a fine-tuning run folder (best.ckpt and split.json)")
    ap.add_argument("--tta", action="store_true", help="score with test-time augmentation (8× slower)")
    args = ap.parse_args()
    module = load_model(args.run, tta=args.tta)
    data = module.cfg.data
    if data.object_size is None:
        raise SystemExit(f"{args.run}: trained without data.object_size, so there is no sizing to compare")
    train = {s.id: s for s in find_samples(data.train, data.layout, data.mask_suffix)}
    split = load_split(args.run / "split.json", list(train))
    sets = {
        "stage1_test": find_samples(require("dsb2018", "stage1_test"), layout="dsb"),
        "validation": [train[i] for i in split.get("val", [])],
    }
    channels = module.hparams["in_channels"]
    for name, samples in sets.items():
        loaded = load_heldout(samples, data, channels, progress=False)
        means, ap50, seconds = {}, {}, {}  # each keyed by whether the check was on
        for check in (False, True):
            inference = module.cfg.inference.model_copy(update={"check_fragments": check})
            module.cfg = module.cfg.model_copy(update={"inference": inference})
            t0 = time.perf_counter()
            rows = evaluate_samples(module, loaded, progress=False)
            seconds[check] = round(time.perf_counter() - t0, 1)
            means[check], ap50[check] = summarize(rows), {r["id"]: r["ap@0.5"] for r in rows}
        changed = {i: (a, ap50[True][i]) for i, a in ap50[False].items() if a != ap50[True][i]}
        for metric in METRICS:
            emit(
                benchmark=f"object_sizing/{name}",
                metric=metric,
                without_check=round(means[False][metric], 4),
                with_check=round(means[True][metric], 4),
            )
        emit(
            benchmark=f"object_sizing/{name}",
            images=len(loaded),
            images_changed=len(changed),
            ap50_changes={i[:10]: f"{a:.2f} -> {b:.2f}" for i, (a, b) in changed.items()},
            seconds_without=seconds[False],
            seconds_with=seconds[True],
            tta=args.tta,
            checkpoint=str(args.run),
            hardware=hardware(),
        )


if __name__ == "__main__":
    main()
