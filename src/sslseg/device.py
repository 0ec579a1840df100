"""Which torch device inference runs on: `auto` takes the best one present (CUDA, then Apple's MPS, then the
CPU); a device asked for by name that this machine lacks is a clear error, never a silent fall-back."""

from __future__ import annotations

import contextlib

import torch

from sslseg.errors import ConfigError

#: The names `--device` accepts.
DEVICES = ("auto", "cpu", "cuda", "mps")


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def available_devices() -> list[str]:
    """The device kinds usable here, best first (the CPU always)."""
    found = ["cuda"] if torch.cuda.is_available() else []
    if _mps_available():
        found.append("mps")
    return [*found, "cpu"]


def resolve_device(name: str) -> torch.device:
    """The torch device for `name` (one of DEVICES, or an indexed CUDA device such as `cuda:1`): `auto`
    picks cuda > mps > cpu; a device that is not available is a ConfigError saying which ones are."""
    requested = name.strip().lower()
    kind, _, index = requested.partition(":")
    if kind not in DEVICES or (index and (kind != "cuda" or not index.isdigit())):
        raise ConfigError(f"unknown device '{name}'; choose from {', '.join(DEVICES)} (or cuda:N)")
    here = available_devices()
    if kind == "auto":
        return torch.device(here[0])
    if kind not in here:
        raise ConfigError(
            f"device '{name}' is not available on this machine (available: {', '.join(here)}); "
            "use --device auto to take the best one present"
        )
    if index and int(index) >= torch.cuda.device_count():
        raise ConfigError(
            f"device '{name}' does not exist: this machine has {torch.cuda.device_count()} CUDA device(s)"
        )
    return torch.device(requested)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU computes bfloat16 in hardware (AVX512-BF16 or AMX): there bf16 autocast makes
    convolutions ~1.4x faster (benchmarks/RESULTS.md); elsewhere it emulates bf16 and is slower."""
    return bool(
        getattr(torch.cpu, "_is_avx512_bf16_supported", lambda: False)()
        or getattr(torch.cpu, "_is_amx_tile_supported", lambda: False)()
    )


def fast_autocast(device: torch.device) -> contextlib.AbstractContextManager:
    """bfloat16 autocast where the hardware computes it natively (CUDA, CPUs with `cpu_has_native_bf16`),
    else nothing: for inference whose result is read at float precision afterwards."""
    if device.type == "cuda" or (device.type == "cpu" and cpu_has_native_bf16()):
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()
