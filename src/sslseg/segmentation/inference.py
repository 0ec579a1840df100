"""One path from a normalised image to a label map at native resolution, shared by validation, evaluation
and prediction so that what is scored is exactly what users get."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from sslseg.config import InferenceConfig, PostprocessConfig
from sslseg.data.datasets import rescale_image
from sslseg.data.scale import MIN_FACTOR, median_diameter, size_factor
from sslseg.data.targets import DEFAULT_INSTANCE_HEAD
from sslseg.segmentation.engines import NetworkRunner, network_runner
from sslseg.segmentation.heads import instance_head
from sslseg.segmentation.tasks import INSTANCE, TASKS, Task, as_task
from sslseg.segmentation.tiling import sliding_window

SIZING_SPECK_FRACTION = 0.1  # objects under a tenth of the typical object's area are not measured
# Halving an image halves whole objects, but a network shown objects far larger than it was trained on cuts
# them into pieces of about its trained size, and those pieces keep (or grow in) size: objects that keep at
# least this fraction of their measured size when the image is halved are taken for fragments.
FRAGMENT_SHRINK = 0.75


def activate(logits: torch.Tensor, task: str | Task) -> torch.Tensor:
    """Logits → probabilities, as the task activates them (softmax over classes, sigmoid for instance maps)."""
    return as_task(task).activate(logits)


D4_SIZE = 8  # the flips and quarter turns of a square: the test-time augmentations


def d4_transform(x: np.ndarray, index: int) -> np.ndarray:
    """The `index`-th of the 8 rotations/flips of the last two axes (0 = identity): optional horizontal
    flip, then k quarter turns."""
    k, flip = index % 4, index >= 4
    if flip:
        x = x[..., ::-1]
    return np.ascontiguousarray(np.rot90(x, k, axes=(-2, -1)))


def d4_inverse(p: torch.Tensor, index: int) -> torch.Tensor:
    """Undo `d4_transform(·, index)` on a prediction (…×H×W)."""
    k, flip = index % 4, index >= 4
    p = torch.rot90(p, -k, dims=(-2, -1))
    return torch.flip(p, dims=(-1,)) if flip else p


RESCALE_TOLERANCE = 1.25  # a size estimate this close to the target is not worth a second pass


@torch.no_grad()
def predict_probabilities(
    net: nn.Module | NetworkRunner,
    image: np.ndarray,
    task: str | Task,
    native_shape: tuple[int, int],
    cfg: InferenceConfig | None = None,
    object_size: float | None = None,
    head: str = DEFAULT_INSTANCE_HEAD,
) -> torch.Tensor:
    """Tiled forward pass over a C×h×w image; probabilities resized to the native H×W (K×H×W, CPU).
        With `cfg.tta` the mean over the 8 flips/quarter turns, each mapped back before averaging. `net` is a
        network (run by PyTorch) or the `NetworkRunner` of another engine (`sslseg.segmentation.engines`).

        With `object_size` (instance tasks) the objects of a first prediction give the image's median object
        diameter (with `cfg.check_fragments`, checked for fragments by `_whole_object_diameter`); when it is
        off the target by more than RESCALE_TOLERANCE, the image is resized so objects become `object_size` px
        across (as in training) and predicted again. The size estimate takes one orientation even with
        `cfg.tta`: a median over objects does not need eight. `head` names the instance representation the
        network predicts (`model.instance_head`), which the size estimate segments with. `task` is a task object
    (from a `Segmenter`, not looked up again) or its name."""
    cfg = cfg or InferenceConfig()
    task = as_task(task)
    run = network_runner(net, task)
    if object_size is None or not task.sizes_objects:
        return _predict_oriented(run, image, task, native_shape, cfg)
    factor, probs = working_factor(run, image, native_shape, cfg, object_size, head)
    if factor == 1.0:
        return _predict_oriented(run, image, task, native_shape, cfg, identity=probs)
    return _predict_oriented(run, rescale_image(image, factor), task, native_shape, cfg)


def working_factor(
    net: nn.Module | NetworkRunner,
    image: np.ndarray,
    native_shape: tuple[int, int],
    cfg: InferenceConfig,
    object_size: float,
    head: str = DEFAULT_INSTANCE_HEAD,
) -> tuple[float, torch.Tensor]:
    """The resize factor that brings the objects of a prepared instance image to `object_size` px (1.0 when
    within RESCALE_TOLERANCE or nothing is found), with the first prediction it was measured on (native
    shape). Block-wise prediction measures it once on a sample of a large image and keeps it for all blocks."""
    run = network_runner(net, TASKS[INSTANCE])
    probs = _predict_once(run, image, INSTANCE, native_shape, cfg)
    diameter = _sizing_diameter(probs, head)
    factor = 1.0  # nothing found: no size to go by
    if diameter is not None:
        diameter *= image.shape[1] / native_shape[0]  # in working pixels
        if cfg.check_fragments:
            diameter = _whole_object_diameter(run, image, cfg, diameter, object_size, head)
        factor = size_factor(diameter, object_size)
    if 1 / RESCALE_TOLERANCE <= factor <= RESCALE_TOLERANCE:
        factor = 1.0
    return factor, probs


def predict_at_scale(
    net: nn.Module | NetworkRunner,
    image: np.ndarray,
    task: str | Task,
    native_shape: tuple[int, int],
    cfg: InferenceConfig,
) -> torch.Tensor:
    """Probabilities (K×H×W at `native_shape`, CPU) of a prepared image already at its working scale: one
    tiled pass, or the mean over the 8 flips/quarter turns with `cfg.tta`."""
    return _predict_oriented(network_runner(net, task), image, task, native_shape, cfg)


def _sizing_diameter(probs: torch.Tensor, head: str) -> float | None:
    """Median object diameter of an instance prediction, in its pixels. Specks are dropped before
    measuring: hundreds of them on a few large nuclei would otherwise pass for the median object and blow
    the image up instead of shrinking it."""
    post = PostprocessConfig(min_size_fraction=SIZING_SPECK_FRACTION)
    return median_diameter(instance_head(head).to_labels(probs.numpy(), post))


def _whole_object_diameter(
    run: NetworkRunner,
    image: np.ndarray,
    cfg: InferenceConfig,
    diameter: float,
    object_size: float,
    head: str,
) -> float:
    """The object diameter in working pixels: `diameter`, unless those objects are fragments (see
    FRAGMENT_SHRINK). Then the image is halved, down to MIN_FACTOR, until its objects shrink with it or
    come out under half the target size, and the last measurement before that is scaled back."""
    scale = 1.0
    while scale / 2 >= MIN_FACTOR:
        half = rescale_image(image, scale / 2)
        measured = _sizing_diameter(_predict_once(run, half, INSTANCE, half.shape[1:], cfg), head)
        # objects under half the target are whole ones seen small, whatever their size before
        if measured is None or measured < max(object_size / 2, FRAGMENT_SHRINK * diameter):
            break
        scale, diameter = scale / 2, measured
    return diameter / scale


def _predict_oriented(
    run: NetworkRunner,
    image: np.ndarray,
    task: str | Task,
    native_shape: tuple[int, int],
    cfg: InferenceConfig,
    identity: torch.Tensor | None = None,
) -> torch.Tensor:
    """One prediction, or with `cfg.tta` the mean over the 8 flips/quarter turns mapped back;
    `identity` is the untransformed prediction when the caller has it already."""
    if identity is None:
        identity = _predict_once(run, image, task, native_shape, cfg)
    if not cfg.tta:
        return identity
    h, w = native_shape
    total = identity
    for t in range(1, D4_SIZE):
        shape = (w, h) if t % 2 else (h, w)  # odd quarter turns swap the sides
        p = d4_inverse(_predict_once(run, d4_transform(image, t), task, shape, cfg), t)
        total = total + p
    return (total / D4_SIZE).contiguous()


def _predict_once(
    run: NetworkRunner,
    image: np.ndarray,
    task: str | Task,
    native_shape: tuple[int, int],
    cfg: InferenceConfig,
) -> torch.Tensor:
    x = torch.from_numpy(np.ascontiguousarray(image)).to(run.device)
    probs = sliding_window(run, x, cfg.tile_size, cfg.overlap, cfg.batch_size)
    if tuple(probs.shape[1:]) != tuple(native_shape):
        probs = F.interpolate(probs[None], size=native_shape, mode="bilinear", align_corners=False)[0]
    return probs.cpu()


def probabilities_to_labels(
    probs: torch.Tensor,
    task: str | Task,
    post: PostprocessConfig | None = None,
    head: str = DEFAULT_INSTANCE_HEAD,
) -> np.ndarray:
    """Probabilities → class map (semantic) or instance map (instance, by the instance `head`); `task` is a
    task object or its name."""
    return as_task(task).to_labels(probs.numpy(), post, head)
