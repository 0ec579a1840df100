"""Figures of the study report as embeddable PNGs, in a module of their own so that the report and the
representation analysis, which both draw, need not import each other."""

from __future__ import annotations

import base64
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # no display on clusters and CI
import matplotlib.pyplot as plt  # noqa: E402


def png_base64(fig: plt.Figure) -> str:
    """A figure as a base64 PNG (closed afterwards, so a long report does not hold every figure)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return base64.b64encode(buf.getvalue()).decode()


def file_base64(path: Path) -> str:
    """A PNG file as base64, to embed beside the drawn figures (e.g. a proposal's contact sheet)."""
    return base64.b64encode(path.read_bytes()).decode()
