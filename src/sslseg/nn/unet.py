"""The U-Net and its encoder: one `segmentation_models_pytorch` encoder object used end to end, so weights
pretrained on it transfer 1:1 into the U-Net."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import segmentation_models_pytorch as smp
import torch
from torch import nn

from sslseg.errors import ConfigError


def check_encoder_name(name: str) -> None:
    """Fail early, listing the valid names, when an encoder is unknown."""
    if name.startswith("tu-"):
        return
    names = smp.encoders.get_encoder_names()
    if name not in names:
        common = [n for n in names if n.startswith(("resnet", "efficientnet-b", "mobilenet", "densenet"))]
        raise ConfigError(
            f"unknown encoder '{name}'; choose one of: {', '.join(common)} (or tu-<timm model>)"
        )


def build_encoder(name: str, in_channels: int, depth: int = 5) -> nn.Module:
    """A randomly initialised encoder exactly as the U-Net builds it (same module names and shapes)."""
    check_encoder_name(name)
    return smp.encoders.get_encoder(name, in_channels=in_channels, depth=depth, weights=None)


def build_unet(
    encoder: str,
    in_channels: int,
    out_channels: int,
    decoder_channels: tuple[int, ...] = (256, 128, 64, 32, 16),
    imagenet: bool = False,
) -> smp.Unet:
    """A U-Net with the named encoder; `imagenet` loads ImageNet weights from the local cache only."""
    check_encoder_name(encoder)
    weights = None
    if imagenet:
        weights = True if encoder.startswith("tu-") else "imagenet"
    previous = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"  # never download at run time: use what is on disk or say so
    try:
        return smp.Unet(
            encoder_name=encoder,
            encoder_weights=weights,
            encoder_depth=len(decoder_channels),
            decoder_channels=list(decoder_channels),
            in_channels=in_channels,
            classes=out_channels,
        )
    except Exception as e:
        if not imagenet:
            raise
        raise ConfigError(
            f"ImageNet weights for '{encoder}' are not available locally ({type(e).__name__}); put them in the "
            "Hugging Face cache (HF_HOME) on a machine with internet access, or use model.init=random"
        ) from None
    finally:
        if previous is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = previous


def freeze(module: nn.Module) -> None:
    """Stop gradients and BatchNorm statistic updates in a module (a frozen encoder is fully frozen)."""
    module.requires_grad_(False)
    module.eval()


@contextmanager
def evaluating(*modules: nn.Module) -> Iterator[None]:
    """Eval mode and no gradients for the block; each module's former train/eval mode is restored after."""
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        with torch.no_grad():
            yield
    finally:
        for m, mode in zip(modules, modes, strict=True):
            m.train(mode)


def count_parameters(module: nn.Module, trainable_only: bool = False) -> int:
    """Number of (trainable) parameters."""
    return sum(p.numel() for p in module.parameters() if p.requires_grad or not trainable_only)


def encoder_of(model: nn.Module) -> nn.Module:
    """The encoder submodule of a U-Net."""
    enc = getattr(model, "encoder", None)
    if not isinstance(enc, nn.Module):
        raise TypeError(f"{type(model).__name__} has no encoder")
    return enc


@torch.no_grad()
def feature_shapes(encoder: nn.Module, in_channels: int, size: int = 64) -> list[tuple[int, ...]]:
    """Shapes of the encoder's skip features for a dummy input (used to size heads)."""
    was_training = encoder.training
    encoder.eval()
    feats = encoder(torch.zeros(1, in_channels, size, size))
    encoder.train(was_training)
    return [tuple(f.shape[1:]) for f in feats]
