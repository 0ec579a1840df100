"""Segmentation tasks as objects: what a U-Net for the task outputs, how it learns, how its outputs become
label maps and how those are scored, in one registry (`TASKS`) as `METHODS` is for SSL.

A config names its task by string (`data.task: semantic | instance`); code that behaves differently by task
asks the task object (`task_named(cfg.data.task)`) instead of comparing strings. Each task is built on its
label rules (`sslseg.data.task_rules`), which the ground floor asks by name before any network exists. The instance task learns and
post-processes through the instance head the config chooses (`model.instance_head`,
`sslseg.segmentation.heads.INSTANCE_HEADS`), so a new instance representation is one more head, not a task.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import ClassVar

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from sslseg.config import FinetuneConfig, PostprocessConfig
from sslseg.data.targets import DEFAULT_INSTANCE_HEAD, instance_target_layout
from sslseg.data.task_rules import InstanceRules, SemanticRules, TaskRules, task_rules
from sslseg.losses.consistency import class_consistency, map_consistency
from sslseg.metrics import aji, instance_scores, semantic_scores
from sslseg.objects import semantic_objects
from sslseg.segmentation.heads import instance_head
from sslseg.segmentation.postprocess import probabilities_to_classes

Agreement = Callable[[np.ndarray, np.ndarray], float]

_MULTICLASS_DICE = smp.losses.DiceLoss("multiclass", from_logits=True)


class Task(TaskRules, ABC):
    """One segmentation task on its label rules (`TaskRules`); subclasses fill in the class attributes and
    the abstract methods."""

    display_name: ClassVar[str]  # how reports name it
    primary_metric: ClassVar[str]  # the score that selects checkpoints, tunes thresholds and leads reports
    metrics: ClassVar[tuple[str, ...]]  # the scores a study analyses, the primary one first
    tunes_postprocessing: ClassVar[bool]  # post-processing thresholds are tuned on the validation split
    activation: ClassVar[str]  # the function `activate` applies, by name (as exported files record it)

    @abstractmethod
    def output_channels(self, cfg: FinetuneConfig) -> int:
        """Channels of the U-Net's output."""

    @abstractmethod
    def output_names(self, cfg: FinetuneConfig) -> list[str]:
        """The name of each output channel, as exported files list them."""

    @abstractmethod
    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (B×K×H×W) → probabilities."""

    @abstractmethod
    def loss(self, logits: torch.Tensor, target: torch.Tensor, cfg: FinetuneConfig) -> torch.Tensor:
        """The supervised loss of a batch of logits against its targets."""

    @abstractmethod
    def consistency(
        self, student_logits: torch.Tensor, teacher_probs: torch.Tensor, cfg: FinetuneConfig
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Semi-supervised consistency loss of a student against a confident teacher, and the share used."""

    @abstractmethod
    def certainty(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Probabilities (K×H×W) → how sure each pixel's decision is (H×W, in [0.5, 1] for two outcomes)
        and which pixels are decided foreground (H×W bool): what self-training ranks images by."""

    @abstractmethod
    def binary_target_channels(self, cfg: FinetuneConfig) -> tuple[int, ...]:
        """Target channels that are 0/1 maps, re-binarised after a crop is zoomed."""

    @abstractmethod
    def to_labels(
        self, probs: np.ndarray, post: PostprocessConfig | None = None, head: str = DEFAULT_INSTANCE_HEAD
    ) -> np.ndarray:
        """Probabilities (K×H×W) → label map (class indices or object ids)."""

    @abstractmethod
    def scores(self, pred: np.ndarray, labels: np.ndarray, cfg: FinetuneConfig) -> dict[str, float]:
        """The task's metrics of one predicted label map against native-resolution labels."""

    @abstractmethod
    def agreement(self, cfg: FinetuneConfig) -> Agreement:
        """agreement(reference, other) of two label maps under the task's main measure, in [0, 1]."""

    def objects(self, labels: np.ndarray) -> tuple[np.ndarray, dict[int, int] | None]:
        """The objects of a label map (an instance map) and, for class maps, the class of each object."""
        if self.labels_are_classes:
            return semantic_objects(labels)
        return labels, None


class SemanticTask(SemanticRules, Task):
    """One channel per class: softmax, cross-entropy + Dice, the argmax class map, per-image Dice/IoU."""

    display_name = "semantic segmentation"
    primary_metric = "dice"
    metrics = ("dice", "iou")
    tunes_postprocessing = False
    activation = "softmax"

    def output_channels(self, cfg: FinetuneConfig) -> int:
        return cfg.data.num_classes

    def output_names(self, cfg: FinetuneConfig) -> list[str]:
        """Background, then one name per foreground class."""
        return ["background", *(f"class_{k}" for k in range(1, cfg.data.num_classes))]

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.softmax(dim=1)

    def loss(self, logits: torch.Tensor, target: torch.Tensor, cfg: FinetuneConfig) -> torch.Tensor:
        return F.cross_entropy(logits, target) + _MULTICLASS_DICE(logits, target)

    def consistency(
        self, student_logits: torch.Tensor, teacher_probs: torch.Tensor, cfg: FinetuneConfig
    ) -> tuple[torch.Tensor, torch.Tensor]:
        return class_consistency(student_logits, teacher_probs, cfg.semi.confidence, cfg.semi.dice)

    def certainty(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        return probs.max(axis=0), probs.argmax(axis=0) != 0

    def binary_target_channels(self, cfg: FinetuneConfig) -> tuple[int, ...]:
        return ()

    def to_labels(
        self, probs: np.ndarray, post: PostprocessConfig | None = None, head: str = DEFAULT_INSTANCE_HEAD
    ) -> np.ndarray:
        return probabilities_to_classes(probs)

    def scores(self, pred: np.ndarray, labels: np.ndarray, cfg: FinetuneConfig) -> dict[str, float]:
        return semantic_scores(pred, labels, cfg.data.num_classes)

    def agreement(self, cfg: FinetuneConfig) -> Agreement:
        """Dice of the foreground (mean over foreground classes), as `scores` computes it."""
        return lambda ref, other: semantic_scores(other, ref, cfg.data.num_classes)["dice"]


class InstanceTask(InstanceRules, Task):
    """The maps of the chosen instance head: sigmoid, the head's loss and post-processing, instance metrics."""

    display_name = "instance segmentation"
    primary_metric = "aji"
    metrics = ("aji", "aji_plus", "pq", "dsb_score", "f1@0.5")
    tunes_postprocessing = True
    activation = "sigmoid"

    def output_channels(self, cfg: FinetuneConfig) -> int:
        return instance_head(cfg.model.instance_head).channels

    def output_names(self, cfg: FinetuneConfig) -> list[str]:
        """The maps of the chosen instance head."""
        return list(instance_target_layout(cfg.model.instance_head).channels)

    def activate(self, logits: torch.Tensor) -> torch.Tensor:
        return logits.sigmoid()

    def loss(self, logits: torch.Tensor, target: torch.Tensor, cfg: FinetuneConfig) -> torch.Tensor:
        """The head's loss; with `loss.object_balance` the target's last channel is each pixel's weight
        minus 1 (see `load_samples`)."""
        head = instance_head(cfg.model.instance_head)
        balanced = cfg.loss.balance() is not None
        expected = head.channels + int(balanced)
        if target.shape[1] != expected:
            raise ValueError(
                f"instance targets have {target.shape[1]} channels; head '{head.name}' "
                f"{'with' if balanced else 'without'} object balancing expects {expected}"
            )
        weight = 1.0 + target[:, head.channels :] if balanced else None
        return head.loss(logits, target[:, : head.channels], weight)

    def consistency(
        self, student_logits: torch.Tensor, teacher_probs: torch.Tensor, cfg: FinetuneConfig
    ) -> tuple[torch.Tensor, torch.Tensor]:
        binary = self.binary_target_channels(cfg)
        return map_consistency(student_logits, teacher_probs, binary, cfg.semi.confidence, cfg.semi.dice)

    def certainty(self, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        foreground = probs[0]  # every head's first map
        return np.maximum(foreground, 1.0 - foreground), foreground >= 0.5

    def binary_target_channels(self, cfg: FinetuneConfig) -> tuple[int, ...]:
        return instance_head(cfg.model.instance_head).targets.binary

    def to_labels(
        self, probs: np.ndarray, post: PostprocessConfig | None = None, head: str = DEFAULT_INSTANCE_HEAD
    ) -> np.ndarray:
        return instance_head(head).to_labels(probs, post)

    def scores(self, pred: np.ndarray, labels: np.ndarray, cfg: FinetuneConfig) -> dict[str, float]:
        return instance_scores(labels, pred)

    def agreement(self, cfg: FinetuneConfig) -> Agreement:
        """AJI of the two label maps."""
        return aji


TASKS: dict[str, Task] = {t.name: t for t in (SemanticTask(), InstanceTask())}
# the instance task's name, for code that serves instance predictions only (measuring object sizes)
INSTANCE: str = InstanceTask.name


def task_named(name: str) -> Task:
    """The task registered under `name`; an unknown name is an error listing the valid ones (`task_rules`)."""
    return TASKS[task_rules(name).name]


def as_task(task: str | Task) -> Task:
    """A task object as it is, or the task registered under a name: lets inference take the object a
    `Segmenter` resolved once (no lookup) or, from older callers, a name (one lookup)."""
    return task if isinstance(task, Task) else task_named(task)
