"""Network runners: what turns a batch of normalised tiles into probabilities, built once per model and
handed down through tiled, test-time-augmented and block-wise inference, so the engine that runs the
network (PyTorch, or onnxruntime on the CPU) is chosen in one place.

The ONNX engine exports the loaded network (with its task's activation) once per process, in memory, with
the exporter `sslseg export` writes files with (`onnx_export`), and runs it with onnxruntime's CPU
provider on as many threads as torch uses."""

from __future__ import annotations

import hashlib
import importlib
import io
import warnings
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from sslseg.errors import ConfigError
from sslseg.segmentation.tasks import Task, as_task

#: What `sslseg predict --engine` accepts.
ENGINES = ("auto", "torch", "onnx")
ONNX_OPSET = 17
ONNX_EXPORTERS = ("torchscript", "dynamo")
EXTRA_HINT = "install the export extra: pip install 'sslseg[export]'"


class NetworkRunner(ABC):
    """B×C×h×w normalised tiles (on `device`) → B×K×h×w probabilities (any float dtype, any device); `net`
    is the PyTorch network it runs, for what inference reads off it (input channels)."""

    name: str
    net: nn.Module
    device: torch.device

    @abstractmethod
    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        """Probabilities of one batch of tiles."""


class ActivatedNet(nn.Module):
    """A segmentation network followed by its task's activation (softmax over classes, sigmoid for
    instance maps): what every engine and every exported file computes. `task` is a task object or name,
    resolved here once."""

    def __init__(self, net: nn.Module, task: str | Task) -> None:
        super().__init__()
        self.net = net
        self.task = as_task(task)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.task.activate(self.net(x))


class TorchRunner(NetworkRunner):
    """The network run by PyTorch where its weights are, in bfloat16 autocast on CUDA."""

    name = "torch"

    def __init__(self, net: nn.Module, task: str | Task) -> None:
        self.net = net
        self.task = as_task(task)  # resolved once, not per batch
        self.device = next(net.parameters()).device

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            return self.task.activate(self.net(batch))


class OnnxRunner(NetworkRunner):
    """The network exported to ONNX in memory and run by onnxruntime on the CPU (intra-op threads: torch's
    thread count, so both engines use the same cores)."""

    name = "onnx"

    def __init__(self, net: nn.Module, task: str | Task, threads: int | None = None) -> None:
        ort = require("onnxruntime", "--engine onnx")
        self.net = net
        self.task = as_task(task)
        self.device = torch.device("cpu")
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads or torch.get_num_threads()
        options.inter_op_num_threads = 1
        options.enable_cpu_mem_arena = False  # peak memory ~1400 MiB, not 1615, no slower (RESULTS.md)
        model = _onnx_model(net, self.task)
        self.session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
        self.input = self.session.get_inputs()[0].name

    def __call__(self, batch: torch.Tensor) -> torch.Tensor:
        x = batch.detach().to("cpu", torch.float32).contiguous().numpy()
        return torch.from_numpy(self.session.run(None, {self.input: x})[0])


_EXPORTED: dict[str, bytes] = {}  # the last network exported in this process, by what determines it


def _onnx_model(net: nn.Module, task: Task) -> bytes:
    """`net` with its task's activation as an in-memory ONNX model, exported once per process: a network
    with the same architecture, weights and task (e.g. the same checkpoint predicted again through the
    Python API) reuses the last export."""
    digest = hashlib.blake2b(f"{task.name}|{net!r}".encode(), digest_size=16)
    for name, value in net.state_dict().items():
        digest.update(name.encode())
        digest.update(value.detach().cpu().contiguous().view(-1).view(torch.uint8).numpy())
    key = digest.hexdigest()
    if key not in _EXPORTED:
        channels = next(m.in_channels for m in net.modules() if isinstance(m, nn.Conv2d))
        example = torch.zeros(1, channels, 64, 64, device=next(net.parameters()).device)
        buffer = io.BytesIO()
        training = net.training
        try:  # exported as inference runs it (BatchNorm's running statistics), the caller's mode kept
            onnx_export(ActivatedNet(net, task).eval(), example, buffer)
        finally:
            net.train(training)
        _EXPORTED.clear()  # one model at a time: an export is as large as the weights
        _EXPORTED[key] = buffer.getvalue()
    return _EXPORTED[key]


def require(module: str, purpose: str) -> Any:
    """Import an optional dependency, or say in one line which extra brings it."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise ConfigError(
            f"{purpose} needs the package '{module}', which is not installed; {EXTRA_HINT}"
        ) from None


def onnx_export(
    net: nn.Module, example: torch.Tensor, target: str | Path | BinaryIO, exporter: str = "torchscript"
) -> None:
    """Write `net` as ONNX (opset ONNX_OPSET; batch, height and width dynamic; input `input`, output
    `output`) to a file or an in-memory buffer, with torch's TorchScript-based exporter (fast, no extra
    dependency) or its dynamo exporter (needs onnxscript; files only)."""
    if exporter not in ONNX_EXPORTERS:
        raise ConfigError(f"unknown ONNX exporter '{exporter}'; choose from {', '.join(ONNX_EXPORTERS)}")
    # batch, height and width stay free; the two exporters spell that differently
    if exporter == "dynamo":
        dynamic: dict[str, Any] = {
            "dynamic_shapes": {"x": dict.fromkeys((0, 2, 3), torch.export.Dim.DYNAMIC)},
            "dynamo": True,
            "external_data": False,
        }
    else:
        axes = {0: "batch", 2: "height", 3: "width"}
        dynamic = {"dynamic_axes": {"input": axes, "output": axes}, "dynamo": False}
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the TorchScript-based exporter announces its deprecation
        torch.onnx.export(
            net,
            (example,),
            target if isinstance(target, io.IOBase) else str(target),
            input_names=["input"],
            output_names=["output"],
            opset_version=ONNX_OPSET,
            **dynamic,
        )


def onnx_available() -> bool:
    """Whether onnxruntime can be imported here."""
    try:
        importlib.import_module("onnxruntime")
    except ImportError:
        return False
    return True


def resolve_engine(engine: str, device: torch.device | str) -> str:
    """The engine `engine` names on `device`: `auto` is onnx on the CPU when onnxruntime is installed (it
    gave the same labels faster in benchmarks/predict_engines.py), else torch. ONNX runs on the CPU only, so
    asking for it with an accelerator is a ConfigError."""
    engine = engine.strip().lower()
    if engine not in ENGINES:
        raise ConfigError(f"unknown engine '{engine}'; choose from {', '.join(ENGINES)}")
    cpu = torch.device(device).type == "cpu"
    if engine == "auto":
        return "onnx" if cpu and onnx_available() else "torch"
    if engine == "onnx" and not cpu:
        raise ConfigError(
            f"--engine onnx runs on the CPU, not on {torch.device(device).type}; use --device cpu or "
            "--engine torch"
        )
    return engine


def network_runner(net: nn.Module | NetworkRunner, task: str | Task, engine: str = "torch") -> NetworkRunner:
    """The runner of a network by `engine` (torch, onnx or auto, see `resolve_engine`); a runner is
    returned as it is (its task not looked up), so inference functions take either."""
    if isinstance(net, NetworkRunner):
        return net
    device = next(net.parameters()).device
    if resolve_engine(engine, device) == "onnx":
        return OnnxRunner(net, task)
    return TorchRunner(net, task)
