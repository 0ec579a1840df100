"""What each segmentation task says about its labels, torch-free, for the ground floor (config, datasets,
verify) that reads labels before any network exists; `sslseg.segmentation.tasks` builds each task on its
rules here, so every rule is written once and asked of the task by name (`task_rules(cfg.data.task)`)."""

from __future__ import annotations

from typing import ClassVar


class TaskRules:
    """The label rules of one segmentation task; subclasses fill in the class attributes."""

    name: ClassVar[str]
    labels_are_classes: ClassVar[bool]  # label maps hold class indices (else object ids)
    sizes_objects: ClassVar[bool]  # objects have sizes: `data.object_size` can choose the working scale
    balances_objects: ClassVar[bool]  # `loss.object_balance` can weigh each pixel by its object

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


class SemanticRules(TaskRules):
    """Class maps: binary masks or class indices, no objects to size or balance."""

    name = "semantic"
    labels_are_classes = True
    sizes_objects = False
    balances_objects = False


class InstanceRules(TaskRules):
    """Object ids (0 = background, never negative): objects have sizes and can be balanced."""

    name = "instance"
    labels_are_classes = False
    sizes_objects = True
    balances_objects = True


TASK_RULES: dict[str, TaskRules] = {r.name: r for r in (SemanticRules(), InstanceRules())}


def task_rules(name: str) -> TaskRules:
    """The rules of the task named `name`; an unknown name is an error listing the valid ones."""
    try:
        return TASK_RULES[name]
    except KeyError:
        raise ValueError(f"unknown task '{name}'; choose one of {', '.join(TASK_RULES)}") from None
