"""The results store: one SQLite row per job, claimed atomically, so any number of runners (processes,
machines sharing the folder, SLURM array tasks) can work on one study without ever running a job twice.

A job is `pending`, `running` (claimed by a runner, kept alive by its heartbeat), `done` (metrics stored)
or `failed` (error stored). A running job whose runner died — its process is gone on this host, or its
heartbeat is older than `stale_after` seconds — is claimed again; `reset_failed` gives failed jobs a new try.
"""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sslseg.errors import DataError
from sslseg.study.spec import Job

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


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class ResultStore:
    """SQLite-backed job table of one study (`results.sqlite` in the study folder)."""

    def __init__(self, path: str | Path, stale_after: float = 600.0) -> None:
        self.path = Path(path)
        self.stale_after = stale_after
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._db = sqlite3.connect(self.path, timeout=120, isolation_level=None)
            self._db.row_factory = sqlite3.Row
            self._db.execute(SCHEMA)
        except sqlite3.DatabaseError as e:
            raise DataError(self.path, f"not a readable results store: {e}") from None

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction that holds the database lock from its first statement (no lost updates)."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def sync(self, jobs: list[Job]) -> dict[str, int]:
        """Insert new jobs; a job whose config changed since it ran goes back to pending (its old result
        would no longer describe it). Jobs no longer in the study are left in the store, untouched."""
        added = changed = 0
        with self._write() as db:
            known = {r["key"]: r["config_hash"] for r in db.execute("SELECT key, config_hash FROM jobs")}
            for job in jobs:
                row = (
                    job.kind,
                    job.dataset,
                    job.pretraining,
                    job.state,
                    job.fraction,
                    job.seed,
                    job.depends_on,
                    job.order,
                    job.hash,
                    json.dumps(job.config),
                )
                if job.key not in known:
                    db.execute(
                        "INSERT INTO jobs (kind, dataset, pretraining, state, fraction, seed, depends_on, ord,"
                        " config_hash, config, key) VALUES (?,?,?,?,?,?,?,?,?,?,?)",
                        (*row, job.key),
                    )
                    added += 1
                elif known[job.key] != job.hash:
                    db.execute(
                        "UPDATE jobs SET kind=?, dataset=?, pretraining=?, state=?, fraction=?, seed=?,"
                        " depends_on=?, ord=?, config_hash=?, config=?, status='pending', metrics=NULL,"
                        " seconds=NULL, info=NULL, error=NULL, attempts=0 WHERE key=?",
                        (*row, job.key),
                    )
                    changed += 1
                else:
                    db.execute("UPDATE jobs SET ord=? WHERE key=?", (job.order, job.key))
        return {"added": added, "changed": changed}

    def reset_failed(self, keys: list[str] | None = None) -> int:
        """Give failed jobs (of this study's job list, if given) another try."""
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
        """Atomically take the first job (in study order) among `keys` that is pending, or running in a
        dead runner, and whose pretraining is done. Jobs whose pretraining failed are marked failed."""
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
                db.execute(
                    "UPDATE jobs SET status='running', runner=?, host=?, pid=?, claimed_at=?, heartbeat=?,"
                    " attempts=attempts+1 WHERE key=?",
                    (runner, socket.gethostname(), os.getpid(), now, now, row["key"]),
                )
                claimed = dict(row)
                claimed["config"] = json.loads(row["config"])
                claimed["resumed"] = row["status"] == "running"
                return claimed
        return None

    def heartbeat(self, key: str, runner: str) -> None:
        with self._write() as db:
            db.execute("UPDATE jobs SET heartbeat=? WHERE key=? AND runner=?", (time.time(), key, runner))

    def finish(
        self, key: str, runner: str, metrics: dict[str, Any], seconds: dict[str, float], info: dict[str, Any]
    ) -> bool:
        """Store a job's result, only if this runner still owns the job (never two results for one job)."""
        with self._write() as db:
            cur = db.execute(
                "UPDATE jobs SET status='done', metrics=?, seconds=?, info=?, error=NULL, finished_at=?"
                " WHERE key=? AND runner=? AND status='running'",
                (json.dumps(metrics), json.dumps(seconds), json.dumps(info), time.time(), key, runner),
            )
            return cur.rowcount == 1

    def fail(self, key: str, runner: str, error: str) -> None:
        with self._write() as db:
            db.execute(
                "UPDATE jobs SET status='failed', error=?, finished_at=? WHERE key=? AND runner=?",
                (error, time.time(), key, runner),
            )

    def counts(self, keys: list[str]) -> dict[str, int]:
        """How many of `keys` are pending, running, done and failed."""
        wanted = set(keys)
        out = {"pending": 0, "running": 0, "done": 0, "failed": 0}
        for r in self._db.execute("SELECT key, status FROM jobs"):
            if r["key"] in wanted:
                out[r["status"]] += 1
        return out

    def rows(self, keys: list[str] | None = None) -> list[dict[str, Any]]:
        """Every job as a dict, JSON columns decoded, in study order."""
        out = []
        wanted = set(keys) if keys is not None else None
        for r in self._db.execute("SELECT * FROM jobs ORDER BY ord"):
            if wanted is not None and r["key"] not in wanted:
                continue
            row = dict(r)
            for col in ("config", "metrics", "seconds", "info"):
                row[col] = json.loads(row[col]) if row[col] else None
            out.append(row)
        return out
