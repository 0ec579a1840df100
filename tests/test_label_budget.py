"""The honest annotation budget end to end: what a run counts, folders with only some images annotated, the
small-budget fixed schedule, the fixed-validation option and a study whose budgets are image counts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from test_faults import sslseg

from sslseg.config import FinetuneConfig, load_config
from sslseg.data.synth import write_synthetic_dataset
from sslseg.errors import ConfigError
from sslseg.evaluate import load_model
from sslseg.finetune import finetune, tune_run
from sslseg.study.runner import prepare, run_job
from sslseg.study.spec import StudyConfig, split_path

TINY = {
    "model": {"encoder": "resnet18", "decoder_channels": [16, 8, 8, 8, 8]},
    "train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 2, "crop_size": 32},
    "inference": {"tile_size": 64},
}


@pytest.fixture(scope="module")
def partly_labelled(tmp_path_factory) -> Path:
    """10 images of which 6 are annotated (labels of synth_0006..0009 removed)."""
    root = write_synthetic_dataset(tmp_path_factory.mktemp("partly"), n_images=10, size=48, seed=3)
    for i in range(6, 10):
        (root / "labels" / f"synth_{i:04d}.tif").unlink()
    return root


def _cfg(data: dict, out: Path, **train) -> FinetuneConfig:
    tree = {**TINY, "data": {"task": "instance", **data}, "output": str(out)}
    tree["train"] = {**TINY["train"], **train}
    return load_config(FinetuneConfig, overrides=tree)


def _result(out: Path) -> dict:
    return json.loads((out / "result.json").read_text())


def test_partly_labelled_folder_trains_on_its_labelled_images_and_reports_the_pool(partly_labelled, tmp_path):
    cfg = _cfg({"train": partly_labelled, "test_fraction": 0.34, "val_fraction": 0.25}, tmp_path / "run")
    finetune(cfg, progress=False)
    r = _result(tmp_path / "run")
    # 6 labelled: 2 test, a budget of the other 4 (1 of them validates), 4 unlabeled images in the pool
    assert (r["n_test"], r["n_labelled_total"], r["n_labelled_train"], r["n_val"]) == (2, 4, 3, 1)
    assert r["n_unlabeled"] == 4 and r["validation"] == "budget"
    assert r["checkpoint"] == "best validation score"
    split = json.loads((tmp_path / "run" / "split.json").read_text())
    unlabeled = [f"synth_{i:04d}" for i in range(6, 10)]
    assert split["unlabeled"] == unlabeled
    assert not set(unlabeled) & set(split["train"] + split["val"] + split["test"])
    assert len(split["train"]) + len(split["val"]) == r["n_labelled_total"]


def test_a_budget_too_small_to_validate_trains_a_fixed_schedule_with_default_thresholds(
    partly_labelled, tmp_path
):
    cfg = _cfg({"train": partly_labelled, "labelled_images": 3}, tmp_path / "run", epochs=3, patience=1)
    res = finetune(cfg, progress=False)
    r = res.summary
    assert (r["n_labelled_total"], r["n_labelled_train"], r["n_val"], r["n_test"]) == (3, 3, 0, 0)
    assert r["n_unlabeled"] == 7  # 4 without a label and 3 whose labels this budget does not use
    # no early stopping and no choice of epoch: every epoch runs and the last one is the model
    assert r["epochs_run"] == 3 and r["checkpoint"] == "last epoch (no validation images)"
    last = torch.load(res.output / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    best = torch.load(res.best_checkpoint, map_location="cpu", weights_only=False)
    assert all(torch.equal(v, best["state_dict"][k]) for k, v in last["state_dict"].items())
    # no thresholds tuned on zero images: the configured post-processing is what predict uses
    assert r["postprocess_tuning"] == {}
    assert load_model(res.best_checkpoint, device="cpu").cfg.postprocess == cfg.postprocess
    with pytest.raises(ConfigError, match="no validation images"):
        tune_run(res.output, progress=False)


def test_label_fraction_and_labelled_images_are_exclusive(tmp_path, capsys):
    with pytest.raises(ConfigError, match="both choose the labelled budget"):
        _cfg({"label_fraction": 0.1, "labelled_images": 8}, tmp_path / "run")
    args = ("finetune", "--train", str(tmp_path), "--label-fraction", "0.1", "--labelled-images", "8")
    code, _, err = sslseg(capsys, *args, "-o", str(tmp_path / "run"))
    assert code == 2 and "both choose the labelled budget; set only one" in err


def test_a_study_over_image_counts_keeps_the_fixed_validation_and_stores_the_labelled_count(tmp_path):
    data = write_synthetic_dataset(tmp_path / "data", n_images=10, size=48, seed=5)
    (data / "labels" / "synth_0009.tif").unlink()  # one image without a label: it joins the pool
    dataset = {
        "name": "synth",
        "train": str(data),
        "task": "instance",
        "validation": "fixed",
        "val_fraction": 0.25,
        "test_fraction": 0.25,
    }
    tree = {
        "output": str(tmp_path / "study"),
        "datasets": [dataset],
        "pretrainings": [{"name": "random", "init": "random"}],
        "labelled_images": [4, 2],
        "finetune": TINY,
    }
    study = StudyConfig.model_validate(tree)
    cells = [j for j in prepare(study) if j.kind == "finetune"]
    assert [j.key for j in cells] == ["synth/random/finetuned/n2/s0", "synth/random/finetuned/n4/s0"]
    assert [(j.fraction, j.labelled_images) for j in cells] == [(None, 2), (None, 4)]
    assert {j.config["data"]["validation"] for j in cells} == {"fixed"}
    split = json.loads(split_path(study, study.datasets[0]).read_text())
    assert (len(split["train"]), len(split["val"]), len(split["test"])) == (5, 2, 2)  # 9 labelled
    assert split["unlabeled"] == ["synth_0009"]
    row = {"kind": "finetune", "config": cells[0].config, "resumed": False}
    metrics, _, info = run_job(row)
    # the 2 training images of the budget plus the 2 fixed validation images
    assert (info["n_labelled_total"], info["n_labelled_train"], info["n_val"]) == (4, 2, 2)
    assert 0.0 <= metrics["aji"] <= 1.0


@pytest.mark.parametrize(
    ("axes", "message"),
    [
        ({"label_fractions": [0.5], "labelled_images": [4]}, "exactly one of label_fractions"),
        ({}, "exactly one of label_fractions"),
        ({"labelled_images": [4, 4]}, "repeat"),
        ({"labelled_images": [0]}, "at least 1"),
    ],
)
def test_study_budget_axis_errors(tmp_path, axes, message):
    tree = {
        "datasets": [{"name": "d", "train": str(tmp_path)}],
        "pretrainings": [{"name": "random", "init": "random"}],
        **axes,
    }
    with pytest.raises(Exception, match=message):
        StudyConfig.model_validate(tree)


def test_pretraining_on_a_split_sees_the_unlabeled_images_and_never_the_test_images(
    partly_labelled, tmp_path
):
    from sslseg.config import PretrainConfig
    from sslseg.data.layouts import find_samples
    from sslseg.data.splits import dataset_split, save_split
    from sslseg.pretrain import pretrain

    samples = find_samples(partly_labelled, allow_unlabeled=True)
    ids, labelled = [s.id for s in samples], [s.id for s in samples if s.label is not None]
    split = dataset_split(ids, labelled, 0.15, 0.34, seed=0)
    save_split(tmp_path / "split.json", split)
    cfg = {
        "method": "simclr",
        "params": {"proj_hidden": 32, "proj_dim": 16},
        "data": {"path": str(partly_labelled), "split_file": str(tmp_path / "split.json")},
        "views": {"size": 16},
        "train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 2},
        "output": str(tmp_path / "pre"),
    }
    res = pretrain(PretrainConfig.model_validate(cfg), progress=False)
    assert len(split["test"]) == 2 and len(split["unlabeled"]) == 4
    assert res.summary["n_images"] == 10 - 2  # the 4 labelled training images and the 4 unlabeled ones
