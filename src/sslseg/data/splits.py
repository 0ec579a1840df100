"""Train/val/test splits and the labelled budget.

Only annotated images are ever split; the test split is drawn once from `split_seed`, independently of the
budget and of the run seed, so every cell of a study is scored on the same images. The labelled budget is
a prefix of a seeded permutation of the candidate images, so for one seed the 8-image budget lies inside
the 16-image one. Two protocols decide where validation comes from:

- `budget` (the default, what a lab lives with): validation images come out of the annotated budget, a
  `val_fraction` share of it (at least one image), and none below `MIN_VALIDATED_BUDGET` images, where
  the run trains on a fixed schedule instead.
- `fixed` (the reference paper's): one validation split drawn from `split_seed` beside the training split,
  the same at every budget; the budget is then drawn from the training split and validation comes on top.

Either way every labelled image a run touches is counted (`LabelBudget.n_labelled_total`).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np

from sslseg.atomic import write_json
from sslseg.errors import ConfigError, DataError

Validation = Literal["budget", "fixed"]  # where a run's validation images come from (see above)

# below this many annotated images, one of them is worth more as a training image than as a noisy
# validation score (epoch choice and thresholds from one or two images); the run trains a fixed schedule
MIN_VALIDATED_BUDGET = 4
PARTS = ("train", "val", "test", "unlabeled")


def make_split(
    ids: list[str], val_fraction: float, test_fraction: float = 0.0, seed: int = 0
) -> dict[str, list[str]]:
    """Split ids into train/val/test with a seeded shuffle (sorted within each part for readability)."""
    ids = sorted(ids)
    n = len(ids)
    n_val = round(n * val_fraction) if val_fraction > 0 else 0
    n_test = round(n * test_fraction) if test_fraction > 0 else 0
    if val_fraction > 0:
        n_val = max(n_val, 1)
    if test_fraction > 0:
        n_test = max(n_test, 1)
    if n - n_val - n_test < 1:
        raise ConfigError(
            f"{n} images cannot be split into val {val_fraction:.0%} and test {test_fraction:.0%} "
            "with at least one training image left"
        )
    order = np.random.default_rng(seed).permutation(n)
    test = sorted(ids[i] for i in order[:n_test])
    val = sorted(ids[i] for i in order[n_test : n_test + n_val])
    train = sorted(ids[i] for i in order[n_test + n_val :])
    return {"train": train, "val": val, "test": test}


def save_split(path: str | Path, split: dict[str, list[str]]) -> None:
    """Write a split as JSON (atomically) so later runs can reuse it exactly."""
    write_json(path, split)


def load_split(path: str | Path, known_ids: list[str]) -> dict[str, list[str]]:
    """Read a split file and check that every id in it exists in the dataset."""
    path = Path(path)
    try:
        split = json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(path, f"cannot read split file: {e}") from None
    if not isinstance(split, dict) or "train" not in split:
        raise DataError(
            path, "a split file needs at least a 'train' list (and optionally 'val', 'test', 'unlabeled')"
        )
    known = set(known_ids)
    for part, ids in split.items():
        missing = [i for i in ids if i not in known]
        if missing:
            raise DataError(
                path, f"{len(missing)} ids in '{part}' are not in the dataset, e.g. {missing[:3]}"
            )
    return {k: list(split.get(k, [])) for k in PARTS}


def dataset_split(
    ids: list[str],
    labelled_ids: list[str],
    val_fraction: float,
    test_fraction: float,
    seed: int,
    validation: Validation = "budget",
) -> dict[str, list[str]]:
    """The split every run on a dataset shares, drawn from `seed` among the labelled images only: the test
    images, the fixed validation images (protocol `fixed`; under `budget` validation comes out of each
    run's budget) and the labelled rest. Images without a label are listed as `unlabeled`."""
    if not labelled_ids:
        raise ConfigError(f"none of the {len(ids)} images has a label: there is nothing to split")
    split = make_split(labelled_ids, val_fraction if validation == "fixed" else 0.0, test_fraction, seed)
    labelled = set(labelled_ids)
    return {**split, "unlabeled": sorted(i for i in ids if i not in labelled)}


def budget_size(n_available: int, fraction: float | None, count: int | None, what: str) -> int:
    """How many of `n_available` candidate images the budget labels: `count`, or `fraction` of them
    rounded down (a study's 10 % never labels more than 10 %), or all of them when neither is given."""
    if fraction is not None and count is not None:
        raise ConfigError(
            f"data.label_fraction ({fraction}) and data.labelled_images ({count}) both choose the labelled "
            "budget; set only one"
        )
    if n_available < 1:
        raise ConfigError(f"there are no {what}: no image can be labelled")
    if count is not None:
        if count > n_available:
            raise ConfigError(f"data.labelled_images={count} but there are only {n_available} {what}")
        return count
    if fraction is None:
        return n_available
    if not 0 < fraction <= 1:
        raise ConfigError(f"data.label_fraction must be in (0, 1], got {fraction}")
    n = math.floor(n_available * fraction + 1e-9)
    if n < 1:
        raise ConfigError(
            f"data.label_fraction={fraction} of {n_available} {what} leaves no labelled "
            f"image; use at least {math.ceil(1e4 / n_available) / 1e4:.4f}"
        )
    return n


def _drawn(ids: list[str], n: int, seed: int) -> list[str]:
    """The first n of a seeded permutation of the sorted ids, in the order drawn (prefixes are nested)."""
    ordered = sorted(ids)
    return [ordered[i] for i in np.random.default_rng(seed).permutation(len(ordered))[:n]]


def validation_count(n_budget: int, val_fraction: float, val_max_images: int | None = None) -> int:
    """How many of a budget's images validate (protocol `budget`): a `val_fraction` share, at least one,
    at most `val_max_images` and never all; none below MIN_VALIDATED_BUDGET or with val_fraction 0."""
    if val_fraction <= 0 or n_budget < MIN_VALIDATED_BUDGET:
        return 0
    n = max(1, round(n_budget * val_fraction))
    if val_max_images is not None:
        n = min(n, val_max_images)
    return min(n, n_budget - 1)


@dataclass(frozen=True)
class LabelBudget:
    """Which images one run trains on, validates on and is tested on, and which it sees without labels."""

    validation: Validation
    train: list[str]  # labelled images the network trains on
    val: list[str]  # labelled images that choose the epoch and the post-processing thresholds
    test: list[str]
    unlabeled: list[str]  # never a test image; its labels, if any, are not used by the run

    @property
    def n_labelled_total(self) -> int:
        """Every annotation the run uses before testing: training and validation images."""
        return len(self.train) + len(self.val)

    def as_split(self) -> dict[str, list[str]]:
        return {"train": self.train, "val": self.val, "test": self.test, "unlabeled": self.unlabeled}


def assign_budget(
    split: dict[str, list[str]],
    ids: list[str],
    labelled_ids: list[str],
    *,
    validation: Validation,
    seed: int,
    val_fraction: float,
    label_fraction: float | None = None,
    labelled_images: int | None = None,
    val_max_images: int | None = None,
) -> LabelBudget:
    """Draw one run's labelled images from a dataset split (see the module docstring for the protocols).

    `ids` are all images of the dataset, `labelled_ids` those with a label; the split's test (and, with
    `fixed`, val) images must be labelled. With `budget`, the val images of a split file written for the
    fixed protocol join the candidates. Everything outside train, val and test is the unlabeled pool."""
    labelled = set(labelled_ids)
    if validation == "budget":
        candidates = [i for i in split["train"] + split["val"] if i in labelled]
        n = budget_size(
            len(candidates), label_fraction, labelled_images, "labelled images outside the test split"
        )
        drawn = _drawn(candidates, n, seed)
        n_val = validation_count(n, val_fraction, val_max_images)
        val, train = sorted(drawn[:n_val]), sorted(drawn[n_val:])
    else:
        candidates = [i for i in split["train"] if i in labelled]
        n = budget_size(len(candidates), label_fraction, labelled_images, "labelled training images")
        train = sorted(_drawn(candidates, n, seed))
        val = list(split["val"][:val_max_images] if val_max_images else split["val"])
    used = set(train) | set(val) | set(split["test"])
    unlabeled = sorted(i for i in ids if i not in used)
    return LabelBudget(validation, train, val, list(split["test"]), unlabeled)
