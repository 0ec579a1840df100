"""The `sqlite` backend: `ResultStore`, one SQLite file per study whose write transactions make claims
atomic — for a study on one machine (SQLite's locking is unreliable on network filesystems)."""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from sslseg.errors import DataError
from sslseg.study.identity import differences
from sslseg.study.spec import Job
from sslseg.study.store.base import (
    JobStore,
    SyncReport,
    aside_path,
    job_record,
    legacy_identities,
    pid_alive,
)
from sslseg.study.store.rows import STATUSES

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
        if row["host"] == socket.gethostname() and row["pid"] and not pid_alive(row["pid"]):
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
