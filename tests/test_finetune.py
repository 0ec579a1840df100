"""End-to-end fine-tuning on tiny synthetic data: both tasks, frozen encoders, resume, evaluate, predict."""

import json
import shutil
import warnings
from collections import defaultdict
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import numpy as np
import pytest
import tifffile
import torch

from sslseg.config import FinetuneConfig
from sslseg.data.io import write_image, write_label
from sslseg.data.synth import write_synthetic_dataset
from sslseg.evaluate import evaluate_checkpoint, load_model
from sslseg.finetune import finetune, tune_run
from sslseg.nn.unet import build_encoder
from sslseg.predict import predict_files
from sslseg.segmentation import module as module_mod
from sslseg.segmentation.module import SegmentationModule
from sslseg.weights import save_encoder

TINY_TRAIN = {"epochs": 2, "steps_per_epoch": 2, "batch_size": 2, "crop_size": 64}


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth"), n_images=10, size=96, seed=1)


def _cfg(data_dir: Path, out: Path, **sections) -> FinetuneConfig:
    raw = {
        "data": {"train": data_dir, "task": "instance", "val_fraction": 0.2, "test_fraction": 0.2},
        "model": {"encoder": "resnet18", "decoder_channels": [32, 16, 16, 8, 8]},
        "train": dict(TINY_TRAIN),
        "inference": {"tile_size": 64},
        "output": out,
    }
    for k, v in sections.items():
        raw[k] = {**raw.get(k, {}), **v}
    return FinetuneConfig.model_validate(raw)


def test_instance_run_writes_every_output_and_scores_the_test_split(nuclei, tmp_path):
    res = finetune(_cfg(nuclei, tmp_path / "run"), progress=False)
    out = res.output
    for name in ("config.yaml", "split.json", "best.ckpt", "result.json", "test_per_image.csv"):
        assert (out / name).is_file(), name
    # last.ckpt holds everything --resume needs; best.ckpt only what loading needs (a third of the size)
    last = torch.load(out / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    best = torch.load(out / "best.ckpt", map_location="cpu", weights_only=False)
    assert "optimizer_states" in last and "optimizer_states" not in best and "state_dict" in best
    assert (out / "best.ckpt").stat().st_size < 0.5 * (out / "checkpoints" / "last.ckpt").stat().st_size
    assert res.summary["n_test"] == 2 and res.summary["n_val"] == 2 and res.summary["n_labelled_train"] == 6
    assert 0.0 <= res.summary["last_val_score"] <= res.summary["best_val_score"]  # the last epoch's, not best
    for key in ("aji", "aji_plus", "pq", "dsb_score", "f1@0.5"):
        assert 0.0 <= res.test[key] <= 1.0
    # post-processing was tuned on the validation split and stored in the checkpoint that predict uses
    tuning = res.summary["postprocess_tuning"]
    assert tuning["val_score_tuned"] >= tuning["val_score_default"]
    assert load_model(res.best_checkpoint, device="cpu").cfg.postprocess.model_dump() == tuning["chosen"]
    # re-tuning a finished run is reproducible: same choice, same test scores
    again = tune_run(out, progress=False)
    assert again["postprocess_tuning"]["chosen"] == tuning["chosen"]
    assert again["test"]["aji"] == pytest.approx(res.test["aji"])
    # predicting writes a 16-bit label map and an overlay for every image
    pred_dir = tmp_path / "pred"
    written = predict_files(res.best_checkpoint, [nuclei / "images"], pred_dir, progress=False).labels
    assert len(written) == 10
    lab = tifffile.imread(written[0])
    assert lab.shape == (96, 96) and lab.dtype == np.uint16
    assert (pred_dir / f"{written[0].stem.removesuffix('_labels')}_overlay.png").is_file()


def test_the_summary_records_the_last_epochs_validation_score_not_the_best(nuclei, tmp_path, monkeypatch):
    # validation scores are scripted per epoch so that the last epoch (0.3) is worse than the best (0.6)
    scripted = {0: 0.6, 1: 0.3}
    epoch = {}

    class Epoch(L.Callback):
        def on_validation_epoch_start(self, trainer, pl_module):
            epoch["now"] = trainer.current_epoch

    monkeypatch.setattr(module_mod, "score_labels", lambda *a: defaultdict(lambda: scripted[epoch["now"]]))
    cfg = _cfg(nuclei, tmp_path / "run", train={"steps_per_epoch": 1}, postprocess={"tune": False})
    res = finetune(cfg, progress=False, callbacks=[Epoch()])
    assert res.summary["best_val_score"] == pytest.approx(0.6)
    assert res.summary["last_val_score"] == pytest.approx(0.3)
    assert json.loads((res.output / "result.json").read_text())["last_val_score"] == pytest.approx(0.3)


def test_evaluate_matches_run_test_scores(nuclei, tmp_path):
    res = finetune(_cfg(nuclei, tmp_path / "run", train={"epochs": 1}), progress=False)
    # the run's test images, on their own in a dataset folder of the same layout
    test_ids = json.loads((res.output / "split.json").read_text())["test"]
    assert len(test_ids) == 2
    test_dir = tmp_path / "test_images"
    for sub in ("images", "labels"):
        (test_dir / sub).mkdir(parents=True)
        for i in test_ids:
            shutil.copy(nuclei / sub / f"{i}.tif", test_dir / sub / f"{i}.tif")
    mean = evaluate_checkpoint(res.best_checkpoint, test_dir, tmp_path / "eval", progress=False)
    assert set(mean) == set(res.test)
    for key, value in res.test.items():
        assert mean[key] == pytest.approx(value, abs=1e-6), key
    assert (tmp_path / "eval" / "per_image.csv").read_text() == (
        res.output / "test_per_image.csv"
    ).read_text()
    # --tta overrides the checkpoint's setting for this evaluation only
    assert load_model(res.best_checkpoint, device="cpu", tta=True).cfg.inference.tta is True
    assert load_model(res.best_checkpoint, device="cpu").cfg.inference.tta is False
    with_tta = evaluate_checkpoint(res.best_checkpoint, test_dir, progress=False, tta=True)
    assert 0 <= with_tta["aji"] <= 1 and with_tta != mean


def test_semantic_multiclass_and_label_fraction(tmp_path):
    rng = np.random.default_rng(0)
    data = tmp_path / "sem"
    for i in range(8):
        img = rng.integers(0, 255, (48, 40, 3), dtype=np.uint8)
        mask = np.zeros((48, 40), np.int32)
        mask[5:20, 5:20] = 1
        mask[25:40, 20:35] = 2
        img[mask == 1] = 250
        write_image(data / "images" / f"s{i}.tif", img)
        write_label(data / "labels" / f"s{i}.tif", mask)
    cfg = _cfg(
        data,
        tmp_path / "run",
        data={"task": "semantic", "num_classes": 3, "label_fraction": 0.5, "scale": 0.5},
        train={"crop_size": 32},
    )
    res = finetune(cfg, progress=False)
    # half of the 6 labelled images outside the test split: too few to spare one for validation
    assert (res.summary["n_labelled_train"], res.summary["n_val"], res.summary["n_labelled_total"]) == (
        3,
        0,
        3,
    )
    assert {"dice", "iou", "dice_1", "dice_2"} <= set(res.test)


def test_frozen_encoder_keeps_weights_and_batchnorm_stats(nuclei, tmp_path):
    enc = build_encoder("resnet18", in_channels=1)
    w = save_encoder(enc, tmp_path / "enc.safetensors", {"encoder": "resnet18", "in_channels": 1})
    res = finetune(_cfg(nuclei, tmp_path / "run", model={"init": str(w), "frozen": True}), progress=False)
    model = load_model(res.best_checkpoint, device="cpu")
    for k, v in enc.state_dict().items():
        assert torch.equal(model.net.encoder.state_dict()[k], v), k


def test_pretraining_with_other_intensity_handling_is_warned_about(tmp_path):
    enc = build_encoder("resnet18", in_channels=1)
    meta = {"encoder": "resnet18", "in_channels": 1, "bright_objects": True}
    w = save_encoder(enc, tmp_path / "enc.safetensors", meta)
    mismatched = _cfg(tmp_path, tmp_path / "run", model={"init": str(w)})
    with pytest.warns(UserWarning, match="bright_objects=True but fine-tuning uses False"):
        SegmentationModule(mismatched.model_dump(mode="json"), in_channels=1)
    matched = _cfg(tmp_path, tmp_path / "run", model={"init": str(w)}, data={"bright_objects": True})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        SegmentationModule(matched.model_dump(mode="json"), in_channels=1)


def test_resume_continues_from_last_checkpoint(nuclei, tmp_path):
    cfg = _cfg(nuclei, tmp_path / "run", train={"epochs": 1})
    finetune(cfg, progress=False)
    longer = cfg.model_copy(update={"train": cfg.train.model_copy(update={"epochs": 2})})
    res = finetune(longer, resume=True, progress=False)
    assert res.summary["epochs_run"] == 2


def test_label_fraction_without_images_is_a_clear_error(nuclei, tmp_path):
    from sslseg.errors import ConfigError

    with pytest.raises(ConfigError, match="leaves no labelled image"):
        finetune(_cfg(nuclei, tmp_path / "run", data={"label_fraction": 0.05}), progress=False)


def test_fresh_run_refuses_a_folder_with_earlier_checkpoints(nuclei, tmp_path):
    from sslseg.errors import ConfigError

    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    (tmp_path / "run" / "checkpoints" / "last.ckpt").write_bytes(b"old")
    with pytest.raises(ConfigError, match="already holds checkpoints.*--resume"):
        finetune(_cfg(nuclei, tmp_path / "run"), progress=False)
    with pytest.raises(ConfigError, match="no checkpoint to resume from"):
        finetune(_cfg(nuclei, tmp_path / "other"), resume=True, progress=False)


@pytest.mark.parametrize("freeze", [False, True])
def test_encoder_learning_rate_is_scaled_through_the_whole_schedule(tmp_path, freeze):
    cfg = _cfg(tmp_path, tmp_path / "run", train={"encoder_lr_scale": 0.1}, model={"frozen": freeze})
    module = SegmentationModule(cfg.model_dump(mode="json"), in_channels=1)
    module._trainer = SimpleNamespace(estimated_stepping_batches=40)  # all the schedule asks of a trainer
    setup = module.configure_optimizers()
    opt, sched = setup["optimizer"], setup["lr_scheduler"]["scheduler"]
    encoder = {id(p) for p in module.net.encoder.parameters()}
    groups = [[id(p) in encoder for p in g["params"]] for g in opt.param_groups]
    if freeze:  # nothing of the frozen encoder is optimised
        assert len(groups) == 1 and not any(groups[0])
        return
    assert len(groups) == 2 and not any(groups[0]) and all(groups[1])
    assert sum(len(g) for g in groups) == sum(1 for _ in module.parameters())
    for _ in range(30):  # warm-up and cosine: the ratio holds at every step
        assert opt.param_groups[1]["lr"] == pytest.approx(0.1 * opt.param_groups[0]["lr"], rel=0.02)
        opt.step()
        sched.step()


def test_augmentation_settings_reach_the_training_step(nuclei, tmp_path, monkeypatch):
    import sslseg.segmentation.module as module_file

    seen = []
    real = module_file.augment_batch

    def recording(images, targets, **kwargs):
        seen.append(kwargs)
        return real(images, targets, **kwargs)

    monkeypatch.setattr(module_file, "augment_batch", recording)
    train = {"epochs": 1, "gamma_jitter": 0.5, "shuffle_channels": True}
    finetune(_cfg(nuclei, tmp_path / "run", train=train, postprocess={"tune": False}), progress=False)
    assert seen and all(k == {"gamma": 0.5, "shuffle_channels": True} for k in seen)
