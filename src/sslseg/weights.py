"""Encoder weight files: `encoder.safetensors` plus a JSON sidecar that says what produced them.

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


def sidecar_path(weights: Path) -> Path:
    """The metadata file that sits beside a weights file."""
    return weights.with_suffix(".json")


def save_encoder(encoder: nn.Module, path: str | Path, metadata: dict[str, Any]) -> Path:
    """Write the encoder's state dict and its sidecar (method, encoder name, channels, …) atomically."""
    path = Path(path)
    state = {k: v.detach().cpu().contiguous() for k, v in encoder.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(state, str(tmp), metadata={"format": "sslseg-encoder-1"})
    write_json(sidecar_path(path), {"format": "sslseg-encoder-1", **metadata})
    return path


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
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise DataError(path, f"not a readable safetensors file (truncated or corrupt?): {e}") from None
    own = encoder.state_dict()
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    wrong = [k for k in own.keys() & state.keys() if own[k].shape != state[k].shape]
    if missing or unexpected or wrong:
        raise ConfigError(
            f"{path}: weights do not fit this encoder: {len(missing)} missing keys {missing[:3]}, "
            f"{len(unexpected)} unexpected keys {unexpected[:3]}, {len(wrong)} shape mismatches {wrong[:3]}"
        )
    with torch.no_grad():
        encoder.load_state_dict(state, strict=True)
    return meta
