"""Chosen images against random draws: for each study row that selects its annotated images (`selection:`),
at each budget, its scores over training seeds beside the random-init row's, whose every seed is another
random draw of images — the distribution a user who annotates at random gets one sample of."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from sslseg.study.analyze import cell_budget
from sslseg.study.spec import BASELINE, StudyConfig, report_cell
from sslseg.study.stats import mann_whitney_greater, mean_ci, welch_greater
from sslseg.study.store import JobRow


@dataclass(frozen=True)
class AgainstDraws:
    """One selection row at one budget against the random draws of the baseline row."""

    dataset: str
    row: str
    selection: str
    budget: int
    metric: str
    scores: list[float]  # the chosen images, one score per training seed
    draws: list[float]  # random init on random draws, one per seed
    draws_ci: tuple[float, float, float]  # mean and confidence interval of the draws
    welch_p: float  # one-sided: the chosen images score higher
    mann_whitney_p: float
    share_beaten: float  # of the draws, the share below the chosen images' mean
    worst_at_median: bool  # the chosen images' worst seed is at or above the draws' median
    contact_sheet: Path | None

    @property
    def mean(self) -> float:
        return float(np.mean(self.scores))


def selection_against_draws(
    study: StudyConfig, rows: list[JobRow], confidence: float = 0.95
) -> list[AgainstDraws]:
    """Every selection row at every budget where both it and the random row have finished cells."""
    from sslseg.segmentation.tasks import task_named  # torch: only when analysing

    state = report_cell(study)[0]
    out = []
    for ds in study.datasets:
        metric = task_named(ds.task).primary_metric
        done = [r for r in rows if r.kind == "finetune" and r.dataset == ds.name and r.status == "done"]
        done = [r for r in done if r.state == state and r.metrics and metric in r.metrics]
        for p in study.pretrainings:
            if p.selection is None:
                continue
            for budget in study.budgets:
                at = [r for r in done if cell_budget(study, r) == budget]
                chosen = [r for r in at if r.pretraining == p.name]
                mine = [float(r.metrics[metric]) for r in chosen]  # type: ignore[index]
                draws = [float(r.metrics[metric]) for r in at if r.pretraining == BASELINE]  # type: ignore[index]
                if not mine or not draws:
                    continue
                # the proposal the cells trained on (its folder may name the pretraining that chose it)
                listed = (chosen[0].config or {}).get("data", {}).get("labelled_list")
                sheet = Path(listed).parent / "contact_sheet.png" if listed else None
                out.append(
                    AgainstDraws(
                        dataset=ds.name,
                        row=p.name,
                        selection=p.selection.tag,
                        budget=int(budget),
                        metric=metric,
                        scores=mine,
                        draws=draws,
                        draws_ci=mean_ci(draws, confidence),
                        welch_p=welch_greater(mine, draws),
                        mann_whitney_p=mann_whitney_greater(mine, draws),
                        share_beaten=float(np.mean(np.array(draws) < np.mean(mine))),
                        worst_at_median=min(mine) >= float(np.median(draws)),
                        contact_sheet=sheet if sheet is not None and sheet.is_file() else None,
                    )
                )
    return out
