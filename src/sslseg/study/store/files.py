"""The `files` backend: `FileStore`, one small file per job, claim and result, for a study folder on a
shared network filesystem used by many machines at once (no lock, no server; see FileStore)."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import secrets
import socket
import time
from pathlib import Path
from typing import Any
from urllib.parse import unquote

from sslseg.atomic import write_json
from sslseg.errors import DataError
from sslseg.study.identity import Identity, differences
from sslseg.study.spec import Job
from sslseg.study.store.base import (
    SUPERSEDED_DIR,
    JobStore,
    SyncReport,
    aside_path,
    file_name,
    job_record,
    legacy_identities,
    pid_alive,
)
from sslseg.study.store.rows import ROW_FIELDS


def _describes(result: dict[str, Any], job: dict[str, Any]) -> bool:
    """Whether a stored result belongs to a job as defined now: the same settings hash, or equivalent
    settings (results and jobs stored by an older sslseg carry no identity and must match by hash)."""
    if result.get("config_hash") == job["config_hash"]:
        return True
    if not result.get("identity") or not job.get("identity"):
        return False
    return not differences(Identity.from_json(result["identity"]), Identity.from_json(job["identity"]))


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
        return self.claims_dir / f"{file_name(key)}.{number}"

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
        if claim.get("host") == socket.gethostname() and pid and not pid_alive(pid):
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
        return self.results_dir / f"{file_name(key)}.json"

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
            path = self.jobs_dir / f"{file_name(job.key)}.json"
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
