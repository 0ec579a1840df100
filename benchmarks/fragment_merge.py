"""Does `postprocess.merge_solidity` mend nuclei cut in two, on gray and on colour images alike (issue 27,
item 3: the contact head over-split stained nuclei, 1.26 predicted objects per true nucleus on H&E)?

One fine-tuned instance run. Its network's probabilities are computed once per validation and test image;
the post-processing the run stored (tuned on its validation images) is kept, and only `merge_solidity`
varies. The value to use is chosen on the run's own validation images by the task's primary metric, never
on the test set. Prints one JSON line per value: the validation score, and the test AJI, AJI+, PQ, AP@0.5,
DSB score and predicted objects per true nucleus, over all test images and over gray and colour apart.

    python benchmarks/fragment_merge.py runs/bench_dsb2018/object_size_24_bright_objects_contact
    python benchmarks/fragment_merge.py RUN --test DIR --test-layout auto --values 0,0.9,0.95
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import numpy as np
from _common import colour_or_gray, emit, hardware, means_by_kind, require
from tqdm.auto import tqdm

from sslseg.config import FinetuneConfig, PostprocessConfig
from sslseg.config.loading import load_config
from sslseg.data.datasets import LoadedSample, load_heldout
from sslseg.data.layouts import find_samples
from sslseg.data.splits import load_split
from sslseg.evaluate import load_model
from sslseg.finetune import validation_set
from sslseg.metrics import instance_scores, mean_scores
from sslseg.segmentation.inference import probabilities_to_labels
from sslseg.segmentation.tasks import task_named

METRICS = ("aji", "aji_plus", "pq", "ap@0.5", "dsb_score")
VALUES = (0.0, 0.9, 0.93, 0.95, 0.97)  # 0: no merging, the run's own post-processing


def objects_per_nucleus(truth: np.ndarray, pred: np.ndarray) -> tuple[int, int]:
    """(predicted objects, true objects) of one image: over 1 when nuclei come out in pieces."""
    return len(np.unique(pred[pred > 0])), len(np.unique(truth[truth > 0]))


def choose(rows: list[tuple[float, float]]) -> float:
    """The merge_solidity of the best (validation score, value) row; on a tie, the least merging."""
    return max(rows, key=lambda r: (r[0], -r[1]))[1]


def segment(
    s: LoadedSample, probs: Any, task: str, post: PostprocessConfig, head: str
) -> tuple[dict[str, float], tuple[int, int]]:
    """One image's scores and object counts with the post-processing `post`."""
    assert s.labels is not None
    pred = probabilities_to_labels(probs, task, post, head)
    return instance_scores(s.labels, pred), objects_per_nucleus(s.labels, pred)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "run", type=Path, help="a finished instance run folder (best.ckpt, config.yaml, split.json)"
    )
    ap.add_argument("--test", type=Path, help="test images (default: DSB2018 stage1_test)")
    ap.add_argument("--test-layout", default="dsb", help="layout of --test (default dsb)")
    ap.add_argument("--values", default=",".join(map(str, VALUES)), help="merge_solidity values to compare")
    args = ap.parse_args()
    values = sorted({float(v) for v in args.values.split(",")} | {0.0})
    for path in ("best.ckpt", "config.yaml", "split.json"):
        if not (args.run / path).exists():
            raise SystemExit(f"fragment_merge.py: {args.run} is not a finished fine-tuning run (no {path})")
    cfg = load_config(FinetuneConfig, args.run / "config.yaml")
    if cfg.data.task != "instance":
        raise SystemExit(f"fragment_merge.py: {args.run} is a {cfg.data.task} run, not an instance one")
    module = load_model(args.run / "best.ckpt", device="cpu")
    channels = module.hparams["in_channels"]
    d = cfg.data
    train = {s.id: s for s in find_samples(d.train, d.layout, d.mask_suffix, allow_unlabeled=True)}
    val = validation_set(
        cfg, load_split(args.run / "split.json", list(train)), train, channels, progress=False
    )
    if not val:
        raise SystemExit(f"fragment_merge.py: {args.run} has no validation images to choose a value on")
    test_root = args.test or require("dsb2018", "stage1_test")
    test = find_samples(test_root, layout="dsb" if args.test is None else args.test_layout)
    kind = colour_or_gray(test)
    held = load_heldout(test, d, channels, progress=False)

    def probabilities(samples: list[LoadedSample], what: str) -> list[Any]:
        return [module.probabilities(s.image, s.native_shape) for s in tqdm(samples, desc=what, leave=False)]

    val_probs, test_probs = probabilities(val, "validation"), probabilities(held, "test")
    metric = task_named(d.task).primary_metric
    head = module.cfg.model.instance_head
    rows = []
    for value in values:
        post = module.cfg.postprocess.model_copy(update={"merge_solidity": value})

        val_score = float(
            np.mean(
                [segment(s, p, d.task, post, head)[0][metric] for s, p in zip(val, val_probs, strict=True)]
            )
        )
        scored = [segment(s, p, d.task, post, head) for s, p in zip(held, test_probs, strict=True)]
        per_image = [score for score, _ in scored]
        counts = {"all": np.zeros(2)}
        for s, (_, n) in zip(held, scored, strict=True):
            counts["all"] += n
            counts[kind[s.id]] = counts.get(kind[s.id], np.zeros(2)) + n
        means = mean_scores(per_image)
        rows.append((val_score, value))
        emit(
            benchmark=f"fragment_merge/{value:g}",
            merge_solidity=value,
            validation=round(val_score, 4),
            **{m: round(means[m], 4) for m in METRICS},
            objects_per_nucleus={k: round(c[0] / max(c[1], 1), 3) for k, c in counts.items()},
            by_kind=means_by_kind(zip([s.id for s in held], per_image, strict=True), kind, METRICS),
        )
    best = choose(rows)
    emit(
        benchmark="fragment_merge",
        run=str(args.run),
        chosen_on_validation=best,
        validation_metric=metric,
        n_validation=len(val),
        n_test=len(held),
        instance_head=head,
        hardware=hardware(),
    )


if __name__ == "__main__":
    main()
