"""Run a study: expand the grid, then let workers claim jobs from the results store until none is left.

Each worker is a loop (claim → run → store) in its own process, pinned to one GPU or to a share of the CPU
cores; several runners on one study folder (more processes, more machines, SLURM array tasks) cooperate
through the store — SQLite on one machine, a folder of claim and result files on a cluster's shared
filesystem (see sslseg.study.store). A killed job is resumed from its last checkpoint by whichever runner
claims it next. Nothing finished or half-done is ever deleted: a job folder that cannot be resumed is moved
aside under `<study>/superseded/`, and so is a done cell's folder when its changed settings are rerun
(`rerun_changed`); a runner that lost its claim stops at its next write (`sslseg.fence`).
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import platform
import shlex
import shutil
import socket
import sqlite3
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import sslseg
from sslseg.atomic import write_text
from sslseg.config import FinetuneConfig, PretrainConfig, read_yaml_mapping, to_yaml
from sslseg.data.layouts import find_samples
from sslseg.data.splits import dataset_split, save_split
from sslseg.errors import ConfigError, SslsegError
from sslseg.fence import FENCE_FILE, ClaimLost, Fence, fenced
from sslseg.slurm import sbatch_time
from sslseg.study.identity import PathNormaliser, differences, identity_of, study_root_of
from sslseg.study.proposals import ensure_proposal, plan_proposals
from sslseg.study.spec import (
    Job,
    StudyConfig,
    config_defaults,
    expand,
    keeps_weights,
    select_jobs,
    split_path,
    study_dir,
)
from sslseg.study.store import (
    Backend,
    JobStore,
    SyncReport,
    aside_path,
    open_store,
    resolve_backend,
    store_location,
)

HEARTBEAT_SECONDS = 30.0
# a claim untouched this long belongs to a dead runner: many heartbeats, and well above the minute for which
# NFS clients may cache a file's attributes
STALE_SECONDS = 600.0


def with_store(study: StudyConfig, default: Backend = "sqlite") -> StudyConfig:
    """The study with its `store` setting resolved (`auto`: what its folder holds, else `default`)."""
    return study.model_copy(update={"store": resolve_backend(study_dir(study), study.store, default)})


def store_path(study: StudyConfig) -> Path:
    """Where the study's results store lives (results.sqlite, or the store/ folder of the files backend)."""
    return store_location(study_dir(study), with_store(study).store)


def study_store(study: StudyConfig, stale_after: float = STALE_SECONDS) -> JobStore:
    """The study's results store, created if need be (a context manager)."""
    return open_store(study_dir(study), with_store(study).store, stale_after)


def prepare(study: StudyConfig, rerun_changed: bool = False, only: list[str] | None = None) -> list[Job]:
    """Write the study file and the dataset splits into the study folder, expand the grid and register its
    jobs in the store (done jobs whose settings changed are kept, or with `rerun_changed` moved aside and
    redone). With `only`, the chosen images are made now only for the selection rows that have a cell in
    it. Safe to run from several runners at once (same content, atomic writes)."""
    study = with_store(study)  # the study folder's copy names its store, for status and report
    out = study_dir(study)
    out.mkdir(parents=True, exist_ok=True)
    write_text(out / "study.yaml", to_yaml(study))
    for ds in study.datasets:
        target = split_path(study, ds)
        if target.is_file():
            continue  # a study keeps its split: every cell, old and new, is scored on the same images
        samples = find_samples(ds.train, layout=ds.layout, mask_suffix=ds.mask_suffix, allow_unlabeled=True)
        if ds.max_images:
            samples = samples[: ds.max_images]
        test_fraction = 0.0 if ds.test is not None else ds.test_fraction
        ids, labelled = [s.id for s in samples], [s.id for s in samples if s.label is not None]
        split = dataset_split(ids, labelled, ds.val_fraction, test_fraction, ds.split_seed, ds.validation)
        save_split(target, split)
    jobs = expand(study)
    plan_proposals(study, jobs, None if only is None else set(select_jobs(jobs, only)))
    with study_store(study) as store:
        report = store.sync(jobs, rerun_changed=rerun_changed)
        for entry in report.superseded:
            _move_aside(Path(entry["folder"]), Path(entry["moved_to"]))
        adopted = adopt_finished_folders(jobs, store, out)
    _say_what_changed(report, adopted)
    return jobs


def _move_aside(folder: Path, target: Path) -> bool:
    """Move a job folder out of the way (never delete it); False when there is none (or another runner
    moved it first)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(folder, target)
    except FileNotFoundError:
        return False
    return True


def adopt_finished_folders(jobs: list[Job], store: JobStore, study_root: Path) -> list[str]:
    """Pending fine-tuning cells whose folder holds a finished run (`result.json`) of equivalent settings
    (its `config.yaml`) are stored as done from it — a study whose store lost their rows (an older sslseg
    reset them when an option was added) gets them back instead of running them again."""
    pending = {r["key"] for r in store.rows([j.key for j in jobs]) if r["status"] == "pending"}
    by_key = {j.key: j for j in jobs}
    normalise = PathNormaliser(study_root)
    adopted = []
    for job in jobs:
        out = Path(job.config["output"])
        if job.key not in pending or job.kind != "finetune" or not (out / "result.json").is_file():
            continue
        try:
            summary = json.loads((out / "result.json").read_text())
            made = FinetuneConfig.model_validate(
                read_yaml_mapping(out / "config.yaml", "run settings") | {"output": str(out)}
            ).model_dump(mode="json")
        except (OSError, ValueError, SslsegError):
            continue  # not a complete run of this version's config: it is redone (and its folder moved aside)
        upstream = by_key[job.depends_on].identity if job.depends_on else None
        identity = identity_of(made, config_defaults("finetune"), normalise, upstream)
        if differences(identity, job.identity) or "test" not in summary:
            continue
        runner = f"adopt-{socket.gethostname()}-{os.getpid()}"
        row = store.claim(runner, [job.key])
        if row is None:
            continue  # its pretraining is not done, or another runner took it
        seconds = {"fit": summary.get("fit_seconds", 0.0), "test": summary.get("test_seconds", 0.0)}
        seconds["total"] = seconds["fit"] + seconds["test"]
        info = {k: v for k, v in summary.items() if k != "test"} | {"resumed": False, "adopted": str(out)}
        if store.finish(job.key, runner, summary["test"], seconds, info):
            adopted.append(job.key)
    return adopted


def _say_what_changed(report: SyncReport, adopted: list[str]) -> None:
    """One line per group of done jobs kept though their settings changed (and how to rerun them), and what
    was moved aside or taken back from finished folders."""
    groups: dict[tuple[str, ...], list[str]] = {}
    for key, settings in report.changed.items():
        groups.setdefault(tuple(settings), []).append(key)
    for settings, keys in groups.items():
        shown = ", ".join(settings[:4]) + (f" and {len(settings) - 4} more" if len(settings) > 4 else "")
        print(
            f"{len(keys)} finished job(s) kept although their settings changed ({shown}), e.g. {keys[0]}; "
            "their results stand until `--rerun-changed` moves them aside and runs them again",
            file=sys.stderr,
            flush=True,
        )
    for entry in report.superseded:
        print(
            f"{entry['key']}: settings changed, old result moved aside to {entry['moved_to']}",
            file=sys.stderr,
        )
    if adopted:
        print(
            f"{len(adopted)} finished cell folder(s) taken back into the store", file=sys.stderr, flush=True
        )


def _versions() -> dict[str, str]:
    import torch

    return {"sslseg": sslseg.__version__, "torch": torch.__version__, "python": platform.python_version()}


def resumable(row: dict[str, Any]) -> bool:
    """Whether a job's folder holds a run that `--resume` continues (a self-training run: in any phase)."""
    out = Path(row["config"]["output"])
    if row["kind"] == "finetune":
        from sslseg.finetune import can_resume

        return can_resume(out)
    return (out / "checkpoints" / "last.ckpt").is_file()


def _holds_work(out: Path) -> bool:
    """Whether a job folder holds anything besides a claim token."""
    return out.is_dir() and any(p.name != FENCE_FILE for p in out.iterdir())


def run_job(
    row: dict[str, Any], progress: bool = False, fence: Fence | None = None
) -> tuple[dict, dict, dict]:
    """Run one claimed job inside its fence (the claim's token in its folder); returns (metrics, seconds per
    phase, info) for the store. A folder that cannot be resumed is moved aside, never deleted."""
    config = row["config"]
    out = Path(config["output"])
    resume = bool(row["resumed"]) and resumable(row)
    if not resume and _holds_work(out):  # a failed or half-started earlier attempt: start afresh beside it
        root = study_root_of(config, row["key"], row["kind"])
        _move_aside(
            out, aside_path(root, row["key"], f"attempt{row.get('attempts') or 0}-{int(time.time())}")
        )
    fence = fence or Fence(out, row.get("token") or uuid.uuid4().hex)
    with fenced(fence):
        return _run(row, config, resume, progress)


def _run(
    row: dict[str, Any], config: dict[str, Any], resume: bool, progress: bool
) -> tuple[dict, dict, dict]:
    t0 = time.perf_counter()
    if row["kind"] == "pretrain":
        from sslseg.pretrain import pretrain

        result = pretrain(PretrainConfig.model_validate(config), resume=resume, progress=progress)
        seconds = {"pretrain": result.summary["seconds"], "total": time.perf_counter() - t0}
        info = {**result.summary, "resumed": resume}
        metrics: dict[str, Any] = {}
    else:
        from sslseg.finetune import finetune

        if config["data"].get("labelled_list"):  # a chosen budget: chosen now if its features came late
            ensure_proposal(config["data"]["labelled_list"])
        result = finetune(FinetuneConfig.model_validate(config), resume=resume, progress=progress)
        s = result.summary
        seconds = {"fit": s["fit_seconds"], "test": s["test_seconds"], "total": time.perf_counter() - t0}
        info = {k: v for k, v in s.items() if k != "test"} | {"resumed": resume}
        metrics = result.test
    info.update(host=socket.gethostname(), versions=_versions())
    return metrics, seconds, info


class _Heartbeat:
    """Keeps a claimed job alive in the store while it runs, and notes when the claim was lost: another
    runner took the job over because this one looked dead (suspended, or cut off from the filesystem)."""

    def __init__(
        self,
        store: JobStore,
        key: str,
        runner: str,
        every: float = HEARTBEAT_SECONDS,
        lost: threading.Event | None = None,
    ) -> None:
        self.lost = lost or threading.Event()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, args=(store, key, runner, every), daemon=True)
        self._thread.start()

    def _beat(self, store: JobStore, key: str, runner: str, every: float) -> None:
        while not self._stop.wait(every):
            try:
                alive = store.heartbeat(key, runner)
            except (OSError, sqlite3.Error) as e:  # a filesystem or lock hiccup: try again at the next beat
                print(f"[{runner}] heartbeat of {key} failed: {e}", file=sys.stderr, flush=True)
                continue
            if not alive:
                self.lost.set()
                print(f"[{runner}] lost its claim on {key} to another runner", file=sys.stderr, flush=True)
                return

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()


def _describe(row: dict[str, Any], metrics: dict[str, Any], seconds: dict[str, float]) -> str:
    if row["kind"] == "pretrain":
        return f"pretrained in {seconds['total']:.0f}s"
    from sslseg.segmentation.tasks import task_named

    name = task_named(row["config"]["data"]["task"]).primary_metric
    return f"test {name} {metrics.get(name, float('nan')):.3f} in {seconds['total']:.0f}s"


def _keep_products(row: dict[str, Any], study: StudyConfig, keep_weights: bool = True) -> None:
    """What a done job keeps: not its resume state (optimiser and all, the largest files of a study; a done
    job is never resumed), and a cell's weights in the study's `cell_weights` precision when it keeps them
    (`keeps_weights`). Called only once the job's result is stored."""
    out = Path(row["config"]["output"])
    shutil.rmtree(out / "checkpoints", ignore_errors=True)
    best = out / "best.ckpt"
    if row["kind"] == "finetune" and not keep_weights:
        best.unlink(missing_ok=True)
        return
    if row["kind"] == "finetune" and study.cell_weights != "float32" and best.is_file():
        from sslseg.rundir import half_precision_checkpoint

        half_precision_checkpoint(best, study.cell_weights)


def worker_loop(
    study_json: dict[str, Any],
    runner: str,
    poll: float = 5.0,
    progress: bool = False,
    stale_after: float = STALE_SECONDS,
    heartbeat: float = HEARTBEAT_SECONDS,
    only: list[str] | None = None,
) -> int:
    """Claim and run jobs of the study (those of `only` and their pretrainings, if given) until every one is
    done or failed; returns how many it ran."""
    study = StudyConfig.model_validate(study_json)
    jobs = expand(study)
    keys = select_jobs(jobs, only)
    by_key = {j.key: j for j in jobs}
    ran = 0
    with study_store(study, stale_after) as store:
        while True:
            row = store.claim(runner, keys)
            if row is None:
                counts = store.counts(keys)
                if counts["pending"] == 0 and counts["running"] == 0:
                    return ran
                time.sleep(poll)  # what is left waits on a pretraining another worker is running
                continue
            fence = Fence(row["config"]["output"], row["token"])
            beat = _Heartbeat(store, row["key"], runner, heartbeat, fence.lost)
            verb = "resuming" if row["resumed"] else "starting"
            print(f"[{runner}] {verb} {row['key']}", file=sys.stderr, flush=True)
            try:
                metrics, seconds, info = run_job(row, progress, fence)
            except ClaimLost as e:  # another runner owns the job now: it stores the result, not this one
                beat.stop()
                print(f"[{runner}] {row['key']}: {e}", file=sys.stderr, flush=True)
                continue
            except Exception as e:  # one broken job must not stop the study; its error is stored
                beat.stop()
                message = str(e) if isinstance(e, SslsegError) else f"{type(e).__name__}: {e}"
                store.fail(row["key"], runner, message)
                print(f"[{runner}] FAILED {row['key']}: {message}", file=sys.stderr, flush=True)
                continue
            except BaseException:  # stopped (Ctrl-C; Lightning's SIGTERM at a SLURM time limit or preemption)
                beat.stop()
                store.release(row["key"], runner)  # the next runner resumes it at once
                raise
            beat.stop()
            if beat.lost.is_set() or not store.finish(row["key"], runner, metrics, seconds, info):
                # the runner that took the job over resumes from its checkpoints and stores its result
                print(f"[{runner}] {row['key']} belongs to another runner now", file=sys.stderr, flush=True)
                continue
            _keep_products(row, study, keeps_weights(study, by_key[row["key"]]))
            ran += 1
            c = store.counts(keys)
            print(
                f"[{runner}] {c['done']}/{len(keys)} done: {row['key']} {_describe(row, metrics, seconds)}",
                file=sys.stderr,
                flush=True,
            )


def _worker_entry(
    study_json: dict[str, Any], runner: str, env: dict[str, str], threads: int, only: list[str] | None
) -> None:
    """Process entry of a local worker: pin its device before torch starts, then loop."""
    os.environ.update(env)
    import torch

    if threads:
        torch.set_num_threads(threads)
    from sslseg.console import quiet_libraries

    quiet_libraries()
    worker_loop(study_json, runner, only=only)


@dataclass
class RunSummary:
    study_dir: Path
    counts: dict[str, int]
    seconds: float


def _gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def run_study(
    study: StudyConfig,
    workers: int | None = None,
    progress: bool = True,
    only: list[str] | None = None,
    rerun_changed: bool = False,
) -> RunSummary:
    """Run every job of the study that is not done yet: one worker per GPU, else `workers` CPU workers
    (default 1) sharing the cores. Failed jobs of an earlier run are tried again. `only` limits the run to
    those job keys and the pretrainings they need (a session's share of a long study); the study folder
    still holds the whole study, so later runs and the report see every cell. Done jobs whose settings
    changed keep their results unless `rerun_changed` (then their results are moved aside, still readable)."""
    t0 = time.perf_counter()
    study = with_store(study)
    jobs = prepare(study, rerun_changed, only)
    keys = select_jobs(jobs, only)
    with study_store(study) as store:
        store.reset_failed(keys)
        before = store.counts(keys)
    print(
        f"study '{study.name}': {len(keys)} jobs{'' if only is None else f' of {len(jobs)}'}, "
        f"{before['done']} already done, "
        f"results in {store_path(study)}",
        file=sys.stderr,
        flush=True,
    )
    gpus = _gpu_count()
    n = workers or (gpus if gpus else 1)
    tag = f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"
    study_json = study.model_dump(mode="json")
    subset = None if only is None else keys  # with the pretrainings the chosen cells need
    if n == 1:
        worker_loop(study_json, f"{tag}-w0", progress=False, only=subset)
    else:
        ctx = mp.get_context("spawn")
        cores = os.cpu_count() or 1
        procs = []
        for i in range(n):
            env = {"CUDA_VISIBLE_DEVICES": str(i % gpus)} if gpus else {}
            threads = 0 if gpus else max(1, cores // n)
            p = ctx.Process(target=_worker_entry, args=(study_json, f"{tag}-w{i}", env, threads, subset))
            p.start()
            procs.append(p)
        for p in procs:
            p.join()
    with study_store(study) as store:
        counts = store.counts(keys)
    return RunSummary(study_dir(study), counts, time.perf_counter() - t0)


def slurm_script(
    study_file: Path, study: StudyConfig, tasks: int, hours: float = 24.0, overrides: list[str] | None = None
) -> str:
    """A SLURM array job: each task is one runner claiming jobs from the same store (one GPU each); the
    store is the files backend unless the study sets `store: sqlite` (see sslseg.study.store)."""
    if tasks < 1:
        raise ConfigError("a SLURM array needs at least one task")
    store = with_store(study, "files").store
    command = [
        sys.executable,
        "-m",
        "sslseg",
        "study",
        "run",
        str(Path(study_file).resolve()),
        "--workers",
        "1",
    ]
    command += [
        "--no-report",
        *[x for o in overrides or [] if not o.startswith("store=") for x in ("--set", o)],
    ]
    command += ["--set", f"store={store}"]
    return "\n".join(
        [
            "#!/bin/bash",
            f"#SBATCH --job-name=sslseg-{study.name}",
            f"#SBATCH --array=0-{tasks - 1}",
            "#SBATCH --gpus=1",
            "#SBATCH --cpus-per-task=8",
            f"#SBATCH --time={sbatch_time(hours)}",
            f"#SBATCH --output={study_dir(study).resolve()}/slurm-%A_%a.log",
            "",
            "# Every task claims jobs from the study's results store until none is left; a task that is",
            "# killed (time limit, preemption) leaves its job to be resumed by the next runner.",
            shlex.join(command),
            "",
        ]
    )
