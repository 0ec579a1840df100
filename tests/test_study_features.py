"""Measures of trained models: encoder stage features and CKA, encoder loading (study.features), weight change
(metrics.embeddings) and TTA uncertainty (study.tta)."""

import lightning as L
import numpy as np
import pytest
import torch
from torch import nn

from sslseg.config import FinetuneConfig
from sslseg.data.datasets import LoadedSample, prepare_image
from sslseg.data.synth import generate_sample
from sslseg.data.targets import semantic_classes
from sslseg.metrics import aji
from sslseg.metrics.embeddings import weight_change
from sslseg.nn.unet import build_encoder
from sslseg.segmentation.inference import predict_probabilities, probabilities_to_labels
from sslseg.segmentation.module import SegmentationModule, score_labels
from sslseg.study.features import (
    encoder_from_checkpoint,
    encoder_from_weights,
    global_embeddings,
    stage_cka,
    stage_features,
)
from sslseg.study.tta import tta_predictions, tta_uncertainty
from sslseg.weights import save_encoder

RESNET18_CHANNELS = [64, 64, 128, 256, 512]
TINY = {"encoder": "resnet18", "decoder_channels": [32, 16, 16, 8, 8]}


def _config(task: str = "instance") -> dict:
    return {"data": {"task": task}, "model": dict(TINY), "inference": {"tile_size": 64}}


def _sample(seed: int, shape: tuple[int, int] = (48, 64), task: str = "instance") -> LoadedSample:
    raw, labels = generate_sample(seed, shape, mean_radius=5.0)
    image = prepare_image(raw[..., None], 1)
    if task == "semantic":
        labels = semantic_classes((labels > 0).astype(np.uint8), 2)
    return LoadedSample(f"img{seed}", image, None, labels, shape)


@pytest.fixture(scope="module")
def encoder() -> nn.Module:
    torch.manual_seed(0)
    return build_encoder("resnet18", 1).eval()


@pytest.fixture(scope="module")
def images() -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.normal(size=(1, 32, 32)).astype(np.float32) for _ in range(4)] + [
        rng.normal(size=(1, 48, 40)).astype(np.float32)
    ]


@pytest.fixture(scope="module")
def module() -> SegmentationModule:
    torch.manual_seed(0)
    return SegmentationModule(_config(), in_channels=1).eval()


def test_stage_features_shapes_and_pooling(encoder, images):
    feats = stage_features(encoder, images)
    assert [f.shape for f in feats] == [(5, c) for c in RESNET18_CHANNELS]
    assert all(f.dtype == np.float64 for f in feats)
    cropped = stage_features(encoder, images, size=32, max_positions=4)
    assert [f.shape for f in cropped] == [(5, 4 * c) for c in RESNET18_CHANNELS]
    # eval mode: an image's features do not depend on the batch it is run in
    alone = stage_features(encoder, images[:1])
    assert np.allclose(alone[-1][0], feats[-1][0], atol=1e-5)
    assert global_embeddings(encoder, images).shape == (5, 512)
    with pytest.raises(ValueError, match="center-crop"):
        stage_features(encoder, images, size=40)


def test_stage_cka_of_an_encoder_with_itself_is_one(encoder, images):
    for kind in ("linear", "rbf"):
        values = stage_cka(encoder, encoder, images, kind=kind)
        assert len(values) == 5 and np.allclose(values, 1.0)
    other = build_encoder("resnet18", 1).eval()
    assert all(0.0 <= v <= 1.0 + 1e-9 for v in stage_cka(encoder, other, images))


def test_encoder_from_weights_round_trip(encoder, images, tmp_path):
    save_encoder(encoder, tmp_path / "encoder.safetensors", {"encoder": "resnet18", "in_channels": 1})
    loaded = encoder_from_weights(tmp_path)  # name and channels from the sidecar
    for key, value in encoder.state_dict().items():
        assert torch.equal(loaded.state_dict()[key], value)
    assert np.allclose(stage_cka(encoder, loaded, images), 1.0)
    explicit = encoder_from_weights(tmp_path / "encoder.safetensors", "resnet18", 1)
    assert torch.equal(explicit.conv1.weight, encoder.conv1.weight)


def test_encoder_from_checkpoint(module, tmp_path):
    path = tmp_path / "best.ckpt"
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": L.__version__,
        },
        path,
    )
    enc = encoder_from_checkpoint(tmp_path, device="cpu")
    assert not enc.training
    assert torch.equal(enc.conv1.weight, module.net.encoder.conv1.weight)


def test_weight_change_by_hand_and_filtering():
    initial = {
        "encoder.a": torch.tensor([3.0, 4.0]),
        "encoder.bn.running_mean": torch.tensor([0.0]),
        "encoder.bn.num_batches_tracked": torch.tensor(1),
        "decoder.b": torch.tensor([[1.0, 0.0]]),
        "head.c": torch.tensor([1.0]),
    }
    final = {
        "encoder.a": torch.tensor([3.0, 9.0]),  # moved by 5, norm 5 → 1.0
        "encoder.bn.running_mean": torch.tensor([100.0]),  # statistics are ignored
        "encoder.bn.num_batches_tracked": torch.tensor(50),
        "decoder.b": torch.tensor([[1.0, 0.0]]),
        "head.c": torch.tensor([2.0]),
    }
    assert weight_change(initial, final) == {"encoder.": pytest.approx(1.0), "decoder.": 0.0}
    assert weight_change(initial, initial, prefixes=("encoder.", "head.")) == {"encoder.": 0.0, "head.": 0.0}
    with pytest.raises(ValueError, match="encoder.extra"):
        weight_change(initial, {**final, "encoder.extra": torch.ones(1)})
    with pytest.raises(ValueError, match="no floating-point"):
        weight_change(initial, final, prefixes=("nothing.",))


def test_weight_change_on_a_unet_state_dict(module):
    state = {k: v.clone() for k, v in module.net.state_dict().items()}
    moved = {
        k: (v * 1.1 if k.startswith("decoder.") and v.is_floating_point() else v) for k, v in state.items()
    }
    change = weight_change(state, moved)
    assert change["encoder."] == 0.0 and change["decoder."] == pytest.approx(0.1, rel=1e-6)


def test_tta_predictions_shapes_and_identity(module):
    sample = _sample(1)
    preds = tta_predictions(module, sample, n=8)
    assert len(preds) == 8 and all(p.shape == sample.native_shape for p in preds)
    cfg = module.cfg
    probs = predict_probabilities(module.net, sample.image, "instance", sample.native_shape, cfg.inference)
    plain = probabilities_to_labels(probs, "instance", cfg.postprocess)
    assert np.array_equal(preds[0], plain)
    assert len(tta_predictions(module, sample, n=3)) == 3
    with pytest.raises(ValueError):
        tta_predictions(module, sample, n=9)


class _Pointwise(nn.Module):
    """A D4-equivariant 'model' (a 1×1 convolution): every augmentation must map back to one prediction."""

    def __init__(self, task: str) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.net = nn.Conv2d(1, 2, 1)
        self.cfg = FinetuneConfig.model_validate(_config(task))


def test_tta_of_an_equivariant_model_maps_every_augmentation_back():
    model = _Pointwise("semantic")
    sample = _sample(2, (40, 56), "semantic")
    preds = tta_predictions(model, sample)
    assert all(np.array_equal(p, preds[0]) for p in preds)
    (row,) = tta_uncertainty(model, [sample])
    assert row["uncertainty"] == 0.0 and row["metric"] == "dice"
    assert row["error"] == pytest.approx(1.0 - score_labels(preds[0], sample.labels, model.cfg)["dice"])


def test_tta_uncertainty_rows(module):
    samples = [_sample(3), _sample(4)]
    samples[1].labels = None
    rows = tta_uncertainty(module, samples, n=4)
    assert [r["id"] for r in rows] == ["img3", "img4"]
    assert all(0.0 <= r["uncertainty"] <= 1.0 and r["metric"] == "aji" for r in rows)
    pred = tta_predictions(module, samples[0], n=1)[0]
    assert rows[0]["error"] == pytest.approx(1.0 - aji(samples[0].labels, pred))
    assert np.isnan(rows[1]["error"])
    assert module.training is False
