"""Semi-supervised fine-tuning (cfg.semi): consistency losses by hand, a loss that falls when optimised, and a
run that really learns from its unlabeled images (and never from validation or test images)."""

import csv
import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import semi_instance_config

from sslseg.augment.segmentation import cutmix
from sslseg.data.synth import write_synthetic_dataset
from sslseg.finetune import finetune
from sslseg.losses.consistency import class_consistency, map_consistency
from sslseg.segmentation.module import SegmentationModule


def test_class_consistency_uses_confident_pixels_only():
    teacher = torch.tensor([[[[0.95, 0.6]], [[0.05, 0.4]]]])  # 1×2×1×2: pixel 0 sure of class 0, pixel 1 not
    student = torch.tensor([[[[0.0, 3.0]], [[1.0, -3.0]]]])
    loss, used = class_consistency(student, teacher, confidence=0.9)
    by_hand = F.cross_entropy(student[..., :1], torch.tensor([[[0]]])) / 2  # averaged over both pixels
    assert torch.isclose(loss, by_hand) and used == 0.5
    with pytest.raises(ValueError, match="confidence"):
        class_consistency(student, teacher, confidence=0.3)


def test_map_consistency_pseudo_labels_binary_maps_and_regresses_the_rest():
    teacher = torch.tensor([[[[0.97, 0.5]], [[0.8, 0.2]]]])  # foreground; distance
    student = torch.zeros(1, 2, 1, 2)
    loss, used = map_consistency(student, teacher, binary=(0,), confidence=0.9)
    # foreground: pixel 0 is pseudo-labelled 1 (BCE of logit 0 = log 2), pixel 1 skipped;
    # distance: only where the foreground is sure, (0.5 - 0.8)^2; each term averaged over both pixels
    by_hand = math.log(2) / 2 + (0.5 - 0.8) ** 2 / 2
    assert loss.item() == pytest.approx(by_hand, rel=1e-5) and used == 0.5
    with pytest.raises(ValueError, match="channel 0"):
        map_consistency(student, teacher, binary=(1,), confidence=0.9)


def test_consistency_loss_is_finite_and_falls_when_the_student_learns():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 16, 16)
    with torch.no_grad():  # a teacher the student can imitate: another filter of the same image
        teacher = (3 * torch.nn.Conv2d(1, 3, 3, padding=1)(x)).sigmoid()
    net = torch.nn.Conv2d(1, 3, 3, padding=1)
    opt = torch.optim.SGD(net.parameters(), lr=0.5)
    losses = []
    for _ in range(30):
        loss, _ = map_consistency(net(x), teacher, binary=(0, 2), confidence=0.6)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(math.isfinite(v) for v in losses) and losses[-1] < 0.5 * losses[0]


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("semi"), n_images=10, size=80, seed=3)


def test_semi_supervised_run_learns_from_the_unlabeled_training_images(nuclei, tmp_path, monkeypatch):
    drawn = []
    original = SegmentationModule._next_unlabeled

    def spy(self):
        batch = original(self)
        drawn.append(batch.clone())
        return batch

    monkeypatch.setattr(SegmentationModule, "_next_unlabeled", spy)
    res = finetune(
        semi_instance_config(nuclei, tmp_path / "semi", {"enabled": True, "rampup": 0.0}), progress=False
    )
    split = json.loads((res.output / "split.json").read_text())
    n_unlabeled = len(split["unlabeled"])  # the training images outside the labelled budget
    assert n_unlabeled > 0 and res.summary["n_unlabeled_used"] == n_unlabeled
    assert len(drawn) == 3 and drawn[0].shape == (2, 1, 64, 64)  # one unlabeled batch per step
    rows = list(csv.DictReader((res.output / "logs" / "metrics.csv").open()))
    logged = [float(r["train/unlabeled_loss"]) for r in rows if r.get("train/unlabeled_loss")]
    assert logged and all(math.isfinite(v) and v > 0 for v in logged)
    # the checkpoint holds the student alone, as a supervised run's does
    state = torch.load(res.best_checkpoint, map_location="cpu", weights_only=False)["state_dict"]
    assert not any("teacher" in k for k in state)


def test_unlabeled_pool_never_holds_validation_or_test_images(nuclei, tmp_path, monkeypatch):
    import sslseg.finetune as ft

    seen = {}
    original = ft.load_samples

    def spy(samples, *args, with_labels=True, **kwargs):
        if not with_labels:
            seen["pool"] = [s.id for s in samples]
        return original(samples, *args, with_labels=with_labels, **kwargs)

    monkeypatch.setattr(ft, "load_samples", spy)
    res = finetune(semi_instance_config(nuclei, tmp_path / "run", {"enabled": True}), progress=False)
    split = json.loads((res.output / "split.json").read_text())
    held_out = set(split["val"]) | set(split["test"])
    assert seen["pool"] and not held_out & set(seen["pool"])
    assert set(seen["pool"]) == set(split["unlabeled"])


def test_supervised_runs_draw_no_unlabeled_images(nuclei, tmp_path, monkeypatch):
    monkeypatch.setattr(SegmentationModule, "_next_unlabeled", lambda self: pytest.fail("drew unlabeled"))
    res = finetune(semi_instance_config(nuclei, tmp_path / "sup", {"enabled": False}), progress=False)
    assert res.summary["n_unlabeled_used"] == 0
    assert np.isfinite(res.test["aji"])


def test_dice_term_makes_missing_the_rare_foreground_costly():
    teacher = torch.full((2, 3, 20, 20), 0.01)
    teacher[:, 0, :2, :10] = 0.99  # 5 % confident foreground, the rest confident background
    teacher[:, 2, 0, :5] = 0.99  # a few contact pixels
    misses = torch.full_like(teacher, -5.0)  # a student that predicts background everywhere
    plain, _ = map_consistency(misses, teacher, binary=(0, 2), confidence=0.9)
    with_dice, _ = map_consistency(misses, teacher, binary=(0, 2), confidence=0.9, dice=True)
    assert with_dice - plain > 1.5  # two binary maps whose every foreground pixel is missed
    right = torch.where(teacher > 0.5, 8.0, -8.0)  # a student sure of the teacher's decisions
    assert map_consistency(right, teacher, binary=(0, 2), confidence=0.9, dice=True)[0] < 0.2
    # the class-map form: a rare class missed entirely costs its share of the mean Dice
    probs = torch.zeros(2, 3, 20, 20)
    probs[:, 0] = 0.98
    probs[:, 1, :2] = 0.98
    probs[:, 0, :2] = 0.01
    probs[:, 2] = 0.01
    probs[:, 2, 5:6, :4] = 0.98
    probs[:, 0, 5:6, :4] = 0.01
    guess_background = torch.zeros_like(probs)
    guess_background[:, 0] = 8.0
    plain, _ = class_consistency(guess_background, probs, confidence=0.9)
    with_dice, _ = class_consistency(guess_background, probs, confidence=0.9, dice=True)
    assert with_dice - plain > 0.6  # two of three classes missed


def test_cutmix_pastes_the_same_box_into_image_and_maps():
    torch.manual_seed(0)
    images = torch.arange(4.0)[:, None, None, None].expand(4, 2, 32, 32).clone()
    maps = 10 + images[:, :1].clone()
    mixed, mixed_maps = cutmix(images, maps, area=(0.25, 0.5))
    for i in range(4):
        donor = (i - 1) % 4
        pasted = mixed[i, 0] == donor
        assert torch.equal(mixed_maps[i, 0] == 10 + donor, pasted)  # the maps follow the image
        assert torch.equal(mixed[i, 1] == donor, pasted)  # every channel alike
        share = pasted.float().mean().item()
        assert 0.2 <= share <= 0.5
        ys, xs = pasted.nonzero(as_tuple=True)
        assert pasted[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()  # one box
    one, one_maps = cutmix(images[:1], maps[:1])
    assert torch.equal(one, images[:1]) and torch.equal(one_maps, maps[:1])


def test_semi_supervised_run_with_cutmix_and_dice(nuclei, tmp_path, monkeypatch):
    import sslseg.segmentation.module as module

    calls = []
    original = module.cutmix

    def spy(images, maps, *args, **kwargs):
        calls.append((images.shape, maps.shape))
        return original(images, maps, *args, **kwargs)

    monkeypatch.setattr(module, "cutmix", spy)
    # confidence 0.5 keeps every pixel, so that the loss is not zero by an unsure untrained teacher
    semi = {"enabled": True, "rampup": 0.0, "cutmix": True, "dice": True, "confidence": 0.5}
    res = finetune(semi_instance_config(nuclei, tmp_path / "mix", semi), progress=False)
    assert len(calls) == 3 and calls[0][0][0] == calls[0][1][0] == 2
    rows = list(csv.DictReader((res.output / "logs" / "metrics.csv").open()))
    logged = [float(r["train/unlabeled_loss"]) for r in rows if r.get("train/unlabeled_loss")]
    assert logged and all(math.isfinite(v) and v > 0 for v in logged)


class _Stop(Exception):
    """Raised by a spy once it has seen what it checks, so that nothing trains."""


@pytest.mark.parametrize("method", ["mean_teacher", "self_training"])
def test_copies_of_test_images_never_reach_the_unlabeled_pool(tmp_path, monkeypatch, method):
    import shutil

    import tifffile
    from PIL import Image

    import sslseg.finetune as ft
    from sslseg.data.io import read_image
    from sslseg.data.layouts import find_samples

    data = write_synthetic_dataset(tmp_path / "data", n_images=8, size=48, seed=5)
    cfg = semi_instance_config(
        data, tmp_path / "run", {"enabled": True, "method": method, "unlabeled": tmp_path / "more"}
    )
    cfg.data.test_fraction = 0.25
    # the test images are drawn among the labelled images only: images added without labels keep them
    test = ft.resolve_splits(cfg, find_samples(data)).test
    assert len(test) == 2
    first, second = (data / "images" / f"{i}.tif" for i in test)
    # a second export of a test image in the training folder (PNG, unlabeled, another name) ...
    Image.fromarray(read_image(first)[..., 0]).save(data / "images" / "scan_17.png")
    # ... and in semi.unlabeled: a renamed copy, a same-named file (other pixels), a new image
    more = tmp_path / "more"
    more.mkdir()
    tifffile.imwrite(more / "renamed.tif", read_image(second)[..., 0])
    other = read_image(first)[..., 0].copy()
    other[0, 0] ^= 1
    tifffile.imwrite(more / f"{test[1]}.tif", other)
    new = write_synthetic_dataset(tmp_path / "new", n_images=1, size=48, seed=9) / "images" / "synth_0000.tif"
    shutil.copy(new, more / "new.tif")

    seen = {}

    def spy(cfg, *args):  # the first reader of the pool, whichever the method
        seen["pool"] = args[1] if method == "self_training" else args[0]
        raise _Stop

    monkeypatch.setattr(ft, "_self_training" if method == "self_training" else "_unlabeled_pool", spy)
    budget = ft.resolve_splits(cfg, find_samples(data, allow_unlabeled=True))
    assert budget.test == test and "scan_17" in budget.unlabeled
    offered = len(budget.unlabeled) + 3  # the training folder's unlabeled images and semi.unlabeled's
    left_out = f"left 3 of {offered} unlabeled images out"
    with pytest.warns(UserWarning, match=left_out) as w, pytest.raises(_Stop):
        ft.finetune(cfg, progress=False)
    message = next(str(m.message) for m in w if "left 3 of" in str(m.message))
    # each line names the copy and the test image it copies
    assert f"scan_17.png (same pixels as test image {first})" in message
    assert f"renamed.tif (same pixels as test image {second})" in message
    assert f"{test[1]}.tif (same sample id as test image {second})" in message
    # the unlabeled training images and the new one; none of the copies
    pool = [s.image for s in seen["pool"]]
    assert pool == [data / "images" / f"{i}.tif" for i in budget.unlabeled if i != "scan_17"] + [
        more / "new.tif"
    ]


def test_a_separate_test_set_guards_the_unlabeled_pool_too(tmp_path, monkeypatch):
    import sslseg.finetune as ft
    from sslseg.data.io import read_image, write_image

    data = write_synthetic_dataset(tmp_path / "data", n_images=5, size=48, seed=5)
    test = write_synthetic_dataset(tmp_path / "test", n_images=6, size=48, seed=6)
    for sub in ("images", "labels"):  # names of its own (a namesake would be left out by its id)
        for p in (test / sub).iterdir():
            p.rename(p.with_name("t" + p.name))
    write_image(data / "images" / "extra.tif", read_image(test / "images" / "tsynth_0005.tif"))  # unlabeled
    cfg = semi_instance_config(data, tmp_path / "run", {"enabled": True})
    cfg.data.test, cfg.data.test_fraction = test, 0.0
    seen = {}

    def spy(cfg, samples, *args):
        seen["pool"] = [s.id for s in samples]
        raise _Stop

    monkeypatch.setattr(ft, "_unlabeled_pool", spy)
    with (
        pytest.warns(
            UserWarning, match="extra.tif \\(same pixels as test image .*test/images/tsynth_0005.tif"
        ),
        pytest.raises(_Stop),
    ):
        ft.finetune(cfg, progress=False)
    assert seen["pool"] and "extra" not in seen["pool"]
