"""Encoder weight files: `encoder.safetensors` plus a JSON sidecar that says what produced them; methods that
pretrain the U-Net decoder too save `decoder.safetensors` beside it, with a sidecar describing its shape.

Loading is strict: zero missing and zero unexpected keys, or an error naming the file and the mismatch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from sslseg.atomic import atomic_path, write_json
from sslseg.errors import ConfigError, DataError
from sslseg.nn.unet import build_encoder

UNET_DECODER = "unet-decoder"
# A module may carry a dict under this attribute (see `describe_unet_decoder`); `save_encoder` merges it
# into the sidecar, so what the weights fit is recorded by whoever built the module.
SIDECAR_ATTRIBUTE = "sidecar_metadata"
# Sidecar fields that two files of one pretraining run share; a difference means they come from two runs.
_RUN_FIELDS = ("method", "data", "steps", "seconds")


def sidecar_path(weights: Path) -> Path:
    """The metadata file that sits beside a weights file."""
    return weights.with_suffix(".json")


def save_encoder(encoder: nn.Module, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Write the encoder's state dict and its sidecar (method, encoder name, channels, …) atomically."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    described = getattr(encoder, SIDECAR_ATTRIBUTE, None) or {}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "sslseg-encoder-1"})
    write_json(sidecar_path(path), {"format": "sslseg-encoder-1", **described, **metadata})
    return path


def describe_unet_decoder(
    decoder: nn.Module, encoder: str, in_channels: int, decoder_channels: tuple[int, ...]
) -> nn.Module:
    """Mark a U-Net decoder so its saved sidecar says what it fits: encoder, input and decoder channels."""
    setattr(
        decoder,
        SIDECAR_ATTRIBUTE,
        {
            "kind": UNET_DECODER,
            "encoder": encoder,
            "in_channels": in_channels,
            "decoder_channels": [int(c) for c in decoder_channels],
        },
    )
    return decoder


def read_metadata(path: str | Path) -> dict[str, Any]:
    """The sidecar of a weights file ({} when there is none)."""
    side = sidecar_path(Path(path))
    if not side.exists():
        return {}
    try:
        return json.loads(side.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise DataError(side, f"unreadable weights metadata: {e}") from None


def load_encoder(
    encoder: nn.Module, path: str | Path, encoder_name: str | None = None, in_channels: int | None = None
) -> dict[str, Any]:
    """Load weights into `encoder` strictly; returns the sidecar metadata."""
    path = Path(path)
    if path.is_dir():
        path = path / "encoder.safetensors"
    if not path.is_file():
        raise DataError(path, "encoder weights file not found")
    meta = read_metadata(path)
    if encoder_name and meta.get("encoder") and meta["encoder"] != encoder_name:
        raise ConfigError(
            f"{path}: weights are for encoder '{meta['encoder']}', but the model uses '{encoder_name}'"
        )
    if in_channels and meta.get("in_channels") and int(meta["in_channels"]) != in_channels:
        raise ConfigError(
            f"{path}: weights expect {meta['in_channels']} input channels, the data has {in_channels}"
        )
    _load_strict(encoder, path, "encoder", encoder_name if not meta.get("encoder") else None)
    return meta


def _load_strict(module: nn.Module, path: Path, what: str, expected: str | None = None) -> None:
    """Load a safetensors file into `module`, refusing any missing, unexpected or reshaped key."""
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(path, f"not a readable safetensors file (truncated or corrupt?): {e}") from None
    own = module.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        # without a sidecar naming their encoder, say what these weights were checked against
        hint = f"; were they saved for another encoder than '{expected}'?" if expected else ""
        raise ConfigError(
            f"{path}: weights do not fit this {what}: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}, {len(wrong)} shape mismatches {wrong[:3]}"
            f"{hint}"
        )
    with torch.no_grad():
        module.load_state_dict(state, strict=True)


def decoder_beside(encoder_path: str | Path) -> Path | None:
    """The `decoder.safetensors` next to an encoder weights file (or in its folder) whose sidecar says it is
    a U-Net decoder, or None: a pretraining run that trained the decoder too leaves one there."""
    path = Path(encoder_path)
    if path.is_dir():
        path = path / "encoder.safetensors"
    decoder = path.with_name("decoder.safetensors")
    if decoder == path or not decoder.is_file():
        return None
    return decoder if read_metadata(decoder).get("kind") == UNET_DECODER else None


def load_decoder(
    decoder: nn.Module,
    path: str | Path,
    encoder_name: str,
    in_channels: int,
    decoder_channels: tuple[int, ...],
    encoder_meta: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Load pretrained U-Net decoder weights strictly, after checking their sidecar matches this U-Net (and,
    given the encoder's sidecar, that both come from one run); returns the sidecar metadata."""
    path = Path(path)
    if not path.is_file():
        raise DataError(path, "decoder weights file not found")
    meta = read_metadata(path)
    fix = "set model.encoder/decoder_channels to match, or move this file away to fine-tune a fresh decoder"
    if meta.get("kind") != UNET_DECODER:
        raise ConfigError(f"{path}: not a U-Net decoder (sidecar kind {meta.get('kind')!r})")
    if meta.get("encoder") != encoder_name:
        raise ConfigError(
            f"{path}: decoder was pretrained for encoder '{meta.get('encoder')}', the model uses "
            f"'{encoder_name}'; {fix}"
        )
    if int(meta.get("in_channels", in_channels)) != in_channels:
        raise ConfigError(
            f"{path}: decoder was pretrained on {meta['in_channels']}-channel images, the data has "
            f"{in_channels}; {fix}"
        )
    if [int(c) for c in meta.get("decoder_channels", [])] != [int(c) for c in decoder_channels]:
        raise ConfigError(
            f"{path}: decoder was pretrained with decoder_channels {meta.get('decoder_channels')}, the "
            f"model uses {list(decoder_channels)}; {fix}"
        )
    for key in _RUN_FIELDS:
        if encoder_meta and key in meta and key in encoder_meta and meta[key] != encoder_meta[key]:
            raise ConfigError(
                f"{path}: decoder comes from another pretraining run than the encoder beside it "
                f"({key}: {meta[key]!r} vs {encoder_meta[key]!r}); {fix}"
            )
    _load_strict(decoder, path, "decoder")
    return meta


def encoder_from_weights(
    path: str | Path, encoder_name: str | None = None, in_channels: int | None = None
) -> nn.Module:
    """A pretrained encoder from `encoder.safetensors` (or its folder), loaded strictly into a fresh encoder
    of that architecture; name and channels default to the weights' sidecar. On the CPU."""
    path = Path(path)
    if path.is_dir():
        path = path / "encoder.safetensors"
    meta = read_metadata(path) if path.is_file() else {}
    encoder_name = encoder_name or meta.get("encoder")
    in_channels = in_channels or (int(meta["in_channels"]) if meta.get("in_channels") else None)
    if not encoder_name or not in_channels:
        raise ConfigError(
            f"{path}: the sidecar does not say the encoder name and input channels; pass encoder_name "
            "and in_channels"
        )
    encoder = build_encoder(encoder_name, in_channels)
    load_encoder(encoder, path, encoder_name, in_channels)
    return encoder.eval()
