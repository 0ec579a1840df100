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
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import socket
import sqlite3
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote, unquote

from sslseg.atomic import write_json
from sslseg.errors import ConfigError, DataError
from sslseg.study.identity import Identity, PathNormaliser, differences, identity_of, study_root_of
from sslseg.study.spec import Job, config_defaults

Backend = Literal["sqlite", "files"]
BACKENDS: tuple[Backend, ...] = ("sqlite", "files")
STATUSES = ("pending", "running", "done", "failed")


@dataclass(frozen=True)
class JobRow:
    """One job of a study as the analysis and the report read it: its definition, then its state and
    result (the store's JSON columns decoded). Missing fields are None, as in a row of a pending job."""

    key: str
    kind: str
    dataset: str
    pretraining: str
    state: str | None = None
    fraction: float | None = None
    seed: int | None = None
    depends_on: str | None = None
    ord: int | None = None
    config_hash: str | None = None
    config: dict[str, Any] | None = None
    identity: dict[str, Any] | None = None
    changed: list[str] | None = None  # a done job's settings that changed since it ran (it was not rerun)
    token: str | None = None  # the fencing token of the claim that runs or ran the job
    status: str = "pending"
    runner: str | None = None
    host: str | None = None
    pid: int | None = None
    attempts: int = 0
    claimed_at: float | None = None
    heartbeat: float | None = None
    finished_at: float | None = None
    metrics: dict[str, Any] | None = None
    seconds: dict[str, float] | None = None
    info: dict[str, Any] | None = None
    error: str | None = None

    @classmethod
    def from_row(cls, row: dict[str, Any]) -> JobRow:
        """A store row (`JobStore.rows`) as a JobRow; keys outside `ROW_FIELDS` (a claim's `resumed`) are dropped."""
        return cls(**{k: v for k, v in row.items() if k in ROW_FIELDS})

    @property
    def total_seconds(self) -> float:
        """The job's measured run time (0 when none was stored)."""
        return float((self.seconds or {}).get("total", 0.0))


# every row, whichever backend: the job's definition, then its state and result (JSON columns decoded)
ROW_FIELDS = tuple(f.name for f in fields(JobRow))
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
    base = study_root / SUPERSEDED_DIR / f"{_file_name(key)}@{tag}"
    path, n = base, 1
    while path.exists() or path.with_name(path.name + ".json").exists():
        n += 1
        path = base.with_name(f"{base.name}-{n}")
    return path


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


SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    key TEXT PRIMARY KEY,
    kind TEXT NOT NULL,
    dataset TEXT NOT NULL,
    pretraining TEXT NOT NULL,
    state TEXT,
    fraction REAL,
    seed INTEGER,
    depends_on TEXT,
    ord INTEGER NOT NULL,
    config_hash TEXT NOT NULL,
    config TEXT NOT NULL,
    identity TEXT,
    changed TEXT,
    token TEXT,
    status TEXT NOT NULL DEFAULT 'pending',
    runner TEXT,
    host TEXT,
    pid INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    claimed_at REAL,
    heartbeat REAL,
    finished_at REAL,
    metrics TEXT,
    seconds TEXT,
    info TEXT,
    error TEXT
)
"""
# columns added since the first stores were written (an older results.sqlite gains them on opening)
ADDED_COLUMNS = {"identity": "TEXT", "changed": "TEXT", "token": "TEXT"}
SUPERSEDED_SCHEMA = """
CREATE TABLE IF NOT EXISTS superseded (
    key TEXT NOT NULL,
    config_hash TEXT,
    config TEXT,
    identity TEXT,
    metrics TEXT,
    seconds TEXT,
    info TEXT,
    finished_at REAL,
    changed TEXT,
    folder TEXT,
    moved_to TEXT,
    superseded_at REAL
)
"""
JSON_COLUMNS = ("config", "identity", "changed", "metrics", "seconds", "info")


def _decode(row: sqlite3.Row) -> dict[str, Any]:
    out = dict(row)
    for col in JSON_COLUMNS:
        if col in out:
            out[col] = json.loads(out[col]) if out[col] else None
    return out


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class ResultStore(JobStore):
    """SQLite-backed job table of one study (`results.sqlite` in the study folder)."""

    def __init__(self, path: str | Path, stale_after: float = 600.0) -> None:
        self.path = Path(path)
        self.stale_after = stale_after
        self.path.parent.mkdir(parents=True, exist_ok=True)
        # one connection for the runner and its heartbeat thread, used by one thread at a time
        self._lock = threading.RLock()
        try:
            self._db = sqlite3.connect(self.path, timeout=120, isolation_level=None, check_same_thread=False)
            self._db.row_factory = sqlite3.Row
            self._db.execute(SCHEMA)
            self._db.execute(SUPERSEDED_SCHEMA)
            have = {r["name"] for r in self._db.execute("PRAGMA table_info(jobs)")}
            for column, kind in ADDED_COLUMNS.items():
                if column not in have:
                    with contextlib.suppress(sqlite3.OperationalError):  # another runner added it first
                        self._db.execute(f"ALTER TABLE jobs ADD COLUMN {column} {kind}")
        except sqlite3.DatabaseError as e:
            raise DataError(self.path, f"not a readable results store: {e}") from None

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the database lock from its first statement (no lost updates)."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def sync(self, jobs: list[Job], rerun_changed: bool = False) -> SyncReport:
        """Insert new jobs and bring stored ones up to date (see `JobStore.sync`). Jobs no longer in the
        study are left in the store, untouched."""
        report = SyncReport()
        with self._write() as db:
            stored = {r["key"]: _decode(r) for r in db.execute("SELECT * FROM jobs")}
            identities = legacy_identities(list(stored.values()))
            for job in jobs:
                record = job_record(job)
                definition = {k: v for k, v in record.items() if k != "key"}
                definition["config"] = json.dumps(record["config"])
                definition["identity"] = json.dumps(record["identity"])
                old = stored.get(job.key)
                if old is None:
                    cols = ", ".join(definition)
                    db.execute(
                        f"INSERT INTO jobs ({cols}, key) VALUES ({', '.join('?' * (len(definition) + 1))})",
                        (*definition.values(), job.key),
                    )
                    report.added += 1
                    continue
                changed = differences(identities[job.key], job.identity)
                if old["status"] == "running" and (changed or old["config_hash"] != job.hash):
                    if changed:  # it runs the settings it was claimed with; the next sync judges its result
                        report.changed[job.key] = changed
                    db.execute("UPDATE jobs SET ord=? WHERE key=?", (job.order, job.key))
                    continue
                if not changed:  # the same job, perhaps written down by another version or elsewhere
                    report.adopted += old["config_hash"] != job.hash
                    self._define(db, job.key, definition, changed=None)
                elif old["status"] != "done":
                    report.updated += 1
                    self._define(db, job.key, definition, changed=None)
                    db.execute(
                        "UPDATE jobs SET status='pending', error=NULL, attempts=0 WHERE key=?", (job.key,)
                    )
                elif not rerun_changed:
                    report.changed[job.key] = changed
                    db.execute(
                        "UPDATE jobs SET ord=?, changed=? WHERE key=?",
                        (job.order, json.dumps(changed), job.key),
                    )
                else:
                    moved_to = aside_path(self.path.parent, job.key, old["config_hash"])
                    db.execute(
                        "INSERT INTO superseded (key, config_hash, config, identity, metrics, seconds, info,"
                        " finished_at, changed, folder, moved_to, superseded_at)"
                        " VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
                        (
                            job.key,
                            old["config_hash"],
                            json.dumps(old["config"]),
                            json.dumps(identities[job.key].to_json()),
                            json.dumps(old["metrics"]),
                            json.dumps(old["seconds"]),
                            json.dumps(old["info"]),
                            old["finished_at"],
                            json.dumps(changed),
                            job.config["output"],
                            str(moved_to),
                            time.time(),
                        ),
                    )
                    self._define(db, job.key, definition, changed=None)
                    db.execute(
                        "UPDATE jobs SET status='pending', metrics=NULL, seconds=NULL, info=NULL, error=NULL,"
                        " attempts=0, finished_at=NULL WHERE key=?",
                        (job.key,),
                    )
                    report.moved_aside(job, moved_to, changed)
        return report

    @staticmethod
    def _define(
        db: sqlite3.Connection, key: str, definition: dict[str, Any], changed: list[str] | None
    ) -> None:
        sets = ", ".join(f"{c}=?" for c in definition)
        db.execute(
            f"UPDATE jobs SET {sets}, changed=? WHERE key=?",
            (*definition.values(), json.dumps(changed) if changed else None, key),
        )

    def superseded(self) -> list[dict[str, Any]]:
        with self._lock:
            found = self._db.execute("SELECT * FROM superseded ORDER BY superseded_at").fetchall()
        return [_decode(r) for r in found]

    def reset_failed(self, keys: list[str] | None = None) -> int:
        with self._write() as db:
            rows = db.execute("SELECT key FROM jobs WHERE status='failed'").fetchall()
            todo = [r["key"] for r in rows if keys is None or r["key"] in set(keys)]
            db.executemany("UPDATE jobs SET status='pending', error=NULL WHERE key=?", [(k,) for k in todo])
        return len(todo)

    def _is_stale(self, row: sqlite3.Row, now: float) -> bool:
        if row["host"] == socket.gethostname() and row["pid"] and not _pid_alive(row["pid"]):
            return True
        return now - (row["heartbeat"] or 0) > self.stale_after

    def claim(self, runner: str, keys: list[str]) -> dict[str, Any] | None:
        now = time.time()
        wanted = set(keys)
        with self._write() as db:
            rows = db.execute(
                "SELECT * FROM jobs WHERE status IN ('pending', 'running') ORDER BY ord"
            ).fetchall()
            status = {r["key"]: r["status"] for r in db.execute("SELECT key, status FROM jobs")}
            for row in rows:
                if row["key"] not in wanted:
                    continue
                if row["status"] == "running" and not self._is_stale(row, now):
                    continue
                dep = row["depends_on"]
                if dep and status.get(dep) == "failed":
                    db.execute(
                        "UPDATE jobs SET status='failed', error=? WHERE key=?",
                        (f"its pretraining {dep} failed", row["key"]),
                    )
                    continue
                if dep and status.get(dep) != "done":
                    continue
                token = secrets.token_hex(8)
                db.execute(
                    "UPDATE jobs SET status='running', runner=?, host=?, pid=?, claimed_at=?, heartbeat=?,"
                    " token=?, attempts=attempts+1 WHERE key=?",
                    (runner, socket.gethostname(), os.getpid(), now, now, token, row["key"]),
                )
                claimed = _decode(row)
                claimed["resumed"] = row["status"] == "running"
                claimed["token"] = token
                return claimed
        return None

    def heartbeat(self, key: str, runner: str) -> bool:
        with self._write() as db:
            cur = db.execute(
                "UPDATE jobs SET heartbeat=? WHERE key=? AND runner=? AND status='running'",
                (time.time(), key, runner),
            )
            return cur.rowcount == 1

    def release(self, key: str, runner: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET heartbeat=0 WHERE key=? AND runner=? AND status='running'", (key, runner)
            )

    def finish(
        self, key: str, runner: str, metrics: dict[str, Any], seconds: dict[str, float], info: dict[str, Any]
    ) -> bool:
        with self._write() as db:
            cur = db.execute(
                "UPDATE jobs SET status='done', metrics=?, seconds=?, info=?, error=NULL, finished_at=?"
                " WHERE key=? AND runner=? AND status='running'",
                (json.dumps(metrics), json.dumps(seconds), json.dumps(info), time.time(), key, runner),
            )
            return cur.rowcount == 1

    def fail(self, key: str, runner: str, error: str) -> bool:
        with self._write() as db:
            cur = db.execute(
                "UPDATE jobs SET status='failed', error=?, finished_at=? WHERE key=? AND runner=?"
                " AND status='running'",
                (error, time.time(), key, runner),
            )
            return cur.rowcount == 1

    def counts(self, keys: list[str]) -> dict[str, int]:
        wanted = set(keys)
        out = dict.fromkeys(STATUSES, 0)
        with self._lock:
            found = self._db.execute("SELECT key, status FROM jobs").fetchall()
        for r in found:
            if r["key"] in wanted:
                out[r["status"]] += 1
        return out

    def rows(self, keys: list[str] | None = None) -> list[dict[str, Any]]:
        wanted = set(keys) if keys is not None else None
        with self._lock:
            found = self._db.execute("SELECT * FROM jobs ORDER BY ord").fetchall()
        return [_decode(r) for r in found if wanted is None or r["key"] in wanted]


def _describes(result: dict[str, Any], job: dict[str, Any]) -> bool:
    """Whether a stored result belongs to a job as defined now: the same settings hash, or equivalent
    settings (results and jobs stored by an older sslseg carry no identity and must match by hash)."""
    if result.get("config_hash") == job["config_hash"]:
        return True
    if not result.get("identity") or not job.get("identity"):
        return False
    return not differences(Identity.from_json(result["identity"]), Identity.from_json(job["identity"]))


def _file_name(key: str) -> str:
    """A job key (`dataset/pretraining/state/fraction/seed`) as one file name, reversibly."""
    return quote(key, safe="")


class FileStore(JobStore):
    """A results store made of files, safe on a network filesystem shared by many machines.

    `jobs/<key>.json` holds each job's definition (written by `sync`), `results/<key>.json` its result (done
    or failed, written atomically by the runner that owns it), and `claims/<key>.<n>` the n-th claim on it,
    which the owner's heartbeat touches. The owner of a job is the runner that created its highest claim:
    taking over a dead runner's claim n means creating claim n+1, and as only one runner can create a given
    name, two runners that both find claim n stale never both proceed, and the old owner learns it lost the
    job (claim n+1 exists) at its next heartbeat or when it tries to store a result. Claims stay after a job
    finishes — a runner whose directory listing is out of date (NFS caches them for up to a minute) then
    cannot start the job afresh, because claim 1 exists — except that `reset_failed` removes a failed job's.

    Status comes from the files alone: a result for the job's current config hash is `done` or `failed`,
    else a claim for the current config is `running`, else the job is `pending`.
    """

    def __init__(self, folder: str | Path, stale_after: float = 600.0, create: bool = True) -> None:
        self.root = Path(folder)
        self.stale_after = stale_after
        self.jobs_dir = self.root / "jobs"
        self.claims_dir = self.root / "claims"
        self.results_dir = self.root / "results"
        if create:
            for d in (self.jobs_dir, self.claims_dir, self.results_dir):
                d.mkdir(parents=True, exist_ok=True)
        elif not self.jobs_dir.is_dir():
            raise DataError(self.root, "not a study's file store (it has no jobs/ folder)")
        self._held: dict[str, int] = {}  # key → the claim number this process holds on it
        self._cache: dict[str, tuple[tuple[int, int, int], dict[str, Any]]] = {}
        self._clock: Path | None = None

    # ------------------------------------------------------------------------------------------ reading
    def _load(self, path: Path) -> dict[str, Any] | None:
        """A JSON record, or None when it is gone (a reset removed it between listing and reading)."""
        try:
            return json.loads(path.read_text())
        except FileNotFoundError:
            return None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(path, f"not a readable study record ({e}); delete it to redo its job") from None

    def _records(self, folder: Path) -> dict[str, dict[str, Any]]:
        """Every record in `folder` by job key; files unchanged since the last look are not read again."""
        out: dict[str, dict[str, Any]] = {}
        try:
            entries = list(os.scandir(folder))
        except FileNotFoundError:
            return out
        for entry in entries:
            if entry.name.startswith(".") or not entry.name.endswith(".json"):
                continue  # temporary files of atomic writes
            try:
                st = entry.stat()
            except FileNotFoundError:
                continue
            signature = (st.st_ino, st.st_mtime_ns, st.st_size)  # an atomic replace changes the inode
            cached = self._cache.get(entry.path)
            if cached is not None and cached[0] == signature:
                record = cached[1]
            else:
                loaded = self._load(Path(entry.path))
                if loaded is None:
                    continue
                record = loaded
                self._cache[entry.path] = (signature, record)
            out[record["key"]] = record
        return out

    def _results(self, jobs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
        """Results that describe their job as it is defined now: made with the same settings, or with
        equivalent ones (`sslseg.study.identity`); another result is an earlier version's, to be redone."""
        return {
            k: r for k, r in self._records(self.results_dir).items() if k in jobs and _describes(r, jobs[k])
        }

    def _claims(self) -> dict[str, int]:
        """The highest claim number of every claimed job."""
        out: dict[str, int] = {}
        try:
            names = os.listdir(self.claims_dir)
        except FileNotFoundError:
            return out
        for name in names:
            stem, _, number = name.rpartition(".")
            if name.startswith(".") or not number.isdigit():
                continue
            key = unquote(stem)
            out[key] = max(out.get(key, 0), int(number))
        return out

    def _claim_path(self, key: str, number: int) -> Path:
        return self.claims_dir / f"{_file_name(key)}.{number}"

    def _claim_info(self, path: Path) -> dict[str, Any] | None:
        """What a claim says (runner, host, pid, config hash); None when it is gone, {} when it is still
        being written (only where the O_EXCL fallback of `_create_claim` is in use)."""
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        try:
            return json.loads(text)
        except json.JSONDecodeError:
            return {}

    def _now(self) -> float:
        """The file server's clock: claims age by mtimes that the server sets, so they are compared with a
        time the server set too (the runners' own clocks may be minutes off from it)."""
        if self._clock is None:
            tag = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(3)}"
            self._clock = self.claims_dir / f".clock-{tag}"
            self._clock.touch()
        os.utime(self._clock)  # "now" as the server sees it (NFS sends SET_TO_SERVER_TIME)
        return os.stat(self._clock).st_mtime

    def _stale(self, path: Path, claim: dict[str, Any], now: float) -> bool | None:
        """Whether a claim may be taken over (None: it is gone): its runner's process is gone, or it was not
        touched for `stale_after` seconds, whatever version of sslseg made it."""
        try:
            mtime = os.stat(path).st_mtime
        except FileNotFoundError:
            return None
        pid = claim.get("pid")
        if claim.get("host") == socket.gethostname() and pid and not _pid_alive(pid):
            return True  # its process is gone (only knowable on its own host)
        return now - mtime > self.stale_after

    # ------------------------------------------------------------------------------------------ writing
    def _create_claim(self, key: str, number: int, content: dict[str, Any]) -> bool:
        """Create claim `number` on `key` unless it exists; True for the one runner that creates it.

        The claim is written in full under a unique temporary name, then hard-linked to its name: link()
        fails when the name exists and is one operation on the file server, so it is exclusive on NFS too
        (O_CREAT|O_EXCL is not on NFSv2 or old clients; open(2) recommends this instead), and no reader sees
        a half-written claim. When link() reports an error, possibly because a retransmitted request found
        our own link, the temporary file's link count tells whether the link was made (2) or not (1)."""
        target = self._claim_path(key, number)
        tmp = self.claims_dir / f".{target.name}.{secrets.token_hex(6)}.tmp"
        tmp.write_text(json.dumps(content))
        try:
            os.link(tmp, target)
            return True
        except FileExistsError:
            return os.stat(tmp).st_nlink == 2
        except OSError as e:
            if e.errno in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.ENOSYS):
                return self._create_exclusive(target, content)  # a filesystem without hard links
            if os.stat(tmp).st_nlink == 2:
                return True
            raise
        finally:
            tmp.unlink(missing_ok=True)

    @staticmethod
    def _create_exclusive(target: Path, content: dict[str, Any]) -> bool:
        try:
            fd = os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666)
        except FileExistsError:
            return False
        with os.fdopen(fd, "w") as fh:
            fh.write(json.dumps(content))
            fh.flush()
            os.fsync(fh.fileno())
        return True

    def _owns(self, key: str, runner: str) -> bool:
        number = self._held.get(key)
        if number is None:
            return False
        claim = self._claim_info(self._claim_path(key, number))
        if not claim or claim.get("runner") != runner:
            return False  # reset, or (O_EXCL fallback) someone else's claim of that number
        return not self._claim_path(key, number + 1).exists()  # taken over?

    def _result_record(
        self, job: dict[str, Any], claim: dict[str, Any], attempts: int, **result: Any
    ) -> dict[str, Any]:
        return {
            "key": job["key"],
            "config_hash": job["config_hash"],
            "identity": job.get("identity"),
            "runner": claim.get("runner"),
            "host": claim.get("host"),
            "pid": claim.get("pid"),
            "claimed_at": claim.get("claimed_at"),
            "token": claim.get("token"),
            "attempts": attempts,
            "finished_at": time.time(),
            "metrics": None,
            "seconds": None,
            "info": None,
            "error": None,
            **result,
        }

    def _write_result(self, job: dict[str, Any], claim: dict[str, Any], attempts: int, **result: Any) -> None:
        write_json(self._result_path(job["key"]), self._result_record(job, claim, attempts, **result))

    def _result_path(self, key: str) -> Path:
        return self.results_dir / f"{_file_name(key)}.json"

    @staticmethod
    def _final(claim: dict[str, Any] | None) -> bool:
        """Whether a claim file is a job's final record: the result its owner stored in place of the next
        claim (see `_store`)."""
        return bool(claim) and claim.get("status") in ("done", "failed")

    def _live_claim(self, key: str, number: int) -> tuple[Path, dict[str, Any]] | None:
        """The highest claim on a job if it is a runner's claim (not gone, not a final record)."""
        if not number:
            return None
        path = self._claim_path(key, number)
        held = self._claim_info(path)
        return None if held is None or self._final(held) else (path, held)

    def _repair_result(self, job: dict[str, Any], number: int) -> dict[str, Any] | None:
        """A result stored as the final claim whose copy in results/ is missing (its runner died between the
        two writes): copied there now and returned."""
        held = self._claim_info(self._claim_path(job["key"], number)) if number else None
        if not self._final(held):
            return None
        assert held is not None
        if _describes(held, job):
            write_json(self._result_path(job["key"]), held)
            return held
        return None

    # --------------------------------------------------------------------------------------- interface
    def sync(self, jobs: list[Job], rerun_changed: bool = False) -> SyncReport:
        report = SyncReport()
        known = self._records(self.jobs_dir)
        results = self._records(self.results_dir)
        claims = self._claims()
        identities = legacy_identities(list(known.values()))
        now: float | None = None
        for job in jobs:
            record = job_record(job)
            old = known.get(job.key)
            path = self.jobs_dir / f"{_file_name(job.key)}.json"
            if old is None:
                write_json(path, record)
                report.added += 1
                continue
            changed = differences(identities[job.key], job.identity)
            result = results.get(job.key)
            done = result is not None and _describes(result, old) and result.get("status") == "done"
            running = None
            if result is None or not _describes(result, old):
                live = self._live_claim(job.key, claims.get(job.key, 0))
                if live is not None:
                    now = self._now() if now is None else now
                    running = not self._stale(live[0], live[1], now)
            if running and (changed or old["config_hash"] != job.hash):
                if changed:  # it runs the settings it was claimed with; the next sync judges its result
                    report.changed[job.key] = changed
                continue
            if not changed:
                if old["config_hash"] != job.hash:
                    report.adopted += 1
                if old != json.loads(json.dumps(record, default=str)):
                    write_json(path, record)
                if result is not None and _describes(result, old) and not _describes(result, record):
                    # a result stored without identity (an older sslseg) follows its job's new definition
                    write_json(
                        self._result_path(job.key),
                        {**result, "config_hash": job.hash, "identity": record["identity"]},
                    )
            elif not done:
                report.updated += 1
                write_json(path, record)  # a failed result of the old settings no longer describes it
            elif not rerun_changed:
                report.changed[job.key] = changed
                if old.get("changed") != changed or old["ord"] != job.order:
                    write_json(path, {**old, "ord": job.order, "changed": changed})
            else:
                assert result is not None
                moved_to = aside_path(self.root.parent, job.key, old["config_hash"])
                aside = self.root / SUPERSEDED_DIR / f"{moved_to.name}.json"
                entry = {
                    **result,
                    "config": old["config"],
                    "identity": identities[job.key].to_json(),
                    "changed": changed,
                    "folder": job.config["output"],
                    "moved_to": str(moved_to),
                    "superseded_at": time.time(),
                }
                aside.parent.mkdir(parents=True, exist_ok=True)
                write_json(aside, entry)  # first: the old result is kept before anything else changes
                write_json(path, record)
                self._result_path(job.key).unlink(missing_ok=True)
                report.moved_aside(job, moved_to, changed)
        return report

    def superseded(self) -> list[dict[str, Any]]:
        entries = []
        folder = self.root / SUPERSEDED_DIR
        for path in sorted(folder.glob("*.json")) if folder.is_dir() else []:
            entry = self._load(path)
            if entry is not None:
                entries.append(entry)
        return sorted(entries, key=lambda e: e.get("superseded_at") or 0)

    def reset_failed(self, keys: list[str] | None = None) -> int:
        jobs = self._records(self.jobs_dir)
        wanted = set(keys) if keys is not None else set(jobs)
        claims = self._claims()
        reset = 0
        for key, result in self._results(jobs).items():
            if key not in wanted or result["status"] != "failed":
                continue
            self._result_path(key).unlink(missing_ok=True)
            # its claims would read as a live runner until stale, and its final record as its result; a
            # claim made since (a number above those) belongs to a runner that already took the job again
            last = result["attempts"] + (
                1 if self._final(self._claim_info(self._claim_path(key, result["attempts"] + 1))) else 0
            )
            for number in range(1, min(claims.get(key, 0), last) + 1):
                self._claim_path(key, number).unlink(missing_ok=True)
            reset += 1
        return reset

    def claim(self, runner: str, keys: list[str]) -> dict[str, Any] | None:
        jobs = self._records(self.jobs_dir)
        results = self._results(jobs)
        claims = self._claims()
        now: float | None = None
        for key in sorted((k for k in set(keys) if k in jobs), key=lambda k: jobs[k]["ord"]):
            job = jobs[key]
            if key in results:
                continue
            number = claims.get(key, 0)
            resumed = False
            if number:
                path = self._claim_path(key, number)
                held = self._claim_info(path)
                if held is None:
                    continue  # reset this instant: look again at the next pass
                if self._final(held):
                    if self._repair_result(job, number) is not None:
                        continue  # finished: its runner died before copying its result
                    # a final record of an earlier version of the job: the next claim redoes it
                else:
                    now = self._now() if now is None else now
                    if not self._stale(path, held, now):
                        continue
                    # a dead runner's folder is resumed only if it ran these very settings
                    resumed = held.get("config_hash") == job["config_hash"]
            dep = job["depends_on"]
            dep_status = results[dep]["status"] if dep in results else None
            if dep and dep_status == "failed":
                self._write_result(job, {}, number, status="failed", error=f"its pretraining {dep} failed")
                continue
            if dep and dep_status != "done":
                continue
            claim = {
                "key": key,
                "runner": runner,
                "host": socket.gethostname(),
                "pid": os.getpid(),
                "claimed_at": time.time(),
                "config_hash": job["config_hash"],
                "token": secrets.token_hex(8),
            }
            if not self._create_claim(key, number + 1, claim):
                continue  # another runner was first
            self._held[key] = number + 1
            finished = self._load(self._result_path(key))
            if finished is not None and _describes(finished, job):
                del self._held[key]  # its owner stored the result while we judged its claim stale
                continue
            row = self._row(job, None, None)
            row.update(status="running", runner=runner, attempts=number + 1, resumed=resumed)
            row.update(
                host=claim["host"], pid=claim["pid"], claimed_at=claim["claimed_at"], token=claim["token"]
            )
            return row
        return None

    def heartbeat(self, key: str, runner: str) -> bool:
        if not self._owns(key, runner):
            return False
        try:
            os.utime(self._claim_path(key, self._held[key]))
        except (FileNotFoundError, KeyError):
            return False
        return True

    def release(self, key: str, runner: str) -> None:
        if self._owns(key, runner):
            with contextlib.suppress(FileNotFoundError):
                os.utime(self._claim_path(key, self._held.pop(key)), (0, 0))  # as old as a claim gets

    def _store(self, key: str, runner: str, **result: Any) -> bool:
        """Store a result by compare-and-set on the claim: the owner of claim n writes its result as claim
        n+1, the very name a runner taking the job over would have to create, so exactly one of the two
        succeeds; then copies it to results/ for readers (`claim` repairs a copy cut off by a kill)."""
        if not self._owns(key, runner):
            return False
        number = self._held.pop(key)
        job = self._records(self.jobs_dir).get(key)
        claim = self._claim_info(self._claim_path(key, number))
        if job is None or not claim:
            return False
        record = self._result_record(job, claim, number, **result)
        record["config_hash"] = claim.get("config_hash", job["config_hash"])  # the settings it ran
        if not self._create_claim(key, number + 1, record):
            return False  # taken over: the other runner's claim holds that name
        write_json(self._result_path(key), record)
        return True

    def finish(
        self, key: str, runner: str, metrics: dict[str, Any], seconds: dict[str, float], info: dict[str, Any]
    ) -> bool:
        return self._store(key, runner, status="done", metrics=metrics, seconds=seconds, info=info)

    def fail(self, key: str, runner: str, error: str) -> bool:
        return self._store(key, runner, status="failed", error=error)

    def _row(
        self, job: dict[str, Any], result: dict[str, Any] | None, claim: tuple[Path, dict] | None
    ) -> dict[str, Any]:
        row: dict[str, Any] = dict.fromkeys(ROW_FIELDS)
        row.update({k: v for k, v in job.items() if k in ROW_FIELDS}, status="pending", attempts=0)
        if result is not None:
            row.update({k: v for k, v in result.items() if k in ROW_FIELDS and k not in job})
            row["status"] = result["status"]
        elif claim is not None:
            path, held = claim
            row.update(
                {k: held.get(k) for k in ("runner", "host", "pid", "claimed_at", "token")}, status="running"
            )
            try:
                row["heartbeat"] = os.stat(path).st_mtime
            except FileNotFoundError:
                row["status"] = "pending"
        return row

    def rows(self, keys: list[str] | None = None) -> list[dict[str, Any]]:
        jobs = self._records(self.jobs_dir)
        results = self._results(jobs)
        claims = self._claims()
        wanted = set(keys) if keys is not None else None
        out = []
        for job in sorted(jobs.values(), key=lambda j: j["ord"]):
            key = job["key"]
            if wanted is not None and key not in wanted:
                continue
            claim = None
            result = results.get(key)
            if result is None and key in claims:
                held = self._claim_info(self._claim_path(key, claims[key]))
                if self._final(held) and _describes(held, job):  # stored, not yet copied to results/
                    result = held
                else:
                    claim = self._live_claim(key, claims[key])
            row = self._row(job, result, claim)
            if key not in results:
                row["attempts"] = claims.get(key, 0)
            out.append(row)
        return out

    def close(self) -> None:
        if self._clock is not None:
            self._clock.unlink(missing_ok=True)
            self._clock = None


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
