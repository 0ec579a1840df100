"""The row every store hands out, whichever its backend: `JobRow` (what the analysis, the report and the
benchmarks read) and its fields — its own room so that readers of results need neither backend."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

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
