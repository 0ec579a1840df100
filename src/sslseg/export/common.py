"""The network every exported format holds and the check each format must pass against PyTorch: shared by
the TorchScript, ONNX and bioimage.io exporters and by the entry point, so none of them owns it."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslseg.errors import ConfigError, ExportCheckFailed
from sslseg.nn.unet import build_unet
from sslseg.segmentation.engines import ActivatedNet
from sslseg.segmentation.module import SegmentationModule
from sslseg.segmentation.tasks import task_named

#: Largest absolute difference in probability allowed between PyTorch and an exported format.
TOLERANCE = 1e-4
#: (batch, height, width) of the random tiles each format is checked on, in multiples of the U-Net's stride:
#: two shapes, so a format whose spatial axes were fixed at export fails the check.
CHECK_TILES = ((1, 3, 4), (2, 2, 2))
FILE_NAMES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx", "bioimageio": "bioimageio.zip"}


class ProbabilityNet(ActivatedNet):
    """A fine-tuned sslseg U-Net followed by its task's activation, as every exported format holds it:
    B×C×H×W normalised images in (H and W multiples of `stride`), B×K×H×W probabilities out (softmax over
    the classes for semantic tasks, one sigmoid map per channel of the instance head for instance tasks).
    Importable by name, so a bioimage.io `pytorch_state_dict` can rebuild it."""

    def __init__(
        self,
        encoder: str,
        in_channels: int,
        out_channels: int,
        decoder_channels: Sequence[int],
        task: str,
    ) -> None:
        try:
            resolved = task_named(task)  # the one lookup: the activation keeps the object
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        super().__init__(build_unet(encoder, in_channels, out_channels, tuple(decoder_channels)), resolved)
        self.stride = 2 ** len(decoder_channels)


def architecture_kwargs(module: SegmentationModule) -> dict[str, Any]:
    """The arguments of `ProbabilityNet` that rebuild a fine-tuned module's network."""
    cfg = module.cfg
    return {
        "encoder": cfg.model.encoder,
        "in_channels": int(module.hparams["in_channels"]),
        "out_channels": module.task.output_channels(cfg),  # the task the module resolved when built
        "decoder_channels": [int(c) for c in cfg.model.decoder_channels],
        "task": cfg.data.task,
    }


def probability_net(module: SegmentationModule) -> ProbabilityNet:
    """The exportable network of a fine-tuned module (its weights copied), on the CPU in eval mode."""
    net = ProbabilityNet(**architecture_kwargs(module))
    net.net.load_state_dict(module.net.state_dict())
    return net.cpu().eval()


@dataclass
class ExportResult:
    """What an export wrote and how closely each format reproduces PyTorch."""

    out: Path
    files: dict[str, Path]
    max_abs_diff: dict[str, float]
    package_bytes: int | None = None
    validation: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (what the CLI prints)."""
        return {
            "out": str(self.out),
            "files": {k: str(v) for k, v in self.files.items()},
            "max_abs_diff": self.max_abs_diff,
            "tolerance": TOLERANCE,
            "package_bytes": self.package_bytes,
            "validation": self.validation,
        }


def random_tiles(in_channels: int, stride: int, seed: int = 0) -> list[torch.Tensor]:
    """The normalised random tiles (CHECK_TILES) every format is compared with PyTorch on."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, in_channels, h * stride, w * stride, generator=gen) for b, h, w in CHECK_TILES]


def max_abs_difference(
    reference: Callable[[torch.Tensor], torch.Tensor],
    candidate: Callable[[torch.Tensor], np.ndarray],
    tiles: Sequence[torch.Tensor],
) -> float:
    """Largest absolute difference between two networks' outputs over `tiles` (a shape mismatch is an
    ExportCheckFailed too)."""
    worst = 0.0
    for x in tiles:
        with torch.no_grad():
            expected = reference(x).numpy()
        got = np.asarray(candidate(x))
        if got.shape != expected.shape:
            raise ExportCheckFailed(
                f"output shape {got.shape} for input {tuple(x.shape)}, PyTorch gives {expected.shape}"
            )
        worst = max(worst, float(np.abs(got.astype(np.float64) - expected).max()))
    return worst


def check_close(name: str, path: Path, diff: float, tolerance: float = TOLERANCE) -> None:
    """Fail loudly when an exported file does not reproduce PyTorch."""
    if not diff <= tolerance:  # NaN fails too
        raise ExportCheckFailed(
            f"{path}: the {name} export differs from PyTorch by up to {diff:.3g} on random tiles "
            f"(tolerance {tolerance:g}); it was kept for inspection but must not be used"
        )
