"""One path from a normalised image to a label map at native resolution, shared by validation, evaluation
and prediction so that what is scored is exactly what users get."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslseg.config import InferenceConfig, PostprocessConfig
from sslseg.segmentation.postprocess import distance_to_instances, probabilities_to_classes
from sslseg.segmentation.tiling import sliding_window


def activate(logits: torch.Tensor, task: str) -> torch.Tensor:
    """Logits → probabilities: softmax over classes, or sigmoid for [foreground, distance]."""
    return logits.softmax(dim=1) if task == "semantic" else logits.sigmoid()


@torch.no_grad()
def predict_probabilities(
    net: nn.Module,
    image: np.ndarray,
    task: str,
    native_shape: tuple[int, int],
    cfg: InferenceConfig | None = None,
) -> torch.Tensor:
    """Tiled forward pass over a C×h×w image; probabilities resized to the native H×W (K×H×W, CPU)."""
    cfg = cfg or InferenceConfig()
    device = next(net.parameters()).device
    x = torch.from_numpy(np.ascontiguousarray(image)).to(device)

    def run(batch: torch.Tensor) -> torch.Tensor:
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
            return activate(net(batch), task)

    probs = sliding_window(run, x, cfg.tile_size, cfg.overlap, cfg.batch_size)
    if tuple(probs.shape[1:]) != tuple(native_shape):
        probs = F.interpolate(probs[None], size=native_shape, mode="bilinear", align_corners=False)[0]
    return probs.cpu()


def probabilities_to_labels(
    probs: torch.Tensor, task: str, post: PostprocessConfig | None = None
) -> np.ndarray:
    """Probabilities → class map (semantic) or instance map (instance)."""
    p = probs.numpy()
    if task == "semantic":
        return probabilities_to_classes(p)
    return distance_to_instances(p[0], p[1], post)
