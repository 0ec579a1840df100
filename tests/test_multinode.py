"""Multi-node pretraining: `train.num_nodes` checked and passed to the one trainer builder, the generated
SLURM script (valid bash, one srun task per GPU, numbers that match the config), Lightning's SLURM
environment reading the ranks srun would give each task, and a two-"node" run on CPU launched as srun
launches it (each process told its ranks by SLURM variables) in which rank 0 alone writes the weights."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from lightning.fabric.plugins.environments import SLURMEnvironment
from safetensors.torch import load_file

import sslseg
from sslseg.config import FinetuneConfig, PretrainConfig, load_config
from sslseg.data.synth import write_synthetic_dataset
from sslseg.errors import ConfigError
from sslseg.slurm import pretrain_slurm_script, sbatch_time
from sslseg.trainer import build_trainer, resolve_precision

SLURM_VARS = ("SLURM_NTASKS", "SLURM_PROCID", "SLURM_LOCALID", "SLURM_NODEID")


def _env(**extra: str) -> dict[str, str]:
    """This environment with the sslseg under test importable from any working folder."""
    src = str(Path(sslseg.__file__).resolve().parents[1])
    path = os.pathsep.join(p for p in (src, os.environ.get("PYTHONPATH", "")) if p)
    return {
        **{k: v for k, v in os.environ.items() if not k.startswith("SLURM_")},
        "PYTHONPATH": path,
        **extra,
    }


def _sslseg(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sslseg", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_env(),
        timeout=300,
    )


def _sbatch(script: str) -> dict[str, str]:
    return dict(re.findall(r"^#SBATCH --([\w-]+)=(.*)$", script, flags=re.M))


def _srun_args(script: str) -> list[str]:
    (line,) = [x for x in script.splitlines() if x.startswith("srun ")]
    return shlex.split(line)[1:]


def _sets(args: list[str]) -> list[str]:
    return [args[i + 1] for i, a in enumerate(args) if a == "--set"]


@pytest.mark.parametrize("model", [PretrainConfig, FinetuneConfig])
def test_num_nodes_is_a_checked_setting_of_both_trainings(model):
    assert load_config(model).train.num_nodes == 1
    assert load_config(model, overrides={"train": {"num_nodes": 4}}).train.num_nodes == 4
    with pytest.raises(ConfigError, match="num_nodes"):
        load_config(model, overrides={"train": {"num_nodes": 0}})
    with pytest.raises(ConfigError, match="needs a distributed strategy"):
        load_config(model, overrides={"train": {"num_nodes": 2, "strategy": "single_device"}})


def test_the_builder_passes_nodes_devices_and_precision_to_lightning(tmp_path):
    train = load_config(PretrainConfig, overrides={"train": {"accelerator": "cpu", "devices": 1}}).train
    trainer = build_trainer(train, tmp_path, callbacks=[], logger=False, progress=False, log_every_n_steps=1)
    assert trainer.num_nodes == 1 and trainer.num_devices == 1 and trainer.max_epochs == train.epochs
    assert (
        resolve_precision("auto") in ("bf16-mixed", "32-true") and resolve_precision("16-mixed") == "16-mixed"
    )
    ft = load_config(
        FinetuneConfig, overrides={"train": {"accelerator": "cpu", "devices": 2, "num_nodes": 3}}
    )
    trainer = build_trainer(
        ft.train, tmp_path, callbacks=[], logger=False, progress=False, log_every_n_steps=1
    )
    assert trainer.num_nodes == 3 and trainer.num_devices == 2 and trainer.world_size == 6


def test_generated_script_is_bash_with_one_srun_task_per_gpu(tmp_path):
    r = _sslseg(
        "pretrain-slurm",
        *("--nodes", "3", "--gpus-per-node", "4", "--hours", "2.5", "--partition", "gpu"),
        *("--data", str(tmp_path / "my images"), "--method", "byol", "--output", "runs/big"),
        *("--set", "train.epochs=7", "--out", str(tmp_path / "job.sh")),
        cwd=tmp_path,
    )
    assert r.returncode == 0, r.stderr
    script = (tmp_path / "job.sh").read_text()
    if shutil.which("bash"):
        check = subprocess.run(["bash", "-n", str(tmp_path / "job.sh")], capture_output=True, text=True)
        assert check.returncode == 0, check.stderr
    sb = _sbatch(script)
    assert (sb["nodes"], sb["ntasks-per-node"], sb["gpus-per-node"]) == ("3", "4", "4")
    assert sb["time"] == "02:30:00" and sb["partition"] == "gpu"
    assert 'scontrol show hostnames "$SLURM_JOB_NODELIST"' in script and "export MASTER_ADDR" in script
    args = _srun_args(script)
    assert args[1:4] == ["-m", "sslseg", "pretrain"]
    sets = _sets(args)
    assert {"train.num_nodes=3", "train.devices=4", "train.strategy=ddp", "train.accelerator=gpu"} <= set(
        sets
    )
    # the srun command's settings are the checked config: the run reads what was generated
    cfg = load_config(PretrainConfig, overrides=_tree(sets))
    assert cfg.method == "byol" and cfg.train.epochs == 7 and cfg.data.path == tmp_path / "my images"
    assert f"cd {tmp_path}" in script or f"cd '{tmp_path}'" in script  # relative paths mean what they meant


def _tree(sets: list[str]) -> dict:
    from sslseg.config import parse_overrides

    return parse_overrides(sets)


def test_a_setting_that_cannot_run_is_refused_before_any_script(tmp_path):
    r = _sslseg(
        "pretrain-slurm", "--nodes", "2", "--gpus-per-node", "1", "--set", "train.strategy=single_device"
    )
    assert r.returncode == 2 and "needs a distributed strategy" in r.stderr and "#SBATCH" not in r.stdout
    r = _sslseg("pretrain-slurm", "--nodes", "0", "--gpus-per-node", "1")
    assert r.returncode == 2 and "num_nodes" in r.stderr
    with pytest.raises(ConfigError, match="positive"):
        sbatch_time(0)


def test_lightning_reads_the_ranks_srun_gives_each_task(tmp_path, monkeypatch):
    """Task 5 of a 2-node × 4-GPU job (the 2nd task on the 2nd node), as srun would start it."""
    cfg = load_config(PretrainConfig, overrides={"data": {"path": str(tmp_path)}})
    script = pretrain_slurm_script(cfg, None, [f"data.path={tmp_path}"], nodes=2, gpus_per_node=4)
    sb = _sbatch(script)
    nodes, per_node = int(sb["nodes"]), int(sb["ntasks-per-node"])
    env = {
        "SLURM_NTASKS": str(nodes * per_node),
        "SLURM_NTASKS_PER_NODE": str(per_node),
        "SLURM_NNODES": str(nodes),
        "SLURM_PROCID": "5",
        "SLURM_LOCALID": "1",
        "SLURM_NODEID": "1",
        "SLURM_JOB_ID": "4242",
        "SLURM_JOB_NAME": "sslseg-pretrain-simclr",
        "SLURM_NODELIST": "gpu[07-08]",
        "MASTER_ADDR": "gpu07",
    }
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    # building a rank-5 trainer sets Lightning's process-wide rank; restore it so later tests log as rank 0
    from lightning.fabric.utilities import rank_zero as fabric_rank_zero
    from lightning.pytorch.utilities import rank_zero as pl_rank_zero
    from lightning_utilities.core import rank_zero as util_rank_zero

    for fn in {fabric_rank_zero.rank_zero_only, pl_rank_zero.rank_zero_only, util_rank_zero.rank_zero_only}:
        monkeypatch.setattr(fn, "rank", getattr(fn, "rank", 0), raising=False)
    # the script's settings, on CPU here (no GPU needed to build the trainer; nothing is started)
    sets = [s for s in _sets(_srun_args(script)) if s != "train.accelerator=gpu"] + ["train.accelerator=cpu"]
    run = load_config(PretrainConfig, overrides=_tree(sets))
    trainer = build_trainer(
        run.train, tmp_path, callbacks=[], logger=False, progress=False, log_every_n_steps=1
    )
    cluster = trainer.strategy.cluster_environment
    assert isinstance(cluster, SLURMEnvironment)
    assert (trainer.world_size, trainer.global_rank, trainer.local_rank, trainer.node_rank) == (8, 5, 1, 1)
    assert not trainer.is_global_zero and cluster.main_address == "gpu07"
    # Lightning's own check when training starts: the allocation matches devices and nodes...
    cluster.validate_settings(trainer.num_devices, trainer.num_nodes)
    # ...and numbers that disagree with it are refused, not run wrongly
    monkeypatch.setenv("SLURM_NTASKS_PER_NODE", "2")
    with pytest.raises(ValueError, match="ntasks-per-node"):
        cluster.validate_settings(trainer.num_devices, trainer.num_nodes)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_nodes_pretrain_as_srun_starts_them_and_rank_zero_alone_writes(tmp_path):
    """Two processes, each told by SLURM variables that it is the one task of node 0 or node 1 (gloo on CPU)."""
    data = write_synthetic_dataset(tmp_path / "data", n_images=6, size=64, seed=1)
    out = tmp_path / "run"
    sets = [
        f"data.path={data}",
        "method=simclr",
        "params.proj_hidden=32",
        "params.proj_dim=16",
        "views.size=32",
        "train.epochs=1",
        "train.steps_per_epoch=2",
        "train.batch_size=2",
        "train.accelerator=cpu",
        "train.num_nodes=2",
        "train.devices=1",
        "train.strategy=ddp",
        f"output={out}",
    ]
    port = str(_free_port())
    procs = []
    for rank in range(2):
        env = _env(
            OMP_NUM_THREADS="1",
            SLURM_NTASKS="2",
            SLURM_NTASKS_PER_NODE="1",
            SLURM_NNODES="2",
            SLURM_PROCID=str(rank),
            SLURM_LOCALID="0",
            SLURM_NODEID=str(rank),
            SLURM_JOB_ID="77",
            SLURM_JOB_NAME="sslseg-pretrain-simclr",
            SLURM_NODELIST="localhost",
            MASTER_ADDR="127.0.0.1",
            MASTER_PORT=port,
        )
        cmd = [sys.executable, "-m", "sslseg", "pretrain", *[x for s in sets for x in ("--set", s)]]
        procs.append(
            subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        )
    try:
        outputs = [p.communicate(timeout=900) for p in procs]
    finally:
        for p in procs:  # one that failed leaves the other waiting at the rendezvous
            if p.poll() is None:
                p.kill()
    for p, (_, err) in zip(procs, outputs, strict=True):
        assert p.returncode == 0, err[-3000:]
    summary = json.loads((out / "result.json").read_text())
    # an epoch's 2 steps × batch 2 are shared by the 2 processes: one step each
    assert summary["processes"] == 2 and summary["steps"] == 1
    assert load_file(out / "encoder.safetensors")
    assert '"weights"' in outputs[0][0] and outputs[1][0].strip() == ""  # rank 1 reports nothing
