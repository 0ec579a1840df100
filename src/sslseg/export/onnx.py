"""The ONNX exporter: export a `ProbabilityNet` with dynamic axes and run it back with onnxruntime, checked
against PyTorch (the optional onnx, onnxruntime and onnxscript load only here, on use)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch

from sslseg.atomic import atomic_path
from sslseg.errors import ConfigError
from sslseg.export.common import ProbabilityNet, max_abs_difference
from sslseg.segmentation.engines import ONNX_EXPORTERS, onnx_export, require


def export_onnx(
    net: ProbabilityNet, path: Path, tiles: Sequence[torch.Tensor], exporter: str = "torchscript"
) -> float:
    """Export the network to ONNX (opset ONNX_OPSET, batch, height and width dynamic) with torch's
    TorchScript-based exporter (fast, no extra dependency) or its dynamo exporter (needs onnxscript), and
    return the largest difference of onnxruntime's outputs from PyTorch on `tiles`."""
    if exporter not in ONNX_EXPORTERS:
        raise ConfigError(f"unknown ONNX exporter '{exporter}'; choose from {', '.join(ONNX_EXPORTERS)}")
    onnx = require("onnx", "ONNX export")
    require("onnxruntime", "checking the ONNX export")
    if exporter == "dynamo":
        require("onnxscript", "the dynamo ONNX exporter")
    with atomic_path(path) as tmp:
        onnx_export(net, tiles[0], tmp, exporter)
    onnx.checker.check_model(str(path), full_check=True)  # well-formed, and its shapes infer
    return max_abs_difference(net, onnx_runner(path), tiles)


def onnx_runner(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    """An exported ONNX file as a function of a batch, run by onnxruntime on the CPU."""
    ort = require("onnxruntime", "running an ONNX export")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.detach().cpu().numpy()})[0]
