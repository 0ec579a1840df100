"""The TorchScript exporter: trace, save and run back a `ProbabilityNet`, checked against PyTorch."""

from __future__ import annotations

import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from sslseg.atomic import atomic_path
from sslseg.export.common import ProbabilityNet, max_abs_difference


def export_torchscript(net: ProbabilityNet, path: Path, tiles: Sequence[torch.Tensor]) -> float:
    """Trace the network to TorchScript, save it atomically, and return the largest difference of the
    saved file's outputs from PyTorch on `tiles`."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(net, tiles[0], check_trace=False)
    with atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp))
    return max_abs_difference(net, torchscript_runner(path), tiles)


def torchscript_runner(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    """An exported TorchScript file as a function of a batch, on the CPU."""
    loaded = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return loaded(x).numpy()

    return run
