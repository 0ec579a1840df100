import pytest

from sslseg.data.splits import (
    MIN_VALIDATED_BUDGET,
    assign_budget,
    dataset_split,
    load_split,
    make_split,
    save_split,
    validation_count,
)
from sslseg.errors import ConfigError, DataError

IDS = [f"img{i:03d}" for i in range(100)]


def _budget(split, validation="budget", seed=0, ids=IDS, labelled=IDS, **kw):
    kw.setdefault("val_fraction", 0.15)
    return assign_budget(split, ids, labelled, validation=validation, seed=seed, **kw)


def test_split_is_disjoint_complete_and_seeded():
    s = make_split(IDS, 0.15, 0.2, seed=3)
    assert len(s["val"]) == 15 and len(s["test"]) == 20 and len(s["train"]) == 65
    assert set(s["train"]) | set(s["val"]) | set(s["test"]) == set(IDS)
    assert not set(s["train"]) & set(s["val"])
    assert make_split(IDS, 0.15, 0.2, seed=3) == s
    assert make_split(IDS, 0.15, 0.2, seed=4) != s


@pytest.mark.parametrize("validation", ["budget", "fixed"])
def test_budgets_are_nested_per_seed_differ_across_seeds_and_keep_the_test_split(validation):
    def drawn(b):  # the images the budget drew (with 'fixed', validation is not drawn but fixed)
        return set(b.train) | (set(b.val) if validation == "budget" else set())

    split = dataset_split(IDS, IDS, 0.15, 0.2, seed=0, validation=validation)
    by_count = [_budget(split, validation, seed=1, labelled_images=n) for n in (4, 8, 16, 32)]
    by_fraction = [_budget(split, validation, seed=1, label_fraction=f) for f in (0.1, 0.5)]
    for small, large in [*zip(by_count[:-1], by_count[1:], strict=True), (by_fraction[0], by_fraction[1])]:
        assert drawn(small) < drawn(large)
        assert small.test == large.test == split["test"]
    # one permutation whichever way the budget is given
    same_size = _budget(split, validation, seed=1, labelled_images=len(drawn(by_fraction[0])))
    assert drawn(same_size) == drawn(by_fraction[0])
    other = _budget(split, validation, seed=2, labelled_images=8)
    assert drawn(other) != drawn(by_count[1]) and other.test == split["test"]


def test_budget_protocol_takes_validation_out_of_the_budget_and_counts_it():
    split = dataset_split(IDS, IDS, 0.15, 0.2, seed=0, validation="budget")
    assert split["val"] == [] and len(split["test"]) == 20  # the same test images as the fixed protocol
    assert split["test"] == dataset_split(IDS, IDS, 0.15, 0.2, seed=0, validation="fixed")["test"]
    b = _budget(split, labelled_images=16)
    assert (len(b.train), len(b.val), b.n_labelled_total) == (14, 2, 16)
    assert not set(b.train) & set(b.val) and not (set(b.train) | set(b.val)) & set(b.test)
    # the pool is every other non-test image: never a test image, never one whose label is used
    assert len(b.unlabeled) == 100 - 20 - 16 and not set(b.unlabeled) & (
        set(b.test) | set(b.train) | set(b.val)
    )
    # the fixed protocol counts its validation images on top of the budget
    fixed = dataset_split(IDS, IDS, 0.15, 0.2, seed=0, validation="fixed")
    f = _budget(fixed, "fixed", labelled_images=16)
    assert (len(f.train), len(f.val), f.n_labelled_total) == (16, 15, 31)
    assert f.val == fixed["val"] == _budget(fixed, "fixed", labelled_images=4).val


def test_small_budgets_have_no_validation():
    assert [validation_count(n, 0.15) for n in (1, 2, 3, 4, 8, 16, 32)] == [0, 0, 0, 1, 1, 2, 5]
    assert MIN_VALIDATED_BUDGET == 4 and validation_count(100, 0.0) == 0
    assert validation_count(32, 0.15, val_max_images=3) == 3 and validation_count(4, 0.9) == 3
    split = dataset_split(IDS, IDS, 0.15, 0.0, seed=0)
    b = _budget(split, labelled_images=3)
    assert (len(b.train), b.val, b.n_labelled_total) == (3, [], 3)


def test_only_labelled_images_are_split_and_the_rest_is_the_pool():
    labelled = IDS[::10]  # 10 of 100 annotated
    split = dataset_split(IDS, labelled, 0.15, 0.2, seed=0)
    assert set(split["train"]) | set(split["test"]) == set(labelled) and len(split["test"]) == 2
    assert split["unlabeled"] == sorted(set(IDS) - set(labelled))
    b = _budget(split, labelled=labelled)  # no budget given: every labelled image outside the test split
    assert b.n_labelled_total == 8 and set(b.train) | set(b.val) <= set(labelled)
    assert len(b.unlabeled) == 90
    with pytest.raises(ConfigError, match="labelled_images=9 but there are only 8 labelled images outside"):
        _budget(split, labelled=labelled, labelled_images=9)
    with pytest.raises(ConfigError, match="none of the 100 images has a label"):
        dataset_split(IDS, [], 0.15, 0.2, seed=0)


def test_budget_settings_are_exclusive_and_too_small_fractions_say_what_works():
    split = dataset_split(IDS, IDS, 0.15, 0.0, seed=0)
    with pytest.raises(ConfigError, match="both choose the labelled budget"):
        _budget(split, label_fraction=0.1, labelled_images=8)
    with pytest.raises(ConfigError, match="label_fraction=0.005 of 100 labelled .* use at least 0.0100"):
        _budget(split, label_fraction=0.005)


def test_split_file_round_trip_and_unknown_ids(tmp_path):
    s = dataset_split(IDS, IDS[:90], 0.1, 0.1, seed=0, validation="fixed")
    save_split(tmp_path / "split.json", s)
    assert load_split(tmp_path / "split.json", IDS) == s
    with pytest.raises(DataError, match="not in the dataset"):
        load_split(tmp_path / "split.json", IDS[:50])


def test_too_small_to_split():
    with pytest.raises(ConfigError, match="at least one training image"):
        make_split(["a", "b"], 0.5, 0.5)
