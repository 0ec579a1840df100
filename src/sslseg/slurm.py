"""SLURM batch scripts: a multi-node pretraining job (one task per GPU, launched by srun) and the pieces the
study's array job shares with it.

Lightning detects SLURM by itself: each task srun starts carries SLURM_NTASKS (the world size), SLURM_PROCID
(global rank), SLURM_LOCALID (rank on its node) and SLURM_NODEID, and Lightning checks SLURM_NTASKS_PER_NODE
and SLURM_NNODES against `train.devices` and `train.num_nodes`. The script sets those two from the same
numbers as its #SBATCH lines, and points every task at the first node of the allocation (MASTER_ADDR) for the
rendezvous. Rank 0 alone writes the weights; a resubmitted script continues from the last checkpoint.
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from sslseg.config import PretrainConfig
from sslseg.errors import ConfigError


def sbatch_time(hours: float) -> str:
    """A SLURM time limit (HH:MM:SS) from hours; days are written as hours, which SLURM accepts."""
    if hours <= 0:
        raise ConfigError(f"the time limit must be positive, got {hours} hours")
    minutes = max(1, int(round(hours * 60)))
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def pretrain_slurm_script(
    cfg: PretrainConfig,
    config_file: Path | None,
    overrides: list[str],
    nodes: int,
    gpus_per_node: int,
    hours: float = 24.0,
    partition: str | None = None,
    cpus_per_task: int = 8,
    workdir: Path | None = None,
) -> str:
    """An sbatch script that pretrains `cfg` on `nodes` × `gpus_per_node` GPUs with one srun task per GPU.

    `config_file` and `overrides` (section.key=value, as `--set` takes them) are what `cfg` was loaded from;
    the script runs `sslseg pretrain` with them and the node, device and strategy settings, from `workdir`
    (default: the current folder), so relative paths in the config mean what they meant here."""
    if nodes < 1 or gpus_per_node < 1:
        raise ConfigError(
            f"a SLURM job needs at least one node and one GPU per node, got {nodes} × {gpus_per_node}"
        )
    if cpus_per_task < 1:
        raise ConfigError(f"--cpus-per-task must be at least 1, got {cpus_per_task}")
    strategy = cfg.train.strategy if "ddp" in cfg.train.strategy else "ddp"
    workdir = (workdir or Path.cwd()).resolve()
    placed = [
        f"train.num_nodes={nodes}",
        f"train.devices={gpus_per_node}",
        f"train.strategy={strategy}",
        "train.accelerator=gpu",
    ]
    fixed = {p.split("=", 1)[0] for p in placed}
    command = [sys.executable, "-m", "sslseg", "pretrain"]
    if config_file is not None:
        command += ["--config", str(Path(config_file).resolve())]
    for pair in [*(o for o in overrides if o.split("=", 1)[0].strip() not in fixed), *placed]:
        command += ["--set", pair]
    output = Path(cfg.output)
    last = output / "checkpoints" / "last.ckpt"
    name = f"sslseg-pretrain-{cfg.method}"
    lines = [
        "#!/bin/bash",
        f"#SBATCH --job-name={name}",
        f"#SBATCH --nodes={nodes}",
        f"#SBATCH --ntasks-per-node={gpus_per_node}",
        f"#SBATCH --gpus-per-node={gpus_per_node}",
        f"#SBATCH --cpus-per-task={cpus_per_task}",
        f"#SBATCH --time={sbatch_time(hours)}",
        *([f"#SBATCH --partition={partition}"] if partition else []),
        f"#SBATCH --output={workdir}/slurm-{name}-%j.log",
        "",
        f"# {nodes} node(s) × {gpus_per_node} GPU(s): one task per GPU. Lightning reads each task's ranks from",
        "# SLURM_NTASKS, SLURM_PROCID, SLURM_LOCALID and SLURM_NODEID; the first node is the rendezvous.",
        "set -euo pipefail",
        f"cd {shlex.quote(str(workdir))}",
        'MASTER_ADDR=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        "export MASTER_ADDR",
        'export MASTER_PORT="${MASTER_PORT:-$((15000 + SLURM_JOB_ID % 20000))}"',
        "",
        "# a resubmitted job continues from the run's last checkpoint",
        'resume=""',
        f"if [ -f {shlex.quote(str(last))} ]; then resume=--resume; fi",
        f"srun {shlex.join(command)} $resume",
        "",
    ]
    return "\n".join(lines)
