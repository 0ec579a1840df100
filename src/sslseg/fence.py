"""Fencing of a job's folder on a shared filesystem: the runner that holds a job's claim writes the claim's
token into the folder (`.claim`), and every atomic write made while it runs the job first checks that the
token is still its own. A runner that lost its claim — another one took the job over after its heartbeat
went stale, and wrote its own token — therefore stops at its next checkpoint instead of writing into a folder
that now belongs to someone else."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sslseg.errors import SslsegError

FENCE_FILE = ".claim"


class ClaimLost(SslsegError):
    """The job's claim now belongs to another runner: this one must stop writing and drop the job."""


class Fence:
    """A claim's token on a job folder; `lost` is set by the runner's heartbeat when the store says so."""

    def __init__(self, folder: str | Path, token: str) -> None:
        self.folder = Path(folder)
        self.token = token
        self.lost = threading.Event()

    @property
    def path(self) -> Path:
        return self.folder / FENCE_FILE

    def holder(self) -> str | None:
        """The token written in the folder now (None when there is none)."""
        try:
            return self.path.read_text().strip()
        except FileNotFoundError:
            return None

    def check(self) -> None:
        """Raise ClaimLost unless this runner still holds the job."""
        if self.lost.is_set():
            raise ClaimLost(f"{self.folder}: the claim on this job was lost (its heartbeat went stale)")
        holder = self.holder()
        if holder != self.token:
            raise ClaimLost(f"{self.folder}: another runner took this job over (claim {holder}); stopping")


_active: Fence | None = None


@contextmanager
def fenced(fence: Fence) -> Iterator[Fence]:
    """Write the fence's token into its folder and check it before every atomic write until the block ends."""
    global _active
    fence.folder.mkdir(parents=True, exist_ok=True)
    tmp = fence.path.with_name(f"{FENCE_FILE}.{fence.token}.tmp")
    tmp.write_text(fence.token)
    os.replace(
        tmp, fence.path
    )  # whole or not at all (sslseg.atomic checks the fence, so it is not used here)
    _active = fence
    try:
        yield fence
    finally:
        _active = None


def check_fence() -> None:
    """Called before each atomic write: raises ClaimLost when the job being run belongs to another runner."""
    if _active is not None:
        _active.check()
