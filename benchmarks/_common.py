"""Shared bits of the benchmark scripts: locating real data, printing JSON lines, describing the machine."""

from __future__ import annotations

import json
import os
import platform
import sys
import time
from collections.abc import Iterable
from typing import Any

import lightning as L
import torch

from sslseg.data.io import read_image
from sslseg.data.layouts.base import Sample
from sslseg.data.locations import real_dataset
from sslseg.data.normalize import effective_channels


def require(*parts: str):
    """The dataset folder, or exit with a clear message when the real data is not available."""
    path = real_dataset(*parts)
    if path is None:
        sys.exit(f"real dataset {'/'.join(parts)} not found; set SSLSEG_DATA to the folder holding it")
    return path


def colour_or_gray(samples: Iterable[Sample]) -> dict[str, str]:
    """Each image's kind by its effective channels: "colour" (stained: H&E, brightfield) or "gray"
    (fluorescence), to report a mixed dataset's scores per kind."""
    return {s.id: "colour" if effective_channels(read_image(s.image)) >= 3 else "gray" for s in samples}


def means_by_kind(
    rows: Iterable[tuple[str, dict[str, float]]], kind: dict[str, str], metrics: Iterable[str]
) -> dict[str, dict[str, float]]:
    """Per kind of image ("gray", "colour": `colour_or_gray`), the number of images and the mean of each metric
    over them, from (image id, scores) rows: a mixed test set's figures per modality."""
    metrics = tuple(metrics)
    groups: dict[str, list[dict[str, float]]] = {}
    for image_id, scores in rows:
        groups.setdefault(kind[image_id], []).append(scores)
    return {
        k: {"n": len(g), **{m: round(sum(float(r[m]) for r in g) / len(g), 4) for m in metrics}}
        for k, g in sorted(groups.items())
    }


def hardware() -> str:
    """A one-line description of where the figures were measured."""
    if torch.cuda.is_available():
        return f"GPU {torch.cuda.get_device_name(0)}"
    return (
        f"CPU {platform.processor() or platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__}"
    )


def emit(**fields: Any) -> None:
    """Print one JSON line (flushed, so progress is visible when piped)."""
    print(json.dumps(fields, default=str), flush=True)


def emit_scores(
    benchmark: str,
    scores: dict[str, float],
    metrics: tuple[str, ...],
    bar: dict[str, float],
    published: dict[str, str],
) -> None:
    """One JSON line per metric: the value beside its bar (and whether it is met) and published figures."""
    for metric in metrics:
        emit(
            benchmark=benchmark,
            metric=metric,
            value=round(scores[metric], 4),
            bar=bar.get(metric),
            passes=scores[metric] >= bar[metric] if metric in bar else None,
            published=published.get(metric),
        )


class StepTimer(L.Callback):
    """Wall-clock time of each training step (batch fetch + views + forward/backward/step)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_batch_end(self, *args: object) -> None:
        if torch.cuda.is_available():  # GPU work is queued: wait for the step to finish
            torch.cuda.synchronize()
        self.stamps.append(time.perf_counter())
