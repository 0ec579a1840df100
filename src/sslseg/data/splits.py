"""Train/val/test splits and the label-fraction protocol.

The validation and test splits are drawn once from `split_seed`, independently of the label fraction and
of the run seed, so every cell of a study is selected and scored on the same images. The labelled subset
is a prefix of a seeded permutation of the training ids: for one seed, the 10 % set lies inside the 25 % set.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from sslseg.atomic import write_json
from sslseg.errors import ConfigError, DataError


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
        raise DataError(path, "a split file needs at least a 'train' list (and optionally 'val', 'test')")
    known = set(known_ids)
    for part, ids in split.items():
        missing = [i for i in ids if i not in known]
        if missing:
            raise DataError(
                path, f"{len(missing)} ids in '{part}' are not in the dataset, e.g. {missing[:3]}"
            )
    return {k: list(split.get(k, [])) for k in ("train", "val", "test")}


def labelled_subset(train_ids: list[str], fraction: float, seed: int) -> list[str]:
    """The labelled part of the training ids for a label fraction, nested across fractions for one seed.

    The count is rounded down (never up: a study's 10 % must not label more than 10 %); a fraction that
    leaves no image is an error saying the smallest fraction that labels one."""
    if not 0 < fraction <= 1:
        raise ConfigError(f"data.label_fraction must be in (0, 1], got {fraction}")
    if not train_ids:
        raise ConfigError("the training split is empty: no image can be labelled")
    n = math.floor(len(train_ids) * fraction + 1e-9)
    if n < 1:
        raise ConfigError(
            f"data.label_fraction={fraction} of {len(train_ids)} training images leaves no labelled "
            f"image; use at least {math.ceil(1e4 / len(train_ids)) / 1e4:.4f}"
        )
    order = np.random.default_rng(seed).permutation(len(train_ids))
    ordered = sorted(train_ids)
    return sorted(ordered[i] for i in order[:n])
