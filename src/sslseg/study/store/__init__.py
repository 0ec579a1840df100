"""Results stores of a study: every job is `pending`, `running` (claimed by a runner, kept alive by its
heartbeat), `done` (metrics stored) or `failed` (error stored), and no job ever gets two results.

Two backends behind one interface, `JobStore` (a context manager), chosen by the study's `store` setting:

- `sqlite` — `ResultStore`, one SQLite file (`results.sqlite`) whose write transactions make claims atomic.
  For one machine: SQLite's own documentation warns that its locking is unreliable on network filesystems.
- `files` — `FileStore`, one small file per job, per claim and per result under `store/`, for a study folder
  on a shared network filesystem (NFS, Lustre, GPFS) used by SLURM array tasks on many nodes: it needs no
  lock and no server, only an exclusive create (a hard link), an atomic rename and mtimes (see FileStore).

A running job whose runner died — its process is gone on this host, or its heartbeat is older than
`stale_after` seconds, whatever sslseg version made the claim — is claimed again; `reset_failed` gives failed
jobs a new try. Each claim carries a random token that the runner writes into the job's folder
(`sslseg.fence`), so a runner that lost its claim stops before its next checkpoint; a result is stored only by
an atomic compare-and-set on the claim.

Nothing finished is lost by `sync`: a job whose settings are equivalent to its stored ones (an upgrade, a moved
study folder, a new data root: `sslseg.study.identity`) keeps its result; a done job whose settings really
changed keeps its result too, marked with the settings that changed, until a rerun is asked for
(`rerun_changed`): then its result is moved aside (`superseded()`, still readable) and it is pending again.

The package: `rows` (JobRow, the row every backend hands out), `base` (the JobStore interface and the
bookkeeping of `sync` both backends share), `sqlite` and `files` (one backend each); this module opens a
study folder's store and re-exports what callers import from `sslseg.study.store`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from sslseg.errors import ConfigError
from sslseg.study.store.base import (
    BACKENDS,
    SUPERSEDED_DIR,
    Backend,
    JobStore,
    SyncReport,
    aside_path,
    job_record,
    legacy_identities,
)
from sslseg.study.store.files import FileStore
from sslseg.study.store.rows import ROW_FIELDS, STATUSES, JobRow
from sslseg.study.store.sqlite import ResultStore

__all__ = [
    "BACKENDS",
    "ROW_FIELDS",
    "STATUSES",
    "SUPERSEDED_DIR",
    "Backend",
    "FileStore",
    "JobRow",
    "JobStore",
    "ResultStore",
    "SyncReport",
    "aside_path",
    "existing_backend",
    "job_record",
    "legacy_identities",
    "open_store",
    "read_rows",
    "read_superseded",
    "resolve_backend",
    "store_location",
]


def store_location(folder: str | Path, backend: Backend) -> Path:
    """Where a study folder keeps its store of that backend."""
    return Path(folder) / ("results.sqlite" if backend == "sqlite" else "store")


def existing_backend(folder: str | Path) -> Backend | None:
    """The backend of the store a study folder already holds (None: none yet)."""
    found = [b for b in BACKENDS if store_location(folder, b).exists()]
    if len(found) > 1:
        raise ConfigError(
            f"{folder}: holds both a results.sqlite and a store/ folder; set the study's `store` to the one "
            "to use (sqlite or files)"
        )
    return found[0] if found else None


def resolve_backend(folder: str | Path, setting: str, default: Backend) -> Backend:
    """The backend a study uses: its `store` setting, or for `auto` the store its folder already holds,
    else `default` (sqlite on one machine, files for a cluster)."""
    if setting in BACKENDS:
        return setting  # type: ignore[return-value]
    if setting != "auto":
        raise ConfigError(f"unknown study store '{setting}'; choose auto, sqlite or files")
    return existing_backend(folder) or default


def open_store(
    folder: str | Path, backend: Backend, stale_after: float = 600.0, create: bool = True
) -> JobStore:
    """The study folder's store (a context manager); `create=False` refuses a folder without one."""
    where = store_location(folder, backend)
    if not create and not where.exists():
        raise ConfigError(f"{folder}: no results store here ({where.name}); run `sslseg study run` first")
    if backend == "sqlite":
        return ResultStore(where, stale_after)
    return FileStore(where, stale_after, create=create)


def read_rows(
    folder: str | Path, keys: list[str] | None = None, backend: str = "auto"
) -> list[dict[str, Any]]:
    """Every job row of a study folder, from whichever store it holds (for status and the report)."""
    found = resolve_backend(folder, backend, "sqlite") if backend != "auto" else existing_backend(folder)
    if found is None:
        raise ConfigError(
            f"{folder}: no results store here (results.sqlite or store/); run `sslseg study run` first"
        )
    with open_store(folder, found, create=False) as store:
        return store.rows(keys)


def read_superseded(folder: str | Path, backend: str = "auto") -> list[dict[str, Any]]:
    """The results of a study folder that were moved aside when their changed settings were rerun."""
    found = resolve_backend(folder, backend, "sqlite") if backend != "auto" else existing_backend(folder)
    if found is None:
        return []
    with open_store(folder, found, create=False) as store:
        return store.superseded()
