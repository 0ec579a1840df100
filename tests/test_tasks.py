"""The task registry: one object per segmentation task, the only place that says what a task's outputs,
loss, labels, scores and primary metric are; configs name tasks by the registry's keys."""

from __future__ import annotations

import re
import typing
from pathlib import Path

import numpy as np
import pytest
import torch

from sslseg.config import FinetuneConfig, Task
from sslseg.data.task_rules import TASK_RULES, task_rules
from sslseg.segmentation.heads import INSTANCE_HEADS
from sslseg.segmentation.tasks import TASKS, task_named
from sslseg.study.analyze import analyze
from sslseg.study.spec import StudyConfig

SRC = Path(__file__).resolve().parents[1] / "src" / "sslseg"
# The registry: the task objects (floor 2) and the label rules they are built on, which the ground floor
# (config, datasets, verify) asks before any network exists. No other module compares task names.
REGISTRY = {"segmentation/tasks.py", "data/task_rules.py"}


def _cfg(task: str, **model) -> FinetuneConfig:
    return FinetuneConfig.model_validate({"data": {"task": task, "num_classes": 3}, "model": model})


def test_config_tasks_are_the_registry():
    assert set(typing.get_args(Task)) == set(TASKS) == set(TASK_RULES)
    with pytest.raises(ValueError, match="task"):
        _cfg("panoptic")
    with pytest.raises(ValueError, match="unknown task 'panoptic'; choose one of semantic, instance"):
        task_named("panoptic")


@pytest.mark.parametrize("name", list(TASKS))
def test_each_task_is_built_on_its_rules(name):
    task, rules = TASKS[name], task_rules(name)
    assert isinstance(task, type(rules)) and task.name == rules.name == name
    for rule in ("labels_are_classes", "sizes_objects", "balances_objects"):
        assert getattr(task, rule) == getattr(rules, rule)
    with pytest.raises(ValueError, match="unknown task 'panoptic'; choose one of semantic, instance"):
        task_rules("panoptic")


def test_no_module_outside_the_registry_compares_task_names():
    # `task == "x"`, `cfg["task"] == "x"` and the reverse order
    compare = re.compile(r"""task["'\]]*\s*[!=]=\s*["']|["']\s*[!=]=\s*\w*task\b""")
    found = [
        f"{p.relative_to(SRC)}:{i}"
        for p in SRC.rglob("*.py")
        if p.relative_to(SRC).as_posix() not in REGISTRY
        for i, line in enumerate(p.read_text().splitlines(), 1)
        if compare.search(line)
    ]
    assert not found, f"ask the task object (task_named, or task_rules below floor 2) instead: {found}"


@pytest.mark.parametrize("name", list(TASKS))
def test_primary_metric_is_among_the_task_metrics_and_leads_the_analysis(name):
    task = TASKS[name]
    assert task.metrics[0] == task.primary_metric
    study = StudyConfig.model_validate(
        {
            "name": "s",
            "output": "unused",
            "datasets": [{"name": "d", "train": "unused", "task": name}],
            "pretrainings": [{"name": "random", "init": "random"}],
            "label_fractions": [0.5],
            "seeds": [0],
        }
    )
    result = analyze(study, [])
    assert result["datasets"]["d"]["primary_metric"] == task.primary_metric
    assert list(result["datasets"]["d"]["references"]) == list(task.metrics)


def test_the_primary_metric_rule_is_written_once():
    assert TASKS["semantic"].primary_metric == "dice" and TASKS["instance"].primary_metric == "aji"
    rule = re.compile(r"""["'](aji|dice)["']\s+if\b""")  # "aji" if task == … else "dice"
    found = [str(p.relative_to(SRC)) for p in SRC.rglob("*.py") if rule.search(p.read_text())]
    assert not found, f"use task_named(name).primary_metric instead: {found}"


def test_semantic_task():
    task, cfg = TASKS["semantic"], _cfg("semantic")
    assert task.output_channels(cfg) == 3 and task.binary_target_channels(cfg) == ()
    logits = torch.randn(2, 3, 8, 8)
    probs = task.activate(logits)
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(2, 8, 8))
    labels = task.to_labels(probs[0].numpy())
    np.testing.assert_array_equal(labels, logits[0].argmax(0).numpy())
    assert set(task.scores(labels, labels, cfg)) >= set(task.metrics)
    assert task.agreement(cfg)(labels, labels) == pytest.approx(1.0)
    assert torch.isfinite(task.loss(logits, logits.argmax(1), cfg))
    classes = np.array([[0, 1, 1, 0, 2]])
    instances, of = task.objects(classes)
    assert instances.max() == 2 and sorted(of.values()) == [1, 2]


@pytest.mark.parametrize("head", list(INSTANCE_HEADS))
def test_instance_task_follows_the_chosen_head(head):
    task, cfg = TASKS["instance"], _cfg("instance", instance_head=head)
    channels = INSTANCE_HEADS[head].channels
    assert task.output_channels(cfg) == channels
    assert task.binary_target_channels(cfg) == INSTANCE_HEADS[head].targets.binary
    logits = torch.randn(2, channels, 8, 8)
    torch.testing.assert_close(task.activate(logits), logits.sigmoid())
    target = torch.rand(2, channels, 8, 8).round()
    torch.testing.assert_close(task.loss(logits, target, cfg), INSTANCE_HEADS[head].loss(logits, target))
    labels = np.zeros((8, 8), np.int32)
    labels[2:5, 2:5] = 1
    assert task.agreement(cfg)(labels, labels) == pytest.approx(1.0)
    assert set(task.scores(labels, labels, cfg)) >= set(task.metrics)
    instances, classes = task.objects(labels)
    assert instances is labels and classes is None


@pytest.mark.parametrize("name", list(TASKS))
def test_exported_outputs_are_named_as_the_task_computes_them(name):
    task, cfg = TASKS[name], _cfg(name)
    assert len(task.output_names(cfg)) == task.output_channels(cfg)
    logits = torch.randn(2, task.output_channels(cfg), 8, 8)
    expected = {"softmax": logits.softmax(dim=1), "sigmoid": logits.sigmoid()}[task.activation]
    assert torch.allclose(task.activate(logits), expected)
