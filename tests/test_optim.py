"""The optimiser table: every `optim.optimizer` choice builds, LARS adapts weights layer-wise but leaves
biases and norms alone, and an SSL method trains with it."""

import typing

import pytest
import torch
from torch import nn

from sslseg.config import OptimConfig, PretrainConfig
from sslseg.methods import get_method
from sslseg.optim import OPTIMIZERS, adamw, build_optimizer, param_groups
from sslseg.pretrain import build_method


def test_every_configurable_optimizer_has_an_entry():
    choices = typing.get_args(OptimConfig.model_fields["optimizer"].annotation)
    assert set(choices) == set(OPTIMIZERS)


@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_lars_scales_weight_steps_by_the_trust_ratio_and_leaves_biases_and_norms_plain(weight_decay):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4))
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    model(torch.randn(3, 2, 8, 8)).pow(2).mean().backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters()}
    cfg = OptimConfig(optimizer="lars", lr=1.0, momentum=0.0, weight_decay=weight_decay)
    opt = build_optimizer(model, cfg, batch_size=256)  # a base rate of 1 at batch 256 stays 1
    opt.step()
    step = {n: before[n] - p.detach() for n, p in model.named_parameters()}

    # weights (decayed): the update is the decayed gradient times η‖w‖ / (‖g‖ + λ‖w‖), η = 1e-3
    w, g = before["0.weight"], grads["0.weight"]
    trust = 1e-3 * w.norm() / (g.norm() + weight_decay * w.norm())
    assert abs(trust - 1) > 0.5  # far from 1, so an unadapted step could not pass the next line
    torch.testing.assert_close(step["0.weight"], trust * (g + weight_decay * w), rtol=1e-4, atol=1e-7)
    # the conv bias and the BatchNorm scale and shift: plain SGD, neither decayed nor adapted
    for name in ("0.bias", "1.weight", "1.bias"):
        torch.testing.assert_close(step[name], grads[name], rtol=1e-5, atol=1e-7)


def test_an_ssl_method_trains_with_lars():
    torch.manual_seed(0)
    fields = get_method("simclr").Params.model_fields
    small = {f: 128 if f.endswith("_hidden") else 64 for f in fields if f.endswith(("_hidden", "_dim"))}
    cfg = PretrainConfig.model_validate(
        {
            "method": "simclr",
            "params": small,
            "views": {"size": 32},
            "train": {"batch_size": 8, "epochs": 1},
            "optim": {"optimizer": "lars", "lr": 4.8, "weight_decay": 1e-6},  # SimCLR's LARS settings
        }
    )
    method = build_method(cfg, 1)
    method.train()
    views = method.view_maker(torch.rand(8, 1, 64, 64), method.n_views)
    opt = build_optimizer(method, cfg.optim, cfg.train.batch_size)
    first_conv = next(p for p in method.encoder.parameters() if p.ndim == 4)
    start = first_conv.detach().clone()
    losses = []
    for _ in range(5):
        loss, _ = method.ssl_loss(views)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(map(torch.isfinite, torch.tensor(losses)))
    assert losses[-1] < 0.5 * losses[0], losses
    assert not torch.equal(first_conv, start)  # the encoder itself learns, not only the heads


def test_adamw_is_fused_on_the_cpu_and_steps_like_torchs_per_tensor_loop():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 1, 1))
    twin = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Conv2d(4, 1, 1))
    twin.load_state_dict(model.state_dict())
    fused = adamw(param_groups(model, 0.05), lr=1e-2)
    plain = torch.optim.AdamW(param_groups(twin, 0.05), lr=1e-2, foreach=False)
    assert fused.defaults["fused"] and not plain.defaults["fused"]
    # the same gradients for both: a gradient through the model would amplify rounding wherever it is ~0
    grads = [torch.randn_like(p) for p in model.parameters()]
    for _ in range(5):
        for m, opt in ((model, fused), (twin, plain)):
            for p, g in zip(m.parameters(), grads, strict=True):
                p.grad = g.clone()
            opt.step()
    for a, b in zip(model.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_adamw_falls_back_to_torchs_default_where_no_fused_kernel_applies():
    p = nn.Parameter(torch.zeros(3, dtype=torch.complex64))
    opt = adamw([{"params": [p]}], lr=1e-3)
    assert not opt.defaults["fused"]
    p.grad = torch.ones_like(p)
    opt.step()  # torch's fused kernel would raise here
    assert torch.all(p.real < 0)
