"""The disk a study takes: finished cells keep their weights in half precision (and predict as before), and
the dry run states the study's disk use from its models' parameter counts."""

from __future__ import annotations

import shutil
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from sslseg.data.datasets import prepare_image
from sslseg.data.synth import generate_sample, write_synthetic_dataset
from sslseg.evaluate import load_model
from sslseg.rundir import half_precision_checkpoint
from sslseg.segmentation.inference import probabilities_to_labels
from sslseg.segmentation.module import SegmentationModule
from sslseg.study import estimate
from sslseg.study.runner import _keep_products
from sslseg.study.spec import StudyConfig, expand
from sslseg.study.store import JobRow

TINY = {"encoder": "resnet18", "decoder_channels": [32, 16, 16, 8, 8]}


def _checkpoint(path: Path, task: str = "semantic", channels: int = 1) -> SegmentationModule:
    """A model checkpoint as a fine-tuning run leaves it (`save_model_checkpoint`'s keys)."""
    torch.manual_seed(0)
    module = SegmentationModule({"data": {"task": task}, "model": TINY}, in_channels=channels).eval()
    torch.save(
        {
            "state_dict": module.state_dict(),
            "hyper_parameters": dict(module.hparams),
            "pytorch-lightning_version": L.__version__,
        },
        path,
    )
    return module


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_half_precision_checkpoint_loads_as_float32_and_predicts_the_same_labels(tmp_path, dtype):
    _checkpoint(tmp_path / "full.ckpt")
    shutil.copy(tmp_path / "full.ckpt", tmp_path / "half.ckpt")
    saved = half_precision_checkpoint(tmp_path / "half.ckpt", dtype)
    assert saved > 0.45 * (tmp_path / "full.ckpt").stat().st_size  # about half the bytes
    stored = torch.load(tmp_path / "half.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert stored["net.encoder.conv1.weight"].dtype == getattr(torch, dtype)
    assert stored["net.encoder.bn1.num_batches_tracked"].dtype == torch.int64  # integers untouched
    assert half_precision_checkpoint(tmp_path / "half.ckpt", dtype) == 0  # done once
    full, half = load_model(tmp_path / "full.ckpt", "cpu"), load_model(tmp_path / "half.ckpt", "cpu")
    assert {t.dtype for t in half.state_dict().values() if t.is_floating_point()} == {torch.float32}
    for seed in range(2):
        raw, _ = generate_sample(seed, (48, 64), mean_radius=5.0)
        image = prepare_image(raw[..., None], 1)
        p_full, p_half = full.probabilities(image, (48, 64)), half.probabilities(image, (48, 64))
        assert (p_full - p_half).abs().max() < (2e-3 if dtype == "float16" else 2e-2)
        labels = [probabilities_to_labels(p, "semantic", full.cfg.postprocess) for p in (p_full, p_half)]
        assert np.mean(labels[0] == labels[1]) > 0.99


def test_a_done_cell_keeps_half_precision_weights_and_no_resume_state(tmp_path):
    study = StudyConfig.model_validate(
        {
            "output": str(tmp_path / "study"),
            "datasets": [{"name": "d", "train": str(tmp_path / "data")}],
            "pretrainings": [{"name": "random", "init": "random"}],
            "label_fractions": [1.0],
        }
    )
    cell = tmp_path / "cell"
    (cell / "checkpoints").mkdir(parents=True)
    (cell / "checkpoints" / "last.ckpt").write_bytes(b"resume state")
    _checkpoint(cell / "best.ckpt")
    row = {"kind": "finetune", "config": {"output": str(cell)}}
    _keep_products(row, study.model_copy(update={"cell_weights": "float32"}))
    assert not (cell / "checkpoints").exists()
    stored = torch.load(cell / "best.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert stored["net.encoder.conv1.weight"].dtype == torch.float32  # as the setting says
    _keep_products(row, study)  # the default
    stored = torch.load(cell / "best.ckpt", map_location="cpu", weights_only=False)["state_dict"]
    assert stored["net.encoder.conv1.weight"].dtype == torch.float16


def _study(tmp_path: Path) -> StudyConfig:
    return StudyConfig.model_validate(
        {
            "output": str(tmp_path / "study"),
            "datasets": [{"name": "d", "train": str(tmp_path / "data"), "task": "semantic"}],
            "pretrainings": [{"name": "random", "init": "random"}, {"name": "simclr", "method": "simclr"}],
            "label_fractions": [0.5, 1.0],
            "finetune": {"model": {"decoder_channels": TINY["decoder_channels"]}},
        }
    )


def test_the_disk_estimate_matches_a_stored_cell(tmp_path):
    study = _study(tmp_path)
    disk = estimate.disk_estimate(study, expand(study), channels=1)
    assert (disk.cells, disk.pretrainings) == (4, 1)
    _checkpoint(tmp_path / "best.ckpt")
    shutil.copy(tmp_path / "best.ckpt", tmp_path / "full.ckpt")
    half_precision_checkpoint(tmp_path / "best.ckpt")
    # the files hold the tensors plus a little serialisation overhead
    assert disk.cell_bytes == pytest.approx((tmp_path / "best.ckpt").stat().st_size, rel=0.02)
    full = estimate.disk_estimate(study.model_copy(update={"cell_weights": "float32"}), expand(study), 1)
    assert full.cell_bytes == pytest.approx((tmp_path / "full.ckpt").stat().st_size, rel=0.02)
    assert disk.pretraining_bytes == pytest.approx(full.cell_bytes * 0.95, rel=0.1)  # the encoder's float32
    # keep_weights 'report' (the default): the smallest budget's cell of each pretraining keeps its weights
    assert disk.kept_cells == 2 and full.kept_cells == 2
    assert disk.total > 2 * disk.cell_bytes + disk.pretraining_bytes
    every = estimate.disk_estimate(study.model_copy(update={"keep_weights": "all"}), expand(study), 1)
    assert every.kept_cells == 4 and every.total - disk.total == 2 * disk.cell_bytes
    assert disk.total - disk.kept_cells * disk.cell_bytes == every.total - every.kept_cells * every.cell_bytes


@pytest.mark.parametrize(
    ("update", "kept"),
    [
        ({}, {"d/random/finetuned/f0.5/s0", "d/simclr/finetuned/f0.5/s0"}),
        ({"keep_weights": "all"}, "every cell"),
        ({"keep_weights": "none"}, set()),
        ({"analysis": {"representation": False}}, set()),  # the report reopens no model then
        (
            {"seeds": [3, 1], "encoder_states": ["frozen", "finetuned"]},
            {"d/random/finetuned/f0.5/s3", "d/simclr/finetuned/f0.5/s3"},
        ),
    ],
)
def test_the_cells_that_keep_weights_are_the_ones_the_report_reopens(tmp_path, update, kept):
    from sslseg.study.representation_analysis import representative_cells
    from sslseg.study.spec import keeps_weights

    study = StudyConfig.model_validate({**_study(tmp_path).model_dump(mode="json"), **update})
    jobs = expand(study)
    cells = {j.key for j in jobs if j.kind == "finetune"}
    assert len(cells) >= 4
    keeping = {j.key for j in jobs if j.kind == "finetune" and keeps_weights(study, j)}
    assert keeping == (cells if kept == "every cell" else kept)
    assert all(keeps_weights(study, j) for j in jobs if j.kind == "pretrain")  # cells start from them
    if study.analysis.representation and study.keep_weights != "none":
        # the rows the representation analysis picks, had every cell finished, keep theirs
        rows = [
            JobRow.from_row({**j.__dict__, "status": "done", "kind": j.kind, "dataset": j.dataset})
            for j in jobs
            if j.kind == "finetune"
        ]
        picked = representative_cells(study, rows, "d")
        assert {r.key for r in picked.values()} <= keeping and len(picked) == 2


def test_a_done_cell_outside_the_report_drops_its_weights_only(tmp_path):
    cell = tmp_path / "cell"
    (cell / "checkpoints").mkdir(parents=True)
    (cell / "checkpoints" / "last.ckpt").write_bytes(b"resume state")
    _checkpoint(cell / "best.ckpt")
    (cell / "result.json").write_text("{}")
    _keep_products(
        {"kind": "finetune", "config": {"output": str(cell)}}, _study(tmp_path), keep_weights=False
    )
    assert not (cell / "best.ckpt").exists() and not (cell / "checkpoints").exists()
    assert (cell / "result.json").is_file()


def test_the_dry_run_prints_the_disk_a_study_takes(tmp_path, monkeypatch):
    from sslseg.cli import app

    write_synthetic_dataset(tmp_path / "data", n_images=4, size=32, seed=0)
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(_study(tmp_path).model_dump(mode="json")))
    # the step times are measured elsewhere; here only the disk line matters
    monkeypatch.setattr(estimate, "_finetune_step_seconds", lambda cfg, channels: 0.5)
    monkeypatch.setattr(estimate, "_pretrain_step_seconds", lambda cfg, channels: 0.5)
    result = CliRunner().invoke(app, ["study", "run", str(tmp_path / "s.yaml"), "--dry-run"])
    assert result.exit_code == 0, result.output
    disk = estimate.disk_estimate(_study(tmp_path), expand(_study(tmp_path)))
    line = result.output.strip().splitlines()[-1]
    assert line.startswith(f"disk: about {disk.total / 1e6:,.0f} MB when done (4 cells, 2 keep best.ckpt × ")
    assert "float16" in line and "keep_weights: report" in line
    assert "1 pretrainings" in line and "resume checkpoints" in line
    assert not (tmp_path / "study").exists()  # a dry run writes nothing
