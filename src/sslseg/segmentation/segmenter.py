"""What turns an image into labels, resolved once from a checkpoint: the network's runner (torch or ONNX),
the task object, the instance head, post-processing thresholds, inference settings (tiles, overlap, TTA),
the working scale and the input channels and normalisation. Prediction builds one `Segmenter` and hands it
down, so no layer below looks the task up again from its name or re-reads these settings from a config."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from sslseg.config import DataConfig, FinetuneConfig, InferenceConfig, PostprocessConfig
from sslseg.data.datasets import prepare_image
from sslseg.data.lazy import ImageSource
from sslseg.data.scale import known_size_factor
from sslseg.device import resolve_device
from sslseg.errors import ConfigError, DataError
from sslseg.segmentation.blocks import segment_blocks
from sslseg.segmentation.engines import NetworkRunner, network_runner, require, resolve_engine
from sslseg.segmentation.heads import InstanceHead, instance_head
from sslseg.segmentation.inference import predict_probabilities, probabilities_to_labels
from sslseg.segmentation.module import SegmentationModule
from sslseg.segmentation.tasks import Task


def load_module(checkpoint: str | Path, device: str = "auto", tta: bool | None = None) -> SegmentationModule:
    """Load a fine-tuned model from a Lightning checkpoint (or a run folder holding `best.ckpt`) onto
    `device` (see `sslseg.device.resolve_device`: auto = cuda > mps > cpu); `tta` overrides the test-time
    augmentation setting it was trained with."""
    path = Path(checkpoint)
    if path.is_dir():
        path = path / "best.ckpt"
    if not path.is_file():
        raise DataError(path, "checkpoint not found")
    target = resolve_device(device)  # an unavailable device fails before the checkpoint is read
    try:
        module = SegmentationModule.load_from_checkpoint(path, map_location=target, load_init=False)
    except (RuntimeError, EOFError, KeyError, OSError, ValueError) as e:
        raise DataError(path, f"not a readable sslseg checkpoint (truncated or corrupt?): {e}") from None
    if tta is not None:
        inference = module.cfg.inference.model_copy(update={"tta": tta})
        module.cfg = module.cfg.model_copy(update={"inference": inference})
    return module.to(target).eval()


@dataclass(frozen=True, eq=False)
class Segmenter:
    """A loaded model with everything its predictions need, resolved once: `runner` runs the network
    (`sslseg.segmentation.engines`), `task` is the config's task object, `cfg` the run's config with any
    inference overrides, `in_channels` what the network takes. `module` is kept for callers that score."""

    module: SegmentationModule
    runner: NetworkRunner
    task: Task
    cfg: FinetuneConfig
    in_channels: int

    @classmethod
    def from_module(cls, module: SegmentationModule, engine: str = "torch") -> Segmenter:
        """The segmenter of a loaded module (its config as it is), its network run by `engine`."""
        task = module.task  # resolved once when the module was built
        runner = network_runner(module.net, task, engine)
        return cls(module, runner, task, module.cfg, int(module.hparams["in_channels"]))

    @classmethod
    def from_checkpoint(
        cls,
        checkpoint: str | Path,
        engine: str = "auto",
        device: str = "auto",
        tta: bool | None = None,
        tile_size: int | None = None,
        batch_size: int | None = None,
    ) -> Segmenter:
        """Load a checkpoint (see `load_module`) with its network run by `engine` (torch, onnx or auto, see
        `resolve_engine`; onnx with device auto runs on the CPU) on `device`; `tta`, `tile_size` and
        `batch_size` override the checkpoint's inference settings (an invalid one is a ConfigError)."""
        if engine.strip().lower() == "onnx" and device.strip().lower() == "auto":
            device = "cpu"  # onnxruntime runs on the CPU: the network's weights need not go elsewhere
        engine = resolve_engine(engine, resolve_device(device))
        if engine == "onnx":  # a missing onnxruntime fails before the checkpoint is read
            require("onnxruntime", "--engine onnx")
        module = load_module(checkpoint, device=device, tta=tta)
        runner = network_runner(module.net, module.task, engine)
        updates = {k: v for k, v in (("tile_size", tile_size), ("batch_size", batch_size)) if v is not None}
        if updates:
            try:
                inference = InferenceConfig.model_validate(module.cfg.inference.model_dump() | updates)
            except ValueError as exc:
                raise ConfigError(f"--tile-size/--batch-size: {exc}") from None
            module.cfg = module.cfg.model_copy(update={"inference": inference})
        return cls(module, runner, module.task, module.cfg, int(module.hparams["in_channels"]))

    @property
    def data(self) -> DataConfig:
        """The data settings: normalisation, scale, object size, bright objects."""
        return self.cfg.data

    @property
    def inference(self) -> InferenceConfig:
        """Tiles, overlap, batch size, test-time augmentation."""
        return self.cfg.inference

    @property
    def post(self) -> PostprocessConfig:
        """The post-processing thresholds (tuned on validation for instance tasks)."""
        return self.cfg.postprocess

    @property
    def head_name(self) -> str:
        """The instance head's name (`model.instance_head`), as inference functions take it."""
        return self.cfg.model.instance_head

    @property
    def head(self) -> InstanceHead | None:
        """The instance head, or None for a task whose labels are classes."""
        return None if self.task.labels_are_classes else instance_head(self.head_name)

    @property
    def needs_pixel_size(self) -> bool:
        """Whether an image's working scale depends on its pixel size (`data.object_size_um` is set), so
        callers read the pixel size only when `scale` uses it."""
        return self.cfg.data.object_size_um is not None

    def scale(self, pixel_size: tuple[float, float] | None, path: Path) -> float:
        """The working scale of an image: `data.scale`, or the factor the objects' real size
        (`data.object_size_um`) and the image's `pixel_size` fix (a missing one is a DataError on `path`
        that names --pixel-size, which predict and select take)."""
        d = self.cfg.data
        if d.object_size_um is None:
            return d.scale
        return known_size_factor(d.object_size_um, d.object_size, pixel_size, path, hint="--pixel-size")

    def prepare(self, raw: np.ndarray, pixel_size: tuple[float, float] | None, path: Path) -> np.ndarray:
        """A raw H×W×C image → the normalised C×h×w network input at its working scale (see `scale`)."""
        d = self.cfg.data
        scale = self.scale(pixel_size, path)
        return prepare_image(raw, self.in_channels, d.normalization, scale, d.bright_objects)

    def probabilities(self, image: np.ndarray, native_shape: tuple[int, int]) -> torch.Tensor:
        """Class/instance maps at `native_shape` (K×H×W, CPU) of one prepared image, by the checkpoint's
        inference settings (tiling, test-time augmentation, object-size rescaling)."""
        return predict_probabilities(
            self.runner,
            image,
            self.task,
            native_shape,
            self.inference,
            self.cfg.data.measured_object_size,  # with object_size_um the image comes at its working scale
            self.head_name,
        )

    def labels(self, probs: torch.Tensor) -> np.ndarray:
        """Probabilities → the label map, by the task and the checkpoint's post-processing."""
        return probabilities_to_labels(probs, self.task, self.post, self.head_name)

    def segment(self, image: np.ndarray, native_shape: tuple[int, int]) -> np.ndarray:
        """The label map (native shape) of one prepared image."""
        return self.labels(self.probabilities(image, native_shape))

    def segment_blocks(self, source: ImageSource, **options: Any) -> Iterator[tuple[int, np.ndarray]]:
        """A large image's label map in bands, block by block (`sslseg.segmentation.blocks.segment_blocks`,
        whose keyword `options` pass through), with this segmenter's runner, config and task."""
        return segment_blocks(self.runner, source, self.cfg, task=self.task, **options)

    def objects(self, labels: np.ndarray) -> tuple[np.ndarray, dict[int, int] | None]:
        """The objects of a label map and, for class maps, the class of each (see `Task.objects`)."""
        return self.task.objects(labels)
