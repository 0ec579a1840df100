"""The training step's precision and memory format: `train.precision: auto` takes bf16 only where the
hardware computes it natively, fine-tuning trains NHWC with a float32 loss, and the benchmark that measured
both runs its smoke mode."""

from __future__ import annotations

import pytest
import torch
from conftest import run_benchmark_script

import sslseg.trainer as trainer_mod
from sslseg.config import FinetuneConfig
from sslseg.data.synth import write_synthetic_dataset
from sslseg.finetune import finetune
from sslseg.segmentation.tasks import task_named
from sslseg.trainer import resolve_precision


@pytest.mark.parametrize(
    ("cuda", "native", "accelerator", "expected"),
    [
        (False, True, "auto", "bf16-mixed"),  # a CPU with AVX512-BF16/AMX
        (False, False, "auto", "32-true"),  # a CPU that would only emulate bf16
        (True, False, "auto", "bf16-mixed"),  # a GPU
        (True, False, "cpu", "32-true"),  # a GPU machine told to train on its CPU
    ],
)
def test_auto_precision_is_bf16_only_where_the_hardware_computes_it(
    monkeypatch, cuda, native, accelerator, expected
):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(trainer_mod, "cpu_has_native_bf16", lambda: native)
    assert resolve_precision("auto", accelerator) == expected
    assert resolve_precision("32-true", accelerator) == "32-true"  # an explicit setting is kept


@pytest.mark.parametrize("channels_last", [True, False])
def test_finetuning_trains_in_the_asked_memory_format_with_a_float32_loss(
    tmp_path, monkeypatch, channels_last
):
    data = write_synthetic_dataset(tmp_path / "synth", n_images=4, size=64, seed=0)
    cfg = FinetuneConfig.model_validate(
        {
            "data": {"train": data, "task": "instance", "val_fraction": 0.0, "test_fraction": 0.0},
            "model": {"encoder": "resnet18", "decoder_channels": [16, 8, 8]},
            "train": {
                "epochs": 1,
                "steps_per_epoch": 2,
                "batch_size": 2,
                "crop_size": 32,
                "precision": "bf16-mixed",  # on any CPU: what auto gives where bf16 is native
                "channels_last": channels_last,
            },
            "output": tmp_path / "run",
        }
    )
    seen: dict[str, object] = {}
    task_cls = type(task_named("instance"))
    task_loss = task_cls.loss

    def spy(self, logits, target, cfg):
        seen["logits_dtype"] = logits.dtype  # what the task's loss sums over
        seen["nhwc"] = logits.is_contiguous(memory_format=torch.channels_last)
        return task_loss(self, logits, target, cfg)

    monkeypatch.setattr(task_cls, "loss", spy)
    finetune(cfg, progress=False)
    assert seen["logits_dtype"] == torch.float32  # the network ran in bf16; its loss in float32
    assert seen["nhwc"] is channels_last  # the network's output keeps the memory format it ran in


def test_step_speed_smoke_prints_every_variant_and_the_speedups(tmp_path):
    lines = run_benchmark_script("step_speed.py", "--smoke", "--part", "finetune", cwd=tmp_path)
    variants = {(x["precision"], x["channels_last"]) for x in lines if "step_ms" in x}
    assert variants == {("32-true", False), ("32-true", True), ("bf16-mixed", False), ("bf16-mixed", True)}
    (summary,) = [x for x in lines if "speedup_over_fp32_nchw" in x]
    assert summary["speedup_over_fp32_nchw"]["32-true NCHW"] == 1.0
    assert set(summary["speedup_over_fp32_nchw"]) == {
        "32-true NCHW",
        "32-true NHWC",
        "bf16-mixed NCHW",
        "bf16-mixed NHWC",
    }
