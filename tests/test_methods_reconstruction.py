"""Reconstruction methods (autoencoder, masked image modelling): their losses by hand, the masking, the
skip-less autoencoder, and the pretrained U-Net decoder's strict transfer into fine-tuning."""

import json

import pytest
import torch

from sslseg.augment.views import crop_views
from sslseg.config import FinetuneConfig, PretrainConfig
from sslseg.errors import ConfigError
from sslseg.losses.reconstruction import masked_mse, patch_normalise
from sslseg.methods.masked import patch_mask
from sslseg.pretrain import build_method, pretrain
from sslseg.segmentation.module import SegmentationModule
from sslseg.weights import load_decoder, read_metadata, save_encoder

VIEW = 32
SMALL_DECODER = [32, 16, 16, 8, 8]


def make(name: str, channels: int = 1, views: dict | None = None, **params):
    cfg = PretrainConfig.model_validate(
        {
            "method": name,
            "params": params,
            "views": {"size": VIEW, **(views or {})},
            "train": {"batch_size": 8, "epochs": 1},
        }
    )
    return build_method(cfg, channels)


# -- losses ---------------------------------------------------------------------------------------------


def test_masked_mse_by_hand_and_blind_to_unmasked_pixels():
    pred = torch.tensor([[[[1.0, 2.0], [3.0, 4.0]]]], requires_grad=True)
    target = torch.zeros(1, 1, 2, 2)
    mask = torch.tensor([[[[True, False], [False, True]]]])
    # masked pixels 1 and 4: (1² + 4²) / 2 = 8.5
    loss = masked_mse(pred, target, mask)
    assert loss.item() == pytest.approx(8.5)
    loss.backward()
    # d/dpred = 2 (pred − target) / 2 on masked pixels, exactly 0 elsewhere
    assert torch.equal(pred.grad, torch.tensor([[[[1.0, 0.0], [0.0, 4.0]]]]))
    # any prediction on unmasked pixels, NaN included, leaves the loss and its gradient unchanged
    other = torch.tensor([[[[1.0, float("nan")], [-7.0, 4.0]]]], requires_grad=True)
    loss2 = masked_mse(other, target, mask)
    loss2.backward()
    assert loss2.item() == pytest.approx(8.5) and torch.equal(other.grad, pred.grad)
    # channels are averaged too: a second channel of error 1 on both masked pixels → (1 + 16 + 1 + 1) / 4
    two = torch.cat([pred.detach(), torch.ones(1, 1, 2, 2)], dim=1)
    assert masked_mse(two, torch.zeros(1, 2, 2, 2), mask).item() == pytest.approx(19 / 4)
    assert masked_mse(pred, target, torch.zeros_like(mask)).item() == 0.0


def test_patch_normalise_by_hand_and_invariances():
    # two 2×2 patches: [0 2; 0 2] has mean 1, variance 1 → with eps 3, (x − 1) / sqrt(1 + 3) = ∓0.5;
    # the constant patch [5 5; 5 5] becomes 0
    x = torch.tensor([[[[0.0, 2.0, 5.0, 5.0], [0.0, 2.0, 5.0, 5.0]]]])
    expected = torch.tensor([[[[-0.5, 0.5, 0.0, 0.0], [-0.5, 0.5, 0.0, 0.0]]]])
    assert torch.allclose(patch_normalise(x, 2, eps=3.0), expected)
    # statistics span the channels together: channel 0 all 0, channel 1 all 2 → mean 1, variance 1 → ∓1
    y = torch.stack([torch.zeros(2, 2), torch.full((2, 2), 2.0)])[None]
    assert torch.allclose(
        patch_normalise(y, 2, eps=0.0), torch.stack([-torch.ones(2, 2), torch.ones(2, 2)])[None]
    )
    # each patch is invariant to its own shift and positive scale (eps → 0)
    z = torch.randn(2, 3, 8, 8)
    w = z.clone()
    w[..., :4, 4:] = 3.0 * w[..., :4, 4:] + 7.0
    assert torch.allclose(patch_normalise(z, 4, 1e-9), patch_normalise(w, 4, 1e-9), atol=1e-4)
    with pytest.raises(ValueError, match="whole number"):
        patch_normalise(torch.zeros(1, 1, 6, 6), 4, 1e-6)


def test_patch_mask_blanks_exact_whole_patches():
    torch.manual_seed(0)
    m = patch_mask(5, 32, 32, 8, 0.6, torch.device("cpu"))
    assert m.shape == (5, 1, 32, 32) and m.dtype == torch.bool
    cells = m.view(5, 4, 8, 4, 8)
    assert (cells.all(dim=(2, 4)) | ~cells.any(dim=(2, 4))).all()  # every 8×8 patch all or nothing
    assert (cells[:, :, 0, :, 0].sum(dim=(1, 2)) == round(0.6 * 16)).all()  # exactly 10 of 16 per image
    # the count is clamped so at least one patch is blanked and one stays visible
    assert patch_mask(2, 16, 16, 8, 0.01, torch.device("cpu")).view(2, -1).sum(1).tolist() == [64, 64]
    assert patch_mask(2, 16, 16, 8, 0.99, torch.device("cpu")).view(2, -1).sum(1).tolist() == [192, 192]


# -- methods --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["autoencoder", "masked"])
def test_reconstruction_loss_decreases_on_a_fixed_batch(name):
    torch.manual_seed(0)
    method = make(name, decoder_channels=SMALL_DECODER, **({"patch_size": 8} if name == "masked" else {}))
    method.train()
    views = method.view_maker(torch.rand(8, 1, 2 * VIEW, 2 * VIEW), method.n_views)
    opt = torch.optim.Adam(method.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        torch.manual_seed(1)  # the same mask every step
        loss, _ = method.ssl_loss(views)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.9 * losses[0], losses


def test_masked_input_is_blanked_and_only_masked_pixels_are_scored():
    torch.manual_seed(0)
    method = make("masked", decoder_channels=SMALL_DECODER, patch_size=8)
    seen: dict[str, torch.Tensor] = {}
    method.encoder.register_forward_pre_hook(lambda m, args: seen.update(input=args[0]))

    def keep_grad(m, args, out):
        out.retain_grad()
        seen["pred"] = out

    method.head.register_forward_hook(keep_grad)
    views = method.view_maker(torch.rand(4, 1, 2 * VIEW, 2 * VIEW), method.n_views)
    torch.manual_seed(3)
    loss, emb = method.ssl_loss(views)
    loss.backward()
    torch.manual_seed(3)
    mask = patch_mask(4, VIEW, VIEW, 8, 0.6, torch.device("cpu"))
    assert (seen["input"][mask.expand_as(seen["input"])] == 0).all()
    assert torch.equal(
        seen["input"][~mask.expand_as(seen["input"])], views.images[0][~mask.expand_as(seen["input"])]
    )
    grad = seen["pred"].grad
    assert (grad[~mask.expand_as(grad)] == 0).all() and (grad[mask.expand_as(grad)] != 0).any()
    assert emb.shape == (4, method.feature_dims[-1])


def test_masked_views_are_geometric_only_by_default_and_settings_are_checked():
    plain = make("masked", patch_size=8).view_maker.cfg
    assert plain.jitter_p == 0 and plain.blur_p == 0 and plain.noise_std == 0
    assert make("masked", patch_size=8, photometric=True).view_maker.cfg.jitter_p == 0.8
    with pytest.raises(ConfigError, match="multiple of patch_size 12"):
        make("masked", patch_size=12)
    with pytest.raises(ConfigError, match="decoder_channels"):  # one block per encoder stage: five
        make("autoencoder", decoder_channels=[32, 16, 8])


def test_autoencoder_has_no_skip_connections():
    torch.manual_seed(0)
    method = make("autoencoder", decoder_channels=SMALL_DECODER).eval()
    x = torch.randn(2, 1, VIEW, VIEW)
    features = method.encoder(x)
    noisy = [f if i in (0, len(features) - 1) else torch.randn_like(f) * 100 for i, f in enumerate(features)]
    noisy[0] = torch.randn_like(features[0])
    assert torch.equal(method.decode(features), method.decode(noisy))
    # …whereas the bottleneck matters
    assert not torch.equal(method.decode(features), method.decode([*features[:-1], features[-1] + 1]))
    # its blocks have no skip input channels, so it cannot pass for the skip U-Net's decoder: not transferred
    assert method.decoder.blocks[0].conv1[0].in_channels == method.feature_dims[-1]
    assert method.extra_weights() == {}


def test_denoising_target_is_the_same_crop_without_photometric_changes():
    torch.manual_seed(0)
    base = torch.rand(6, 1, 2 * VIEW, 2 * VIEW)
    off = {"jitter_p": 0.0, "blur_p": 0.0, "noise_std": 0.0, "hflip": 0.5, "vflip": 0.5}
    v = make("autoencoder", views=off).view_maker(base)
    assert torch.allclose(v.images[0], v.images[1], atol=1e-5)  # same boxes and flips, pixel for pixel
    assert v.flips[0].any() and not v.flips[0].all()
    v = make("autoencoder", views={"noise_std": 0.1}).view_maker(base)
    assert (v.images[0] - v.images[1]).abs().mean() > 0.05
    # crop_views of the full square, unflipped, is the base itself
    full = torch.tensor([[0.0, 0.0, 2 * VIEW, 2 * VIEW]])
    assert torch.allclose(crop_views(base[:1], full, torch.zeros(1, 2, dtype=torch.bool), 2 * VIEW), base[:1])


# -- decoder transfer into fine-tuning -------------------------------------------------------------------


def _save_like_pretrain(method, folder, **summary):
    """Write the weights exactly as `pretrain` does."""
    summary = {"method": method.cfg.method, "encoder": "resnet18", "in_channels": 1, "steps": 1, **summary}
    enc = save_encoder(method.encoder, folder / "encoder.safetensors", summary)
    for name, module in method.extra_weights().items():
        save_encoder(module, folder / f"{name}.safetensors", {**summary, "part": name})
    return enc


def _finetune_module(init, decoder_channels=(256, 128, 64, 32, 16)):
    cfg = FinetuneConfig.model_validate({"model": {"init": str(init), "decoder_channels": decoder_channels}})
    return SegmentationModule(cfg.model_dump(mode="json"), in_channels=1)


def test_pretrained_decoder_loads_with_the_encoder_and_mismatches_are_refused(tmp_path):
    torch.manual_seed(0)
    method = make("masked", decoder_channels=SMALL_DECODER, patch_size=8)
    enc_path = _save_like_pretrain(method, tmp_path)
    meta = read_metadata(tmp_path / "decoder.safetensors")
    assert (
        meta["kind"] == "unet-decoder"
        and meta["decoder_channels"] == SMALL_DECODER
        and meta["part"] == "decoder"
    )
    for init in (enc_path, tmp_path):  # the file or its folder
        module = _finetune_module(init, SMALL_DECODER)
        assert module.decoder_init == str(tmp_path / "decoder.safetensors")
        for k, v in method.decoder.state_dict().items():
            assert torch.equal(module.net.decoder.state_dict()[k], v), k
        for k, v in method.encoder.state_dict().items():
            assert torch.equal(module.net.encoder.state_dict()[k], v), k
    with pytest.raises(
        ConfigError, match=r"decoder\.safetensors: decoder was pretrained with decoder_channels"
    ):
        _finetune_module(enc_path)  # default (256, …, 16) ≠ the pretrained (32, …, 8)
    # sidecar lying about its channels: the strict key/shape check still refuses it
    side = tmp_path / "decoder.json"
    side.write_text(json.dumps({**meta, "decoder_channels": [256, 128, 64, 32, 16]}))
    with pytest.raises(ConfigError, match=r"decoder\.safetensors: weights do not fit this decoder"):
        _finetune_module(enc_path)
    # a decoder from another run beside the encoder
    side.write_text(json.dumps({**meta, "steps": 99}))
    with pytest.raises(ConfigError, match="another pretraining run"):
        _finetune_module(enc_path, SMALL_DECODER)
    with pytest.raises(ConfigError, match="pretrained for encoder 'resnet18'"):
        load_decoder(module.net.decoder, tmp_path / "decoder.safetensors", "resnet34", 1, SMALL_DECODER)


def test_encoder_only_methods_leave_the_decoder_fresh(tmp_path):
    method = make("autoencoder", decoder_channels=SMALL_DECODER)
    _save_like_pretrain(method, tmp_path)
    assert not (tmp_path / "decoder.safetensors").exists()
    assert _finetune_module(tmp_path / "encoder.safetensors").decoder_init is None


def test_pretrain_run_writes_a_loadable_decoder(tmp_path):
    from sslseg.data.synth import write_synthetic_dataset

    data = write_synthetic_dataset(tmp_path / "data", n_images=4, size=64, seed=0)
    cfg = PretrainConfig.model_validate(
        {
            "method": "masked",
            "params": {"decoder_channels": SMALL_DECODER, "patch_size": 8},
            "data": {"path": data / "images"},
            "views": {"size": VIEW},
            "train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 4, "accelerator": "cpu"},
            "output": tmp_path / "run",
        }
    )
    res = pretrain(cfg, progress=False)
    module = _finetune_module(res.weights, SMALL_DECODER)
    assert module.decoder_init == str(res.output / "decoder.safetensors")
