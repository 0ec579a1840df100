"""Where the real benchmark datasets live: one setting, `SSLSEG_DATA`, defaulting to `../shared/data`."""

from __future__ import annotations

import os
from pathlib import Path

_PROJECT_ROOT = Path(__file__).resolve().parents[3]


def real_data_root() -> Path:
    """`$SSLSEG_DATA`, else `../shared/data` beside the project (also tried relative to the cwd)."""
    env = os.environ.get("SSLSEG_DATA")
    if env:
        return Path(env).expanduser()
    for base in (_PROJECT_ROOT, Path.cwd()):
        candidate = base.parent / "shared" / "data"
        if candidate.is_dir():
            return candidate
    return _PROJECT_ROOT.parent / "shared" / "data"


def real_dataset(*parts: str) -> Path | None:
    """A folder under the real-data root, or None when it is not there."""
    path = real_data_root().joinpath(*parts)
    return path if path.exists() else None
