from pathlib import Path

import pytest

from sslseg.config import FinetuneConfig
from sslseg.data.layouts import Sample
from sslseg.data.splits import labelled_subset, load_split, make_split, save_split
from sslseg.errors import ConfigError, DataError
from sslseg.finetune import resolve_splits

IDS = [f"img{i:03d}" for i in range(100)]


def test_split_is_disjoint_complete_and_seeded():
    s = make_split(IDS, 0.15, 0.2, seed=3)
    assert len(s["val"]) == 15 and len(s["test"]) == 20 and len(s["train"]) == 65
    assert set(s["train"]) | set(s["val"]) | set(s["test"]) == set(IDS)
    assert not set(s["train"]) & set(s["val"])
    assert make_split(IDS, 0.15, 0.2, seed=3) == s
    assert make_split(IDS, 0.15, 0.2, seed=4) != s


def test_label_fractions_are_nested_per_seed_and_differ_across_seeds():
    train = make_split(IDS, 0.2)["train"]
    small, large = labelled_subset(train, 0.1, seed=1), labelled_subset(train, 0.25, seed=1)
    assert len(small) == 8 and len(large) == 20
    assert set(small) <= set(large)
    assert labelled_subset(train, 0.25, seed=2) != large


def test_validation_does_not_depend_on_label_fraction():
    # a fine-tuning run draws its val/test split from split_seed alone: the label fraction and the training
    # seed change which training images are labelled, never which images validate and test
    samples = [Sample(i, Path(f"{i}.tif"), None) for i in IDS]

    def run_split(fraction: float, seed: int) -> tuple[dict[str, list[str]], list[str]]:
        cfg = FinetuneConfig.model_validate(
            {
                "data": {"val_fraction": 0.2, "test_fraction": 0.1, "label_fraction": fraction},
                "train": {"seed": seed},
            }
        )
        split = resolve_splits(cfg, samples)
        return split, labelled_subset(split["train"], fraction, seed)

    reference, _ = run_split(1.0, 0)
    for fraction in (0.1, 0.5):
        for seed in (0, 7):
            split, labelled = run_split(fraction, seed)
            assert (split["val"], split["test"]) == (reference["val"], reference["test"]), (fraction, seed)
            assert set(labelled) <= set(split["train"])
    other = FinetuneConfig.model_validate({"data": {"val_fraction": 0.2, "split_seed": 1}})
    assert resolve_splits(other, samples)["val"] != reference["val"]  # split_seed is what draws it


def test_fraction_leaving_no_image_is_a_clear_error():
    with pytest.raises(ConfigError, match="leaves no labelled image"):
        labelled_subset(IDS[:5], 0.1, seed=0)


def test_split_file_round_trip_and_unknown_ids(tmp_path):
    s = make_split(IDS, 0.1)
    save_split(tmp_path / "split.json", s)
    assert load_split(tmp_path / "split.json", IDS) == s
    with pytest.raises(DataError, match="not in the dataset"):
        load_split(tmp_path / "split.json", IDS[:50])


def test_too_small_to_split():
    with pytest.raises(ConfigError, match="at least one training image"):
        make_split(["a", "b"], 0.5, 0.5)
