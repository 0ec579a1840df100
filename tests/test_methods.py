"""Every registered SSL method, on a tiny encoder and tiny views: finite, decreasing loss on a fixed batch,
gradients reaching the encoder, and exact weight transfer into the U-Net."""

import pytest
import torch

from sslseg.config import PretrainConfig
from sslseg.errors import ConfigError
from sslseg.methods import METHODS, get_method
from sslseg.nn.unet import build_unet
from sslseg.pretrain import build_method
from sslseg.weights import load_encoder, save_encoder

VIEW = 32


def make(name: str, channels: int = 1, **params):
    # narrow heads keep the suite fast on 2 CPU cores; the losses and wiring are the same at any width
    fields = get_method(name).Params.model_fields
    small = {f: 128 if f.endswith("_hidden") else 64 for f in fields if f.endswith(("_hidden", "_dim"))}
    params = {**small, **params}
    cfg = PretrainConfig.model_validate(
        {"method": name, "params": params, "views": {"size": VIEW}, "train": {"batch_size": 8, "epochs": 1}}
    )
    return build_method(cfg, channels)


def _first_and_last_stage(encoder):
    named = [(n, p) for n, p in encoder.named_parameters() if n.endswith("weight") and p.ndim == 4]
    return [named[0], named[-1]]


@pytest.mark.parametrize("name", sorted(METHODS))
def test_loss_is_finite_decreases_and_reaches_the_encoder(name):
    torch.manual_seed(0)
    method = make(name)
    method.train()
    base = torch.rand(8, 1, 2 * VIEW, 2 * VIEW)
    views = method.view_maker(base, method.n_views)
    opt = torch.optim.Adam([p for p in method.parameters() if p.requires_grad], lr=1e-3)
    losses = []
    for step in range(6):
        loss, emb = method.ssl_loss(views)
        assert torch.isfinite(loss), f"{name}: loss {loss}"
        assert emb.ndim == 2 and emb.shape[0] >= 2
        opt.zero_grad()
        loss.backward()
        if step == 0:  # every stage learns, from the first convolution to the deepest block
            for stage, param in _first_and_last_stage(method.encoder):
                assert param.grad is not None and param.grad.abs().sum() > 0, (
                    f"{name}: no gradient in {stage}"
                )
        opt.step()
        method.after_step()
        losses.append(loss.item())
    assert min(losses[-2:]) < losses[0], f"{name}: loss did not decrease: {losses}"


@pytest.mark.parametrize("name", sorted(METHODS))
def test_pretrained_encoder_transfers_exactly_into_the_unet(name, tmp_path):
    method = make(name, channels=3)
    path = save_encoder(
        method.encoder, tmp_path / "encoder.safetensors", {"encoder": "resnet18", "in_channels": 3}
    )
    unet = build_unet("resnet18", 3, 2)
    load_encoder(unet.encoder, path, "resnet18", 3)  # strict: zero missing, zero unexpected keys
    for k, v in method.encoder.state_dict().items():
        assert torch.equal(unet.encoder.state_dict()[k], v), k


def test_unknown_method_lists_valid_ones():
    with pytest.raises(ConfigError, match="unknown SSL method 'simclear'.*simclr"):
        get_method("simclear")


def test_misspelt_method_param_is_an_error_with_suggestion():
    with pytest.raises(ConfigError, match="did you mean 'temperature'"):
        make("simclr", temprature=0.3)


def test_method_optimiser_defaults_apply_only_where_the_user_left_them_unset():
    from sslseg.pretrain import resolve_optim

    masked = resolve_optim(PretrainConfig.model_validate({"method": "masked"}))
    assert masked.optim.optimizer == "adamw" and masked.optim.weight_decay == 0.05
    mine = resolve_optim(PretrainConfig.model_validate({"method": "masked", "optim": {"optimizer": "sgd"}}))
    assert mine.optim.optimizer == "sgd" and mine.optim.lr == 4e-4
    assert resolve_optim(PretrainConfig.model_validate({"method": "simclr"})).optim.optimizer == "sgd"
