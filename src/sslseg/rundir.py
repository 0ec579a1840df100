"""Run folders: what a training run may find in its output folder before it starts."""

from __future__ import annotations

from pathlib import Path

from sslseg.errors import ConfigError


def prepare_run_dir(out: Path, resume: bool) -> Path:
    """Check a run folder before training: --resume needs its last checkpoint; a fresh run must not mix
    with an earlier run's checkpoints. Returns the path of the last checkpoint."""
    last = out / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise ConfigError(f"--resume: no checkpoint to resume from at {last}")
    if not resume and any((out / "checkpoints").glob("*.ckpt")):
        raise ConfigError(
            f"{out} already holds checkpoints of an earlier run: continue it with --resume, "
            "or choose another output folder (or delete this one)"
        )
    out.mkdir(parents=True, exist_ok=True)
    return last


def csv_log_version(out: Path, resume: bool) -> str:
    """Folder name under `logs/` for this run's CSV log: "" for a fresh run, and a new `resumed-N` on each
    resume, so a resumed run never overwrites the metrics logged before it was interrupted."""
    if not resume:
        return ""
    n = 1
    while (out / "logs" / f"resumed-{n}").exists():
        n += 1
    return f"resumed-{n}"
