"""What both results stores share: the `JobStore` interface, and the backend-independent bookkeeping of
`sync` (a job's stored record, the identities of rows an older sslseg stored, where results move aside)."""

from __future__ import annotations

import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from sslseg.study.identity import Identity, PathNormaliser, identity_of, study_root_of
from sslseg.study.spec import Job, config_defaults
from sslseg.study.store.rows import STATUSES

Backend = Literal["sqlite", "files"]
BACKENDS: tuple[Backend, ...] = ("sqlite", "files")
SUPERSEDED_DIR = "superseded"  # where the study folder keeps results (and cell folders) moved aside


@dataclass
class SyncReport:
    """What registering a study's jobs did: new jobs, jobs whose stored settings were brought up to date
    (equivalent: their results stand), pending or failed jobs whose settings changed, done (or running) jobs
    whose settings changed and were left as they are, and done jobs moved aside to be run again."""

    added: int = 0
    adopted: int = 0
    updated: int = 0
    changed: dict[str, list[str]] = field(default_factory=dict)
    superseded: list[dict[str, Any]] = field(default_factory=list)  # {key, folder, moved_to, changed}

    def moved_aside(self, job: Job, moved_to: Path, changed: list[str]) -> None:
        """Note a done job whose result was moved aside to `moved_to` (its folder goes there too)."""
        self.superseded.append(
            {"key": job.key, "folder": job.config["output"], "moved_to": str(moved_to), "changed": changed}
        )


def job_record(job: Job) -> dict[str, Any]:
    """A job's definition as a store keeps it (the identity in its JSON form)."""
    return {
        "key": job.key,
        "kind": job.kind,
        "dataset": job.dataset,
        "pretraining": job.pretraining,
        "state": job.state,
        "fraction": job.fraction,
        "seed": job.seed,
        "depends_on": job.depends_on,
        "ord": job.order,
        "config_hash": job.hash,
        "config": job.config,
        "identity": job.identity.to_json(),
    }


def legacy_identities(rows: list[dict[str, Any]]) -> dict[str, Identity]:
    """The identity of every stored row: the one stored with it, or for a row stored before identities were
    (an older sslseg), one computed from its config at its own study folder (pretrainings first, as cells
    carry their pretraining's)."""
    out: dict[str, Identity] = {}
    for row in sorted(rows, key=lambda r: (r["kind"] != "pretrain", r.get("ord") or 0)):
        if row.get("identity"):
            out[row["key"]] = Identity.from_json(row["identity"])
            continue
        config = row["config"]
        normalise = PathNormaliser(study_root_of(config, row["key"], row["kind"]))
        upstream = out.get(row["depends_on"]) if row.get("depends_on") else None
        out[row["key"]] = identity_of(config, config_defaults(row["kind"]), normalise, upstream)
    return out


def aside_path(study_root: Path, key: str, tag: str) -> Path:
    """A free folder name under `<study>/superseded/` for a job's result or folder moved aside."""
    base = study_root / SUPERSEDED_DIR / f"{file_name(key)}@{tag}"
    path, n = base, 1
    while path.exists() or path.with_name(path.name + ".json").exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


def file_name(key: str) -> str:
    """A job key (`dataset/pretraining/state/fraction/seed`) as one file name, reversibly."""
    return quote(key, safe="")


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class JobStore(ABC):
    """What a runner, `sslseg study status` and the report need from a results store."""

    stale_after: float

    def __enter__(self) -> JobStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @abstractmethod
    def sync(self, jobs: list[Job], rerun_changed: bool = False) -> SyncReport:
        """Register the study's jobs. A stored job whose settings are equivalent keeps its state and result;
        one whose settings changed is updated if it has no result, else kept and marked changed — or, with
        `rerun_changed`, its result is moved aside (see `superseded`) and it is pending again."""

    @abstractmethod
    def superseded(self) -> list[dict[str, Any]]:
        """Results moved aside by a rerun of changed settings, oldest first: key, config, metrics, seconds,
        info, the settings that changed, where the job's folder was moved (`moved_to`) and when."""

    @abstractmethod
    def reset_failed(self, keys: list[str] | None = None) -> int:
        """Give failed jobs (of `keys`, if given) another try; returns how many."""

    @abstractmethod
    def claim(self, runner: str, keys: list[str]) -> dict[str, Any] | None:
        """Atomically take the first job (in study order) among `keys` that is pending, or running in a
        dead runner, and whose pretraining is done; its row has `resumed` set when a dead runner held it
        (on the same settings) and `token`, the claim's fencing token. Jobs whose pretraining failed are
        marked failed."""

    @abstractmethod
    def heartbeat(self, key: str, runner: str) -> bool:
        """Keep `runner`'s claim on `key` alive; False when the claim is no longer its own. Thread-safe."""

    @abstractmethod
    def release(self, key: str, runner: str) -> None:
        """Give up `runner`'s claim on a job it could not finish (it is being stopped), so that the next
        runner takes it over at once, resuming from its checkpoints, instead of after `stale_after`."""

    @abstractmethod
    def finish(
        self, key: str, runner: str, metrics: dict[str, Any], seconds: dict[str, float], info: dict[str, Any]
    ) -> bool:
        """Store a job's result, only if `runner` still owns the job (never two results for one job)."""

    @abstractmethod
    def fail(self, key: str, runner: str, error: str) -> bool:
        """Store a job's error, only if `runner` still owns the job."""

    @abstractmethod
    def rows(self, keys: list[str] | None = None) -> list[dict[str, Any]]:
        """Every job (of `keys`, if given) as a dict of `ROW_FIELDS`, in study order."""

    def counts(self, keys: list[str]) -> dict[str, int]:
        """How many of `keys` are pending, running, done and failed."""
        out = dict.fromkeys(STATUSES, 0)
        for r in self.rows(keys):
            out[r["status"]] += 1
        return out

    def close(self) -> None:  # noqa: B027 - a store without resources needs no closing
        """Release what the store holds open."""
