"""Self-training (semi.method self_training): a teacher fine-tuned on the labels pseudo-labels unlabeled
images, the surest of them train the student beside the labels, and no held-out label is ever read."""

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import semi_instance_config

import sslseg.finetune as ft
from sslseg.config import FinetuneConfig
from sslseg.data.datasets import LoadedSample, RandomCropDataset
from sslseg.data.layouts.base import LabelSource, Sample
from sslseg.data.synth import write_synthetic_dataset
from sslseg.finetune import finetune
from sslseg.segmentation.pseudo_labels import image_sureness, pseudo_label
from sslseg.segmentation.tasks import task_named
from sslseg.study.estimate import job_steps


def test_image_sureness_counts_unsure_pixels_against_the_objects_only():
    foreground = np.zeros((10, 10), bool)
    certainty = np.ones((10, 10))
    assert image_sureness(certainty, foreground, 0.9) is None  # nothing found: nothing to learn from
    foreground[:2] = True  # 20 object pixels, all sure
    assert image_sureness(certainty, foreground, 0.9) == 1.0
    certainty[2:4] = 0.6  # 20 unsure background pixels beside them; the other 60 are sure background
    assert image_sureness(certainty, foreground, 0.9) == pytest.approx(0.5)
    certainty[0] = 0.6  # 10 of the object pixels unsure too: 30 unsure of the 40 that count
    assert image_sureness(certainty, foreground, 0.9) == pytest.approx(0.25)


def test_tasks_say_how_sure_each_pixel_is_and_what_is_foreground():
    fg = np.array([[0.95, 0.5], [0.2, 0.02]])
    certainty, foreground = task_named("instance").certainty(np.stack([fg, np.zeros_like(fg)]))
    np.testing.assert_allclose(certainty, [[0.95, 0.5], [0.8, 0.98]])
    assert foreground.tolist() == [[True, True], [False, False]]
    classes = np.array([[[0.7, 0.1]], [[0.2, 0.1]], [[0.1, 0.8]]])  # 3 classes, a 1×2 image
    certainty, foreground = task_named("semantic").certainty(classes)
    np.testing.assert_allclose(certainty, [[0.7, 0.8]])
    assert foreground.tolist() == [[False, True]]


def test_crops_follow_the_sample_weights():
    samples = [
        LoadedSample(
            str(i), np.full((1, 16, 16), i, np.float32), np.zeros((16, 16), np.int64), None, (16, 16)
        )
        for i in range(3)
    ]
    torch.manual_seed(0)
    crops = RandomCropDataset(samples, 8, 200, weights=[3, 1, 0])
    drawn = [int(crops[i][0][0, 0, 0]) for i in range(len(crops))]
    assert 2 not in drawn and 120 < drawn.count(0) < 180  # about three quarters, never a weight-0 sample
    with pytest.raises(ValueError, match="one non-negative weight per sample"):
        RandomCropDataset(samples, 8, 10, weights=[1, 1])


def test_self_training_fine_tunes_twice_in_the_estimate():
    config = {
        "train": {"epochs": 3, "steps_per_epoch": 10},
        "semi": {"enabled": True, "method": "self_training"},
    }
    assert job_steps({"config": config, "kind": "finetune"}) == 60
    config["semi"]["method"] = "mean_teacher"
    assert job_steps({"config": config, "kind": "finetune"}) == 30


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("self"), n_images=10, size=80, seed=3)


def _cfg(data, out, **semi) -> FinetuneConfig:
    """The shared small semi-supervised run (`semi_instance_config`), 4 steps, by self-training."""
    return semi_instance_config(
        data, out, {"enabled": True, "method": "self_training", **semi}, steps_per_epoch=4
    )


class _Unreadable(LabelSource):
    """A label that must not be read: pseudo-labelling sees images only."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def load(self, shape=None):
        pytest.fail(f"read the label of {self.path}")


def test_self_training_run_trains_the_student_on_the_teachers_pseudo_labels(nuclei, tmp_path, monkeypatch):
    seen = {}
    original_label, original_crops = ft.pseudo_label, ft.RandomCropDataset

    def spy_label(teacher, samples, *args, **kwargs):
        seen["teacher"] = {k: v.clone() for k, v in teacher.state_dict().items()}
        seen["offered"] = [s.id for s in samples]
        # the labelled images outside the budget offer their images only: their labels are never read
        blind = [Sample(s.id, s.image, _Unreadable(s.image)) for s in samples]
        kept, sureness = original_label(teacher, blind, *args, **kwargs)
        seen["kept"] = {s.id: s.label.load() for s in kept}
        return kept, sureness

    def spy_crops(samples, *args, weights=None, **kwargs):
        seen["trained_on"] = list(samples)
        seen["weights"] = weights
        return original_crops(samples, *args, weights=weights, **kwargs)

    def spy_fit(trainer, module, *args, **kwargs):  # the student starts where the teacher ended
        if module.cfg.semi.enabled:
            state = module.state_dict()
            assert all(torch.equal(state[k], v) for k, v in seen["teacher"].items())
        return original_fit(trainer, module, *args, **kwargs)

    import lightning as L

    original_fit = L.Trainer.fit
    monkeypatch.setattr(L.Trainer, "fit", spy_fit)
    monkeypatch.setattr(ft, "pseudo_label", spy_label)
    monkeypatch.setattr(ft, "RandomCropDataset", spy_crops)
    res = finetune(_cfg(nuclei, tmp_path / "st", pseudo_keep=1.0, labelled_share=0.25), progress=False)

    split = json.loads((res.output / "split.json").read_text())
    assert (res.output / "teacher" / "result.json").is_file()  # the teacher is a run of its own
    assert json.loads((res.output / "teacher" / "split.json").read_text()) == split  # on the same budget
    # every unlabeled training image is offered, never a validation or test one
    assert sorted(seen["offered"]) == sorted(split["unlabeled"])
    assert not set(seen["offered"]) & (set(split["val"]) | set(split["test"]))
    info = res.summary["self_training"]
    assert info["pseudo_labelled"] == len(split["unlabeled"]) and info["pseudo_kept"] == len(seen["kept"]) > 0
    assert res.summary["n_unlabeled_used"] == info["pseudo_kept"]
    assert res.summary["n_labelled_total"] == len(split["train"]) + len(
        split["val"]
    )  # pseudo-labels are not labels
    # the student's images: the labelled ones, then the pseudo-labelled ones, whose crops share 1 − 0.25
    n = len(split["train"])
    assert [s.id for s in seen["trained_on"][n:]] == list(seen["kept"])
    assert sum(seen["weights"][:n]) == pytest.approx(0.25) and sum(seen["weights"][n:]) == pytest.approx(0.75)
    assert all(s.target is not None for s in seen["trained_on"])
    # the teacher's time counts as fine-tuning time
    teacher_fit = json.loads((res.output / "teacher" / "result.json").read_text())["fit_seconds"]
    assert res.summary["fit_seconds"] > teacher_fit
    assert math.isfinite(res.test["aji"])


def test_pseudo_labels_keep_the_surest_share(nuclei, tmp_path):
    res = finetune(_cfg(nuclei, tmp_path / "st", pseudo_keep=1.0), progress=False)
    teacher = ft.load_model(res.output / "teacher" / "best.ckpt")
    split = json.loads((res.output / "split.json").read_text())
    samples = [s for s in ft.find_samples(nuclei, allow_unlabeled=True) if s.id in split["unlabeled"]]
    assert len(samples) >= 4
    # a teacher of known sureness (a tiny run's teacher is unsure everywhere): image k has the left half of
    # its pixels as objects, of which the share unsure[k] is unsure; image 1 finds nothing at all
    unsure = [0.5, None, 0.1, 0.3] + [0.9] * (len(samples) - 4)
    calls = []

    def probabilities(image, native_shape):
        k = len(calls)
        calls.append(k)
        fg = torch.full((1, *native_shape), 0.02)
        if unsure[k] is not None:
            w = native_shape[1] // 2
            fg[0, :, :w] = 0.99
            fg[0, : round(unsure[k] * native_shape[0]), :w] = 0.6
        return torch.cat([fg, fg, torch.zeros_like(fg)])  # foreground, distance, contact

    teacher.probabilities = probabilities
    channels = res.summary["in_channels"]
    every, sure_all = pseudo_label(teacher, samples, teacher.cfg.data, channels, 0.9, 1.0, progress=False)
    assert [s.id for s in every] == [samples[k].id for k in (2, 3, 0, *range(4, len(samples)))]
    assert sure_all == pytest.approx([0.9, 0.7, 0.5] + [0.1] * (len(samples) - 4), abs=0.02)
    calls.clear()
    half, sure_half = pseudo_label(teacher, samples, teacher.cfg.data, channels, 0.9, 0.5, progress=False)
    assert len(half) == math.ceil((len(samples) - 1) / 2) and sure_half == sure_all[: len(half)]
    assert [s.id for s in half] == [s.id for s in every[: len(half)]]
    # a pseudo-label is the teacher's segmentation of the image, at native resolution
    labels = half[0].label.load()
    assert labels.shape == (80, 80) and labels.max() >= 1  # the synthetic images' own size
    assert (labels[:, labels.shape[1] // 2 + 1 :] == 0).all() and (labels[:, :5] > 0).all()


def test_self_training_refuses_several_processes(nuclei, tmp_path):
    cfg = _cfg(nuclei, tmp_path / "st")
    cfg.train.devices = 2
    with pytest.raises(ft.ConfigError, match="one process"):
        finetune(cfg, progress=False)


class _Killed(Exception):
    """Stands for a kill: raised part-way through a phase, as a SIGKILL would stop it there."""


def _kill_on_call(monkeypatch, owner, name: str, n: int, calls: list) -> None:
    """Make `owner.name` raise `_Killed` on its `n`-th call (0: never); every call is counted in `calls`."""
    original = getattr(owner, name)

    def wrapped(*args, **kwargs):
        calls.append(name)
        if len(calls) == n:
            raise _Killed(f"{name} call {n}")
        return original(*args, **kwargs)

    monkeypatch.setattr(owner, name, wrapped)


def test_self_training_killed_in_each_phase_resumes_to_the_same_scores(tmp_path):
    import sslseg.segmentation.pseudo_labels as pl
    from sslseg.segmentation.module import SegmentationModule

    data = write_synthetic_dataset(tmp_path / "data", n_images=10, size=64, seed=3)
    cfg = _cfg(data, tmp_path / "whole", pseudo_keep=1.0, confidence=0.5)
    cfg.data.label_fraction = 0.5  # 4 labelled images (one validates), 4 unlabeled
    cfg.train = cfg.train.model_copy(
        update={
            "epochs": 2,
            "steps_per_epoch": 1,
            "crop_size": 32,
            "deterministic": True,
            "accelerator": "cpu",
        }
    )
    cfg.model.decoder_channels = [16, 16, 8, 8, 8]
    whole = finetune(cfg, progress=False)
    assert whole.summary["self_training"]["pseudo_kept"] >= 2  # the student learns from pseudo-labels

    cut = cfg.model_copy(update={"output": tmp_path / "cut"})
    out = cut.output
    assert not ft.can_resume(out)
    with pytest.raises(ft.ConfigError, match="no checkpoint to resume from"):
        finetune(cut, resume=True, progress=False)

    # 1. killed in the teacher's second epoch (one step each): only the teacher has a checkpoint
    with pytest.MonkeyPatch.context() as mp:
        _kill_on_call(mp, SegmentationModule, "training_step", 2, steps := [])
        with pytest.raises(_Killed):
            finetune(cut, progress=False)
    assert (out / "teacher" / "checkpoints" / "last.ckpt").is_file()
    assert not (out / "teacher" / "result.json").exists() and not (out / "checkpoints").exists()
    assert ft.can_resume(out)
    with pytest.raises(ft.ConfigError, match="holds checkpoints of an earlier run .*teacher"):
        finetune(cut, progress=False)  # a fresh start does not mix with the half-done teacher

    # 2. resumed, and killed after pseudo-labelling one image: the teacher is done, one pseudo-label kept
    with pytest.MonkeyPatch.context() as mp:
        _kill_on_call(mp, SegmentationModule, "training_step", 0, steps := [])
        _kill_on_call(mp, pl, "load_heldout", 2, labelled := [])
        with pytest.raises(_Killed):
            finetune(cut, resume=True, progress=False)
    assert len(steps) == 1  # the teacher's second epoch only
    assert (out / "teacher" / "result.json").is_file() and len(list((out / "pseudo_labels").iterdir())) == 1
    assert not (out / "checkpoints" / "last.ckpt").exists() and ft.can_resume(out)

    # 3. resumed, and killed in the student's second epoch: the first pseudo-label is read back
    with pytest.MonkeyPatch.context() as mp:
        _kill_on_call(mp, SegmentationModule, "training_step", 2, steps := [])
        _kill_on_call(mp, pl, "load_heldout", 0, labelled := [])
        with pytest.raises(_Killed):
            finetune(cut, resume=True, progress=False)
    offered = whole.summary["self_training"]["pseudo_labelled"]
    assert len(labelled) == offered - 1 and len(list((out / "pseudo_labels").iterdir())) == offered
    assert (out / "checkpoints" / "last.ckpt").is_file() and not (out / "result.json").exists()

    # 4. resumed to the end: the student's second epoch, no teacher, no pseudo-labelling
    with pytest.MonkeyPatch.context() as mp:
        _kill_on_call(mp, SegmentationModule, "training_step", 0, steps := [])
        _kill_on_call(mp, pl, "load_heldout", 0, labelled := [])
        resumed = finetune(cut, resume=True, progress=False)
    assert len(steps) == 1 and not labelled
    # deterministic CPU kernels, and RNG states restored from each checkpoint: identical, not merely close
    assert resumed.test == whole.test and math.isfinite(whole.test["aji"])
    # a tiny run scores little, so the weights themselves are compared: the student's chosen epoch
    a, b = (torch.load(r.best_checkpoint, weights_only=True)["state_dict"] for r in (whole, resumed))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert resumed.summary["best_val_score"] == whole.summary["best_val_score"]
    for key in ("teacher_test", "pseudo_labelled", "pseudo_kept", "sureness_kept"):
        assert resumed.summary["self_training"][key] == whole.summary["self_training"][key]
