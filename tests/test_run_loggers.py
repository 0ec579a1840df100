"""Pretraining logs as fine-tuning does (`sslseg.rundir.run_loggers`): the CSV log always, TensorBoard and
MLflow inside the run folder when they are installed."""

from __future__ import annotations

import types
from pathlib import Path

import pytest

from sslseg import rundir
from sslseg.config import PretrainConfig
from sslseg.data.synth import write_synthetic_dataset
from sslseg.pretrain import pretrain
from sslseg.rundir import run_loggers


def _pretend_installed(monkeypatch, *names: str) -> None:
    finder = types.SimpleNamespace(find_spec=lambda name: object() if name in names else None)
    monkeypatch.setattr(rundir, "importlib", types.SimpleNamespace(util=finder))


def test_csv_always_and_the_others_when_installed(tmp_path, monkeypatch):
    _pretend_installed(monkeypatch)
    assert [type(lg).__name__ for lg in run_loggers(tmp_path, resume=False)] == ["CSVLogger"]
    pytest.importorskip("tensorboard")
    _pretend_installed(monkeypatch, "tensorboard")
    loggers = run_loggers(tmp_path, resume=False)
    assert [type(lg).__name__ for lg in loggers] == ["CSVLogger", "TensorBoardLogger"]
    assert Path(loggers[1].log_dir) == tmp_path / "tensorboard"


def test_pretraining_writes_tensorboard_events(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    data = write_synthetic_dataset(tmp_path / "data", n_images=4, size=64, seed=0)
    cfg = PretrainConfig.model_validate(
        {
            "method": "simclr",
            "params": {"proj_hidden": 32, "proj_dim": 16},
            "data": {"path": data},
            "views": {"size": 32},
            "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 4},
            "output": tmp_path / "run",
        }
    )
    pretrain(cfg, progress=False)
    assert (tmp_path / "run" / "logs" / "metrics.csv").is_file()
    events = EventAccumulator(str(tmp_path / "run" / "tensorboard")).Reload()
    assert "train/loss" in events.Tags()["scalars"]
