"""Faults: a run killed with SIGKILL and resumed ends exactly where an uninterrupted run ends; truncated
checkpoints and weights are one-line errors naming the file; running out of memory suggests a batch size."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from safetensors.torch import load_file

from sslseg.data.synth import write_synthetic_dataset
from sslseg.errors import DataError, OutOfMemory
from sslseg.oom import explain_out_of_memory, memory_need, suggest_batch_size
from sslseg.rundir import AtomicCheckpointIO, RandomStateCheckpoint, check_checkpoint, prepare_run_dir

# Tiny CPU runs, one thread each so that two run side by side without slowing each other down.
ENV = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
EXACT = ["--set", "train.deterministic=true", "--set", "train.accelerator=cpu", "--epochs", "3"]
FINETUNE = [
    "finetune",
    *EXACT,
    *("--set", "train.steps_per_epoch=2", "--set", "train.batch_size=2", "--set", "train.crop_size=32"),
    *("--set", "model.decoder_channels=[16,16,8,8,8]", "--set", "inference.tile_size=64"),
    *("--set", "data.val_fraction=0.25", "--set", "data.test_fraction=0.25"),
]
# MoCo: besides weights and optimiser, a momentum encoder and a queue of keys must survive the kill
PRETRAIN = [
    "pretrain",
    *EXACT,
    *("--method", "moco", "--batch-size", "4", "--set", "train.steps_per_epoch=2", "--set", "views.size=32"),
    *("--set", "params.queue_size=16", "--set", "params.proj_hidden=64", "--set", "params.proj_dim=32"),
]
CUDA_OOM = (
    "CUDA out of memory. Tried to allocate 2.00 GiB. GPU 0 has a total capacity of 79.10 GiB of which "
    "1.02 GiB is free. Including non-PyTorch memory, this process has 78.00 GiB memory in use. Of the "
    "allocated memory 77.40 GiB is allocated by PyTorch, and 166.13 MiB is reserved by PyTorch but unallocated."
)


def sslseg(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str, str]:
    """Run the command line in this process (no second start-up of torch): exit code, stdout, stderr."""
    from sslseg.cli import main

    argv = sys.argv
    sys.argv = ["sslseg", *args]
    try:
        main()
        code = 0
    except SystemExit as e:
        code = int(e.code or 0)
    finally:
        sys.argv = argv
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def _start(args: list[str], out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "sslseg", *args, "--output", str(out), *extra]
    with open(out.with_suffix(".log"), "a") as log:  # the child keeps its own handle
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=ENV)


def _finish(proc: subprocess.Popen, out: Path) -> None:
    assert proc.wait(timeout=300) == 0, out.with_suffix(".log").read_text()[-3000:]


def _killed_and_resumed(args: list[str], tmp_path: Path) -> tuple[Path, Path]:
    """Run `args` uninterrupted and, beside it, once more killed (SIGKILL) as soon as its first epoch's
    checkpoint exists, then resumed; returns both run folders."""
    whole, cut = tmp_path / "uninterrupted", tmp_path / "killed"
    procs = [_start(args, whole), _start(args, cut)]
    try:
        reference, victim = procs
        last = cut / "checkpoints" / "last.ckpt"
        deadline = time.monotonic() + 240
        while not last.exists():  # written beside and renamed into place: once there, it is whole
            assert victim.poll() is None, cut.with_suffix(".log").read_text()[-3000:]
            assert time.monotonic() < deadline, "no checkpoint after 240 s"
            time.sleep(0.01)
        os.kill(victim.pid, signal.SIGKILL)
        victim.wait()
        # killed part-way: after an epoch, before the end; the state loads without unpickling code
        assert torch.load(last, map_location="cpu", weights_only=True)["epoch"] < 2
        assert not (cut / "result.json").exists()
        procs.append(_start(args, cut, "--resume"))  # while the uninterrupted run goes on
        _finish(reference, whole)
        _finish(procs[-1], cut)
    finally:
        for proc in procs:  # a failed test leaves no run behind
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return whole, cut


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> Path:
    return write_synthetic_dataset(tmp_path_factory.mktemp("synth"), n_images=8, size=64, seed=2)


def test_finetune_killed_and_resumed_scores_like_an_uninterrupted_run(data, tmp_path):
    whole, cut = _killed_and_resumed([*FINETUNE, "--train", str(data)], tmp_path)
    a, b = (json.loads((run / "result.json").read_text()) for run in (whole, cut))
    assert a["epochs_run"] == b["epochs_run"] == 3
    assert a["best_val_score"] == b["best_val_score"]
    assert a["test"] == b["test"] and a["test"]["aji"] >= 0  # identical, not merely close
    assert (cut / "logs" / "resumed-1" / "metrics.csv").is_file()


def test_pretrain_killed_and_resumed_gives_the_same_encoder(data, tmp_path):
    whole, cut = _killed_and_resumed([*PRETRAIN, "--data", str(data)], tmp_path)
    a, b = (load_file(str(run / "encoder.safetensors")) for run in (whole, cut))
    assert a.keys() == b.keys()
    different = [k for k in a if not torch.equal(a[k], b[k])]
    assert not different, f"{len(different)} of {len(a)} tensors differ, e.g. {different[:3]}"
    assert json.loads((cut / "result.json").read_text())["steps"] == 6


# --- truncated checkpoints and weights ---------------------------------------------------------------


def _checkpoint(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"epoch": 0, "state_dict": {"w": torch.randn(256, 256)}}, path)
    return path


def _truncate(path: Path) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return path


def _one_line_error(code: int, out: str, err: str) -> str:
    assert code == 2, err[-3000:]
    assert "Traceback" not in err
    return err.strip().splitlines()[-1]


def test_truncated_last_checkpoint_is_refused_on_resume(tmp_path, capsys):
    last = _truncate(_checkpoint(tmp_path / "run" / "checkpoints" / "last.ckpt"))
    r = sslseg(capsys, "pretrain", "--data", str(tmp_path), "--output", str(tmp_path / "run"), "--resume")
    line = _one_line_error(*r)
    assert line.startswith(f"error: {last}: truncated checkpoint"), line


def test_damaged_or_empty_checkpoints_are_named(tmp_path):
    check_checkpoint(_checkpoint(tmp_path / "good.ckpt"))
    damaged = bytearray(_checkpoint(tmp_path / "bad.ckpt").read_bytes())
    damaged[len(damaged) // 2] ^= 0xFF
    (tmp_path / "bad.ckpt").write_bytes(damaged)
    with pytest.raises(DataError, match=r"bad.ckpt: corrupt checkpoint \(part .* fails its checksum"):
        check_checkpoint(tmp_path / "bad.ckpt")
    (tmp_path / "empty.ckpt").touch()
    with pytest.raises(DataError, match="empty.ckpt: checkpoint file is empty"):
        check_checkpoint(tmp_path / "empty.ckpt")
    (tmp_path / "notes.ckpt").write_text("not a checkpoint")
    with pytest.raises(DataError, match="notes.ckpt: not a checkpoint"):
        check_checkpoint(tmp_path / "notes.ckpt")


class _KilledWhileWriting:
    def __reduce__(self):
        raise KeyboardInterrupt  # stands for a kill part-way through torch.save


def test_checkpoints_are_written_atomically(tmp_path):
    last = tmp_path / "checkpoints" / "last.ckpt"
    AtomicCheckpointIO().save_checkpoint({"epoch": 0}, last)
    with pytest.raises(KeyboardInterrupt):
        AtomicCheckpointIO().save_checkpoint({"w": torch.ones(1000), "x": _KilledWhileWriting()}, last)
    assert torch.load(last, weights_only=True) == {"epoch": 0}  # the previous one, whole
    assert list(last.parent.iterdir()) == [last]
    umask = os.umask(0o022)
    os.umask(umask)
    assert last.stat().st_mode & 0o777 == 0o666 & ~umask  # readable like any file, not 0600
    (last.parent / ".last.ckpt.a1b2.tmp.ckpt").write_bytes(b"PK")  # what SIGKILL leaves: cleared on resume
    prepare_run_dir(tmp_path, resume=True)
    assert list(last.parent.iterdir()) == [last]


def test_truncated_encoder_weights_given_to_finetune_init(data, tmp_path, capsys):
    from sslseg.nn.unet import build_encoder
    from sslseg.weights import save_encoder

    weights = tmp_path / "encoder.safetensors"
    _truncate(save_encoder(build_encoder("resnet18", 1), weights, {"encoder": "resnet18", "in_channels": 1}))
    r = sslseg(
        capsys, "finetune", "--train", str(data), "--init", str(weights), "--output", str(tmp_path / "r")
    )
    line = _one_line_error(*r)
    assert f"{weights}: not a readable safetensors file (truncated or corrupt?)" in line


def test_truncated_best_checkpoint_given_to_evaluate(data, tmp_path, capsys):
    best = _truncate(_checkpoint(tmp_path / "best.ckpt"))
    line = _one_line_error(*sslseg(capsys, "evaluate", str(best), str(data)))
    assert line.startswith(f"error: {best}: ") and "truncated" in line, line


# --- random state across resumes and processes ------------------------------------------------------


def test_random_state_round_trip_and_distinct_processes():
    keeper = RandomStateCheckpoint()
    state = keeper.state_dict()
    first = torch.rand(3)
    keeper.load_state_dict(state)
    assert torch.equal(torch.rand(3), first)
    # with DDP each process starts from one seed: the callback gives each rank its own stream
    draws = []
    for rank in (0, 1):
        keeper.load_state_dict(state)
        keeper.setup(SimpleNamespace(global_rank=rank, world_size=2), None, "fit")
        draws.append(torch.rand(3))
    assert not torch.equal(draws[0], draws[1])
    single = RandomStateCheckpoint()
    single.setup(SimpleNamespace(global_rank=0, world_size=1), None, "fit")
    single.load_state_dict(state)  # one process: the states as saved
    assert torch.equal(torch.rand(3), first)


# --- out of memory ----------------------------------------------------------------------------------


def test_suggested_batch_size_halves_or_scales_to_the_memory_there_is():
    assert suggest_batch_size(64) == 32
    assert suggest_batch_size(48) == 16  # powers of two, never above half
    assert memory_need(torch.OutOfMemoryError(CUDA_OOM)) == (80 * 2**30, int(79.10 * 2**30))
    assert suggest_batch_size(64, needed=200 * 2**30, available=80 * 2**30) == 16  # 64 · 0.9 · 80/200 = 23
    assert suggest_batch_size(3) == 1
    assert suggest_batch_size(1) is None and suggest_batch_size(2, minimum=2) is None


def _fake_step(error: BaseException):
    def step(*args, **kwargs):
        raise error

    return step


def test_out_of_memory_in_training_names_the_setting_and_a_batch_that_fits(data, tmp_path, monkeypatch):
    from sslseg.config import PretrainConfig
    from sslseg.methods.base import SSLMethod
    from sslseg.pretrain import pretrain

    monkeypatch.setattr(SSLMethod, "training_step", _fake_step(torch.OutOfMemoryError(CUDA_OOM)))
    cfg = PretrainConfig.model_validate(
        {
            "data": {"path": data},
            "params": {"proj_hidden": 32, "proj_dim": 16},
            "views": {"size": 32},
            "train": {"batch_size": 64, "epochs": 1, "steps_per_epoch": 1, "accelerator": "cpu"},
            "output": tmp_path / "run",
        }
    )
    with pytest.raises(OutOfMemory) as e:
        pretrain(cfg, progress=False)
    assert str(e.value).startswith(
        "out of GPU memory at train.batch_size=64 (needed more than 80.0 GiB of 79.1 GiB): "
        "try --set train.batch_size=32"
    )
    assert "\n" not in str(e.value)


def test_out_of_memory_in_validation_names_the_inference_batch_size():
    def validation_step():  # as SegmentationModule's, run inside trainer.fit
        raise torch.OutOfMemoryError(CUDA_OOM)

    inference = ("inference.batch_size", 4)
    expected = r"^out of GPU memory at inference.batch_size=4 .*: try --set inference.batch_size=2 "
    with (
        pytest.raises(OutOfMemory, match=expected),
        explain_out_of_memory("train.batch_size", 8, 1, inference),
    ):
        validation_step()


def test_out_of_memory_wrapper_passes_other_errors_and_knows_the_cpu_allocator():
    other = RuntimeError("shapes cannot be multiplied")
    with pytest.raises(RuntimeError, match="shapes cannot"), explain_out_of_memory("train.batch_size", 8):
        _fake_step(other)()
    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: ...")
    expected = r"^out of memory at inference.batch_size=1, the smallest"
    with pytest.raises(OutOfMemory, match=expected), explain_out_of_memory("inference.batch_size", 1):
        _fake_step(cpu)()


def test_pretraining_runs_under_two_process_ddp_on_cpu(data, tmp_path):
    """Lightning DDP (gloo) on 2 CPU processes: both train, rank 0 alone writes the weights."""
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    args = [
        "--data",
        str(data),
        "--method",
        "simclr",
        "--epochs",
        "1",
        "--batch-size",
        "4",
        "--output",
        str(out),
    ]
    sets = [
        "train.steps_per_epoch=2",
        "train.accelerator=cpu",
        "train.devices=2",
        "train.strategy=ddp",
        "views.size=32",
    ]
    cmd = [sys.executable, "-m", "sslseg", "pretrain", *args, *[x for s in sets for x in ("--set", s)]]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    summary = json.loads((out / "result.json").read_text())
    # an epoch's steps_per_epoch × batch samples are shared among the processes: 2 × 4 over 2 → 1 step each
    assert summary["processes"] == 2 and summary["steps"] == 1
    assert load_file(out / "encoder.safetensors")  # a complete, readable weights file


def test_finetuning_runs_under_two_process_ddp_on_cpu(data, tmp_path):
    """Both processes train and validate; rank 0 alone tunes, scores and writes the results (printed once)."""
    out = tmp_path / "ddp"
    sets = ["train.accelerator=cpu", "train.devices=2", "train.strategy=ddp", "train.steps_per_epoch=2"]
    args = [
        "finetune",
        *FINETUNE[1 + len(EXACT) :],
        "--epochs",
        "2",
        "--train",
        str(data),
        "--output",
        str(out),
    ]
    args += [x for s in sets for x in ("--set", s)]
    env = {**ENV, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-m", "sslseg", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count('"test"') == 1  # one process reports
    result = json.loads((out / "result.json").read_text())
    assert result["epochs_run"] == 2 and result["test"]["aji"] >= 0
    (metrics,) = (out / "logs").rglob("metrics.csv")
    assert "val/score" in metrics.read_text()
    assert check_checkpoint(out / "best.ckpt") is None


def test_sync_batchnorm_on_cpu_is_refused_before_training(data, tmp_path, capsys):
    r = sslseg(
        capsys,
        *FINETUNE,
        *("--train", str(data), "--output", str(tmp_path / "r"), "--set", "train.sync_batchnorm=true"),
    )
    line = _one_line_error(*r)
    assert "train.sync_batchnorm needs GPUs" in line
