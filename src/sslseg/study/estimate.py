"""What a study will cost before it runs: each job's training steps times a measured step time, and the
disk its results take.

The step time comes from jobs of the same kind already finished in the store when there are any, else from
timing two training steps of the very model on random input on this machine. Validation, testing and data
loading are not in a step; `OVERHEAD` adds a rough share for them, so the figure is an estimate, not a promise.
The disk figure counts the weights each finished job keeps (every pretraining's; a cell's under the study's
`keep_weights`), from the parameter count of its model.
"""

from __future__ import annotations

import copy
import json
import time
from dataclasses import dataclass
from typing import Any

import torch

from sslseg.config import FinetuneConfig, PretrainConfig
from sslseg.errors import ConfigError
from sslseg.study.spec import Job, StudyConfig, expand, keeps_weights, select_jobs

OVERHEAD = 1.3  # validation, test scoring and data loading on top of the training steps
# a job's folder besides its weights (config, split, logs, per-image scores, result): about 10 kB for a
# tiny run, more with long logs and many test images
RUN_FILES_BYTES = 100_000
# a full Lightning checkpoint (resume state) holds the weights and the optimiser's moments: about three times
# the float32 weights under Adam
RESUME_FACTOR = 3
BYTES = {"float16": 2, "bfloat16": 2, "float32": 4}


def _timed(step: Any, repeats: int = 2) -> float:
    step()  # warm-up: allocation, kernel selection
    t0 = time.perf_counter()
    for _ in range(repeats):
        step()
    return (time.perf_counter() - t0) / repeats


def _finetune_step_seconds(cfg: FinetuneConfig, channels: int) -> float:
    from sslseg.nn.unet import build_unet, freeze

    net = build_unet(cfg.model.encoder, channels, 2, decoder_channels=cfg.model.decoder_channels)
    if cfg.model.frozen:
        freeze(net.encoder)
    opt = torch.optim.AdamW([p for p in net.parameters() if p.requires_grad], lr=1e-4)
    crop = cfg.train.crop_size
    x = torch.rand(cfg.train.batch_size, channels, crop, crop)
    # semi-supervised fine-tuning adds, per step, the mean teacher's forward pass on a batch of unlabeled
    # crops and the student's forward and backward pass on their strong views
    semi = cfg.semi.enabled and cfg.semi.method == "mean_teacher"
    u = torch.rand(cfg.semi.batch_size or cfg.train.batch_size, channels, crop, crop) if semi else None
    teacher = copy.deepcopy(net).eval().requires_grad_(False) if semi else None

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        loss = net(x).float().mean()
        if u is not None and teacher is not None:
            with torch.no_grad():
                teacher(u)
            loss = loss + net(u).float().mean()
        loss.backward()
        opt.step()

    return _timed(step)


def _pretrain_step_seconds(cfg: PretrainConfig, channels: int) -> float:
    from sslseg.pretrain import build_method, resolve_optim

    method = build_method(resolve_optim(cfg), channels)
    method.train()
    base = cfg.data.base_size or 2 * cfg.views.size
    batch = torch.rand(cfg.train.batch_size, channels, base, base)
    opt = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=1e-4)

    def step() -> None:
        loss, _ = method.ssl_loss(method.view_maker(batch, method.n_views))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        method.after_step()

    return _timed(step)


def job_steps(job: Job | dict[str, Any], n_images: int | None = None) -> int:
    """Training steps a job runs at most (fine-tuning may stop early)."""
    config = job.config if isinstance(job, Job) else job["config"]
    kind = job.kind if isinstance(job, Job) else job["kind"]
    train = config["train"]
    if kind == "finetune":
        semi = config.get("semi", {})
        # self-training fine-tunes twice: a teacher on the labels, then the student (pseudo-labelling aside)
        runs = 2 if semi.get("enabled") and semi.get("method") == "self_training" else 1
        return runs * train["epochs"] * train["steps_per_epoch"]
    per_epoch = train["steps_per_epoch"] or max(1, (n_images or 0) // train["batch_size"])
    return train["epochs"] * per_epoch


def _signature(job: Job) -> tuple:
    c = job.config
    if job.kind == "finetune":
        return (
            "finetune",
            c["model"]["encoder"],
            c["model"]["frozen"],
            c["train"]["batch_size"],
            c["train"]["crop_size"],
            c["semi"]["enabled"],
            c["semi"].get("method"),
            c["semi"]["batch_size"],
        )
    return (
        "pretrain",
        c["method"],
        c["encoder"],
        c["train"]["batch_size"],
        c["views"]["size"],
        c["data"]["base_size"],
    )


def estimate_jobs(
    jobs: list[Job],
    done_rows: list[dict[str, Any]],
    channels: int = 3,
    n_images: dict[str, int] | None = None,
) -> dict[str, float]:
    """Estimated seconds per job key: measured time for finished ones, steps × step time for the rest."""
    n_images = n_images or {}
    finished = {r["key"]: r for r in done_rows if r["status"] == "done" and r["seconds"]}
    # seconds per step learned from finished jobs with the same model and batch
    learned: dict[tuple, list[float]] = {}
    by_key = {j.key: j for j in jobs}
    for key, row in finished.items():
        if key in by_key:
            steps = job_steps(row, n_images.get(row["dataset"]))
            learned.setdefault(_signature(by_key[key]), []).append(row["seconds"]["total"] / max(steps, 1))
    measured: dict[tuple, float] = {}
    out: dict[str, float] = {}
    for job in jobs:
        if job.key in finished:
            out[job.key] = float(finished[job.key]["seconds"]["total"])
            continue
        sig = _signature(job)
        if sig in learned:
            per_step = sum(learned[sig]) / len(learned[sig])
        else:
            if sig not in measured:
                if job.kind == "finetune":
                    cfg = FinetuneConfig.model_validate(job.config)
                    measured[sig] = _finetune_step_seconds(cfg, channels)
                else:
                    measured[sig] = _pretrain_step_seconds(
                        PretrainConfig.model_validate(job.config), channels
                    )
            per_step = measured[sig] * OVERHEAD
        out[job.key] = per_step * job_steps(job, n_images.get(job.dataset))
    return out


def _tensor_bytes(state: dict[str, torch.Tensor], float_bytes: int) -> int:
    return sum(
        t.numel() * (float_bytes if t.is_floating_point() else t.element_size()) for t in state.values()
    )


@dataclass
class DiskEstimate:
    """Disk a study takes: what its finished jobs keep, and what a running job holds besides."""

    cells: int
    cell_bytes: int  # one cell's best.ckpt at the study's cell_weights precision
    pretrainings: int
    pretraining_bytes: int  # one pretraining's weights files (float32)
    running_bytes: int  # the largest job's resume checkpoints while it runs, per worker
    cell_weights: str
    kept_cells: int  # the cells that keep their best.ckpt under the study's keep_weights
    keep_weights: str

    @property
    def total(self) -> int:
        return (
            self.kept_cells * self.cell_bytes
            + self.cells * RUN_FILES_BYTES
            + self.pretrainings * (self.pretraining_bytes + RUN_FILES_BYTES)
        )

    def text(self) -> str:
        mb = 1e6
        weights = f"{self.kept_cells} keep best.ckpt × {self.cell_bytes / mb:.1f} MB in {self.cell_weights}"
        parts = [f"{self.cells} cells, {weights} (keep_weights: {self.keep_weights})"]
        if self.pretrainings:
            parts.append(f"{self.pretrainings} pretrainings × {self.pretraining_bytes / mb:.1f} MB (weights)")
        return (
            f"disk: about {self.total / mb:,.0f} MB when done ({' + '.join(parts)}); while running, each "
            f"worker's job holds up to {self.running_bytes / mb:,.0f} MB more in resume checkpoints"
        )


def disk_estimate(study: StudyConfig, jobs: list[Job], channels: int = 3) -> DiskEstimate:
    """The disk a study's results take, from the parameter counts of its models (built without memory, on
    the meta device): a cell keeps its U-Net in best.ckpt, a pretraining its encoder (and any other part
    its method saves) in float32."""
    from sslseg.nn.unet import build_unet
    from sslseg.pretrain import build_method, resolve_optim
    from sslseg.segmentation.tasks import task_named

    float_bytes = BYTES[study.cell_weights]
    kept: dict[tuple, tuple[int, int]] = {}  # model signature → (kept bytes, resume bytes)
    cell = pre = running = 0
    for job in jobs:
        if job.kind == "finetune":
            cfg = FinetuneConfig.model_validate(job.config)
            m = cfg.model
            sig: tuple = (
                "finetune",
                m.encoder,
                m.decoder_channels,
                task_named(cfg.data.task).output_channels(cfg),
            )
            if sig not in kept:
                with torch.device("meta"):
                    net = build_unet(
                        m.encoder,
                        channels,
                        task_named(cfg.data.task).output_channels(cfg),
                        m.decoder_channels,
                    )
                state = net.state_dict()
                kept[sig] = (_tensor_bytes(state, float_bytes), 2 * RESUME_FACTOR * _tensor_bytes(state, 4))
            cell = max(cell, kept[sig][0])
        else:
            pcfg = PretrainConfig.model_validate(job.config)
            sig = (
                "pretrain",
                pcfg.method,
                pcfg.encoder,
                json.dumps(job.config.get("params"), sort_keys=True),
            )
            if sig not in kept:
                with torch.device("meta"):
                    method = build_method(resolve_optim(pcfg), channels)
                parts = [method.encoder, *method.extra_weights().values()]
                saved = sum(_tensor_bytes(p.state_dict(), 4) for p in parts)
                kept[sig] = (saved, RESUME_FACTOR * _tensor_bytes(method.state_dict(), 4))
            pre = max(pre, kept[sig][0])
        running = max(running, kept[sig][1])
    n_pre = sum(j.kind == "pretrain" for j in jobs)
    kept = sum(j.kind == "finetune" and keeps_weights(study, j) for j in jobs)
    return DiskEstimate(
        len(jobs) - n_pre, cell, n_pre, pre, running, study.cell_weights, kept, study.keep_weights
    )


def dry_run_table(study: StudyConfig, only: list[str] | None = None) -> str:
    """The jobs of a study (those of `only` and their pretrainings, if given) with their status and
    estimated minutes, the work left and the disk they take, as text."""
    from sslseg.data.layouts import find_samples
    from sslseg.study.spec import study_dir
    from sslseg.study.store import existing_backend, read_rows

    jobs = expand(study)
    if only is not None:
        keep = set(select_jobs(jobs, only))
        jobs = [j for j in jobs if j.key in keep]
    rows = []
    folder = study_dir(study)
    if study.store != "auto" or existing_backend(folder) is not None:
        try:
            rows = read_rows(folder, [j.key for j in jobs], study.store)
        except ConfigError:
            rows = []  # the store the study names is not there yet: nothing has run
    status = {r["key"]: r["status"] for r in rows}
    changed = {r["key"] for r in rows if r.get("changed")}
    if rows:  # a done job whose settings changed since (equivalent settings, e.g. after an upgrade, do not)
        from sslseg.study.identity import differences
        from sslseg.study.store import legacy_identities

        stored = legacy_identities(rows)
        changed |= {j.key for j in jobs if j.key in stored and differences(stored[j.key], j.identity)}
    # pretraining epochs without a step count are one pass over the images
    n_images = {
        d.name: len(
            find_samples(d.unlabeled or d.train, "auto" if d.unlabeled else d.layout, allow_unlabeled=True)
        )
        for d in study.datasets
    }
    seconds = estimate_jobs(jobs, rows, n_images=n_images)
    lines = [f"{'job':60s} {'status':9s} {'est. min':>8s}"]
    todo = 0.0
    for j in jobs:
        st = status.get(j.key, "new")
        if st == "done" and j.key in changed:
            st = "changed"
        if st != "done":
            todo += seconds[j.key]
        lines.append(f"{j.key:60s} {st:9s} {seconds[j.key] / 60:8.1f}")
    lines.append(f"{len(jobs)} jobs; about {todo / 60:.0f} min of work left on this machine with one worker")
    lines.append(disk_estimate(study, jobs).text())
    return "\n".join(lines)
