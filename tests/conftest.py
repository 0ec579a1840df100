"""Shared test helpers: the real datasets (skipped cleanly when absent)."""

from __future__ import annotations

from pathlib import Path

import pytest

from sslseg.data.locations import real_data_root


def real_data(*parts: str) -> Path:
    """A folder of the real benchmark data, or skip the test saying where it was looked for."""
    path = real_data_root().joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not found at {path} (set SSLSEG_DATA to the shared data folder)")
    return path
