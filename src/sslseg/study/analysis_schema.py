"""The typed schema of the analysis: `analyze` writes it as plain JSON (analysis.json); the report reads it
through these classes, so a misspelt or missing field fails at one place instead of as a KeyError deep in a table.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class PairedTest:
    """One pretraining against random init (on the integral or at one budget); p-values one-sided."""

    n_pairs: int | None = None
    difference_mean: float | None = None
    difference_ci: list[float | None] | None = None
    paired_t_p: float | None = None
    paired_t_p_holm: float | None = None
    wilcoxon_p: float | None = None
    wilcoxon_p_holm: float | None = None
    welch_p: float | None = None  # the unpaired checks: on the integral only
    welch_p_holm: float | None = None
    permutation_p: float | None = None
    permutation_p_holm: float | None = None
    welch_difference_ci: list[float | None] | None = None
    significant: bool = False


@dataclass(frozen=True)
class Cost:
    """Compute of one pretraining: its pretraining run, its mean fine-tuning run, and the factor over random init."""

    pretrain_seconds: float | None
    finetune_seconds_mean: float | None
    factor: float | None


@dataclass(frozen=True)
class SavedClaim:
    """How far the paired tests at the smallest budget support a claim of labels saved (see `analyze._add_tests`)."""

    beats_random_at: float | None
    random_needs_more_than: float | None
    p_holm: float | None
    next_p_holm: float | None
    more_than: float | None


@dataclass(frozen=True)
class PretrainingResult:
    """One pretraining in one group: its curve over the budgets, integral, gains, tests and cost."""

    mean: list[float | None]
    ci_low: list[float | None]
    ci_high: list[float | None]
    n_seeds: list[int]
    integral_per_seed: list[float | None]
    integral_n_seeds: int
    integral_mean: float | None
    integral_ci: list[float | None]
    relative_gain: list[float | None]
    labels_saved: list[float | None]
    random_needs: list[float | None]
    cost: Cost
    labels_saved_reading: list[str] | None = None  # per budget, analyze.saved_reading
    # the comparisons with random init: none for random init itself, and no budget tests without it
    test: PairedTest | None = None
    budget_tests: list[PairedTest] | None = None
    labels_saved_supported: SavedClaim | None = None


@dataclass(frozen=True)
class Group:
    """One (dataset, encoder state, metric): the budget axis and every pretraining's results on it."""

    budget_key: str
    budgets: list[float]
    annotated: list[float | None]
    labels_x: list[float]
    labels_in_images: bool
    seeds: list[int]
    reference: float | None
    pretrainings: dict[str, PretrainingResult]
    baseline_rises: bool = True  # random init's mean rises with every budget (see `analyze.baseline_rises`)


@dataclass(frozen=True)
class BudgetAxis:
    """A dataset's budgets and the annotated images of each (see `analyze.annotated_counts`)."""

    budget_key: str
    budgets: list[float]
    annotated: list[float | None]
    counted: bool
    consistent: bool
    validation: str


@dataclass(frozen=True)
class Reference:
    """The score an integral is divided by, and where it came from."""

    score: float | None
    source: str


@dataclass(frozen=True)
class Verdict:
    """The answer for one dataset (see `verdict.verdict`)."""

    text: str
    best: str | None
    significant: bool
    labels_saved_claim: float | None


@dataclass(frozen=True)
class DatasetAnalysis:
    """Everything analysed on one dataset; `groups` is encoder state → metric → group."""

    task: str
    primary_metric: str
    main_state: str
    budget_axis: BudgetAxis
    accounting: str
    references: dict[str, Reference]
    groups: dict[str, dict[str, Group]]
    verdict: Verdict
    failed: list[str]


@dataclass(frozen=True)
class Analysis:
    """A study's whole analysis, read from the JSON form that `analyze` returns and analysis.json holds."""

    study: str
    datasets: dict[str, DatasetAnalysis]

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Analysis:
        """The typed analysis of `analyze`'s JSON form; a field the classes do not know is an error."""
        return _typed(cls, data)


def _typed(kind: Any, value: Any) -> Any:
    """`value` (plain JSON) as `kind`: dataclasses, dict[str, X], list[X] and X | None, built recursively."""
    if value is None:
        return None
    if dataclasses.is_dataclass(kind):
        hints = typing.get_type_hints(kind)
        unknown = set(value) - set(hints)
        if unknown:
            raise ValueError(f"{kind.__name__}: unknown analysis fields {sorted(unknown)}")
        return kind(**{k: _typed(hints[k], v) for k, v in value.items()})
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin is dict:
        return {k: _typed(args[1], v) for k, v in value.items()}
    if origin is list:
        return [_typed(args[0], v) for v in value]
    if origin in (typing.Union, types.UnionType):
        return _typed(next(a for a in args if a is not type(None)), value)
    return value
