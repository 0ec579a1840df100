"""What a study will cost before it runs: each job's training steps times a measured step time.

The step time comes from jobs of the same kind already finished in the store when there are any, else from
timing two training steps of the very model on random input on this machine. Validation, testing and data
loading are not in a step; `OVERHEAD` adds a rough share for them, so the figure is an estimate, not a promise.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from sslseg.config import FinetuneConfig, PretrainConfig
from sslseg.study.spec import Job, StudyConfig, expand

OVERHEAD = 1.3  # validation, test scoring and data loading on top of the training steps


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
    x = torch.rand(cfg.train.batch_size, channels, cfg.train.crop_size, cfg.train.crop_size)

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        net(x).float().mean().backward()
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
        loss, _ = method.ssl_loss(method.views(batch, method.n_views))
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
        return train["epochs"] * train["steps_per_epoch"]
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


def dry_run_table(study: StudyConfig) -> str:
    """The jobs of a study with their status and estimated minutes, and the work left, as text."""
    from sslseg.data.layouts import find_samples
    from sslseg.study.runner import store_path
    from sslseg.study.store import ResultStore

    jobs = expand(study)
    rows = []
    if store_path(study).is_file():
        store = ResultStore(store_path(study))
        try:
            rows = store.rows([j.key for j in jobs])
        finally:
            store.close()
    status = {r["key"]: r["status"] for r in rows}
    stored_hash = {r["key"]: r["config_hash"] for r in rows}
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
        if st == "done" and stored_hash.get(j.key) != j.hash:
            st = "changed"
        if st != "done":
            todo += seconds[j.key]
        lines.append(f"{j.key:60s} {st:9s} {seconds[j.key] / 60:8.1f}")
    lines.append(f"{len(jobs)} jobs; about {todo / 60:.0f} min of work left on this machine with one worker")
    return "\n".join(lines)
