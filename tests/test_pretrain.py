"""Pretraining end to end on tiny synthetic images: outputs, sidecar, resume, fine-tuning from the weights,
the collapse monitor and the divergence stop."""

import json
import warnings

import lightning as L
import pytest
import torch
from safetensors.torch import load_file

from sslseg.config import FinetuneConfig, PretrainConfig
from sslseg.data.synth import write_synthetic_dataset
from sslseg.errors import ConfigError, TrainingDiverged
from sslseg.finetune import finetune
from sslseg.metrics.embeddings import effective_rank, embedding_std
from sslseg.nn.unet import build_encoder
from sslseg.pretrain import build_method, pretrain

SMALL = {"proj_hidden": 64, "proj_dim": 32}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    return write_synthetic_dataset(tmp_path_factory.mktemp("unlab"), n_images=6, size=80, seed=3)


def _cfg(data, out, **train):
    return PretrainConfig.model_validate(
        {
            "method": "simclr",
            "params": SMALL,
            "data": {"path": data},
            "views": {"size": 32, "preset": "fluorescence"},
            "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4, **train},
            "output": out,
        }
    )


def test_pretrain_writes_weights_sidecar_and_finetune_loads_them(images, tmp_path):
    res = pretrain(_cfg(images, tmp_path / "pre"), progress=False)
    meta = json.loads(res.weights.with_suffix(".json").read_text())
    assert meta["method"] == "simclr" and meta["encoder"] == "resnet18" and meta["in_channels"] == 1
    assert meta["steps"] == 2 and meta["seconds"] > 0 and meta["normalization"] == "per_image"
    assert (tmp_path / "pre" / "checkpoints" / "last.ckpt").is_file()
    assert (tmp_path / "pre" / "config.yaml").is_file()
    ft = FinetuneConfig.model_validate(
        {
            "data": {"train": images, "val_fraction": 0.2},
            "model": {"init": str(res.weights), "frozen": True, "decoder_channels": [16, 16, 8, 8, 8]},
            "train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 2, "crop_size": 32},
            "output": tmp_path / "ft",
        }
    )
    from safetensors.torch import load_file

    from sslseg.evaluate import load_model

    out = finetune(ft, progress=False)
    pretrained = load_file(str(res.weights))
    model = load_model(out.best_checkpoint, device="cpu")
    for k, v in pretrained.items():
        assert torch.equal(model.net.encoder.state_dict()[k], v), k


def test_pretrain_resume_continues(images, tmp_path):
    pretrain(_cfg(images, tmp_path / "pre"), progress=False)
    res = pretrain(_cfg(images, tmp_path / "pre", epochs=2), resume=True, progress=False)
    assert res.summary["steps"] == 4
    # the first part's log survives the resume; the resumed part logs beside it
    assert (tmp_path / "pre" / "logs" / "metrics.csv").is_file()
    assert (tmp_path / "pre" / "logs" / "resumed-1" / "metrics.csv").is_file()


def test_unknown_method_fails_before_reading_images(tmp_path):
    cfg = _cfg(tmp_path / "does-not-exist", tmp_path / "pre").model_copy(update={"method": "nope"})
    with pytest.raises(ConfigError, match="unknown SSL method"):
        pretrain(cfg, progress=False)


def test_nan_loss_stops_with_a_clear_error(images):
    method = build_method(_cfg(images, "unused"), 1)
    batch = torch.full((4, 1, 64, 64), float("nan"))
    with pytest.raises(TrainingDiverged, match="loss became nan.*last good checkpoint"):
        method.training_step(batch, 0)


def test_collapse_measures_and_warning(images):
    healthy = torch.randn(256, 16)
    collapsed = torch.ones(256, 16) + 1e-6 * torch.randn(256, 16)
    assert effective_rank(healthy) > 12 and effective_rank(torch.randn(256, 1) @ torch.randn(1, 16)) < 1.5
    assert embedding_std(healthy) == pytest.approx(1 / 16**0.5, rel=0.2)
    assert embedding_std(collapsed) < 1e-3
    method = build_method(_cfg(images, "unused"), 1)
    method._monitor = collapsed
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        method.log_dict = lambda *a, **k: None  # no trainer attached in a unit test
        method.on_train_epoch_end()
    assert any("collapsed" in str(w.message) for w in caught)


def test_compile_switch_compiles_the_encoder_and_keeps_weight_names(images, tmp_path):
    # the "eager" backend traces with TorchDynamo without generating code: the switch's path, quickly
    cfg = _cfg(images, tmp_path / "pre", compile=True, compile_backend="eager")
    seen = {}

    class Spy(L.Callback):
        def on_train_end(self, trainer, module):
            seen["compiled"] = module.encoder._compiled_call_impl is not None

    res = pretrain(cfg, progress=False, callbacks=[Spy()])
    assert seen["compiled"] and res.summary["steps"] == 2
    plain = build_encoder("resnet18", 1).state_dict()
    assert set(load_file(res.weights)) == set(plain)  # no "_orig_mod." prefixes


def test_channels_last_switch_trains(images, tmp_path):
    res = pretrain(_cfg(images, tmp_path / "pre", channels_last=True), progress=False)
    assert res.summary["steps"] == 2 and res.weights.is_file()
