"""The proposals of the study rows that choose their annotated images (`selection:`): one per dataset and
budget, from the dataset's labelled images outside the test split, their labels never read.

The study plan writes each row's recipe (`request.json`, beside its budgets' folders) and makes the
proposals at once where their features exist (image descriptors, random or ImageNet features, a weights
file), for every row or, in a run of some cells only, for the rows among them. Features that name one of
the study's own pretrainings exist only once it has run, so the first cell of that row makes them (its
pretraining is done before any of its cells is claimed). The features are computed once for all of a
row's budgets, and every proposal goes into a temporary folder renamed into place, so that a runner never
reads half a proposal and two runners making one keep the first.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import uuid
from dataclasses import replace
from pathlib import Path

from sslseg.atomic import write_json
from sslseg.data.layouts import find_samples
from sslseg.study.spec import Job, StudyConfig, chooser_of, split_path

REQUEST = "request.json"  # a selection row's recipe, in its folder beside the budgets' n<N>/ folders


def plan_proposals(study: StudyConfig, jobs: list[Job], wanted: set[str] | None = None) -> list[Path]:
    """Write the recipe of every selection row on every dataset and make the proposals whose features
    exist, of every row or (`wanted`: the job keys a runner will work on) of the rows with a wanted cell,
    so that a run of other rows does not wait on choices it never uses; returns the proposals made now."""
    by_key = {j.key: j for j in jobs}
    made = []
    for ds in study.datasets:
        for p in study.pretrainings:
            if p.selection is None:
                continue
            cells = [
                j for j in jobs if j.kind == "finetune" and j.dataset == ds.name and j.pretraining == p.name
            ]
            if not cells:
                continue
            targets = {str(j.labelled_images): j.config["data"]["labelled_list"] for j in cells}
            folder = Path(next(iter(targets.values()))).parent.parent  # the row's, beside its n<N>/ folders
            chooser = by_key[cells[0].depends_on] if chooser_of(study, p) and cells[0].depends_on else None
            features = chooser.config["output"] if chooser is not None else p.selection.features
            request = {
                "dataset": ds.name,
                "train": str(ds.train),
                "layout": ds.layout,
                "mask_suffix": ds.mask_suffix,
                "max_images": ds.max_images,
                "split_file": str(split_path(study, ds)),
                "budget_may_validate": ds.validation == "budget",
                "heldout": [str(ds.test)] if ds.test is not None else [],
                "strategy": p.selection.strategy,
                "features": str(features),
                "encoder": p.selection.encoder or study.encoder,
                "targets": targets,
            }
            folder.mkdir(parents=True, exist_ok=True)
            write_json(folder / REQUEST, request)  # every runner writes the same recipe
            if wanted is not None and not any(j.key in wanted for j in cells):
                continue  # its cells make them when they run (`ensure_proposal`)
            if chooser is None or _pretrained(chooser):
                made += make_proposals(folder)
    return made


def ensure_proposal(labelled_list: str | Path) -> None:
    """Before a cell trains on a chosen budget: make its row's proposals if they are not there yet (features
    from a pretraining that has finished since the plan). A list that is no study proposal is left alone."""
    path = Path(labelled_list)
    if not path.is_file() and (path.parent.parent / REQUEST).is_file():
        make_proposals(path.parent.parent)


def make_proposals(folder: Path) -> list[Path]:
    """Make the proposals of one recipe that do not exist yet, the features computed once for all its
    budgets; returns those made."""
    from sslseg.data.splits import load_split
    from sslseg.select import select

    request = json.loads((folder / REQUEST).read_text())
    targets = {int(b): Path(t) for b, t in request["targets"].items() if not Path(t).is_file()}
    targets = dict(sorted(targets.items()))  # smallest budget first (the recipe's keys are text)
    if not targets:
        return []
    samples = find_samples(
        request["train"], layout=request["layout"], mask_suffix=request["mask_suffix"], allow_unlabeled=True
    )
    if request["max_images"]:
        samples = samples[: request["max_images"]]
    split = load_split(Path(request["split_file"]), [s.id for s in samples])
    # the images a budget may hold (protocol `budget`: train and val of the split; `fixed`: train)
    allowed = set(split["train"]) | (set(split["val"]) if request["budget_may_validate"] else set())
    pool = [replace(s, label=None) for s in samples if s.id in allowed and s.label is not None]
    tmps = {b: t.parent.with_name(f".{t.parent.name}.{uuid.uuid4().hex[:8]}") for b, t in targets.items()}
    print(
        f"choosing {', '.join(map(str, targets))} images of {request['dataset']} by {folder.name}",
        file=sys.stderr,
        flush=True,
    )
    first, *rest = targets
    select(
        pool,
        first,
        tmps[first],
        strategy=request["strategy"],
        features=request["features"],
        encoder=request["encoder"],
        heldout=request["heldout"],
        seed=0,
        progress=False,
        also={b: tmps[b] for b in rest},
    )
    made = []
    for b, target in targets.items():
        try:
            os.rename(tmps[b], target.parent)
        except OSError:  # another runner made it first: keep that one
            shutil.rmtree(tmps[b], ignore_errors=True)
        made.append(target)
    return made


def _pretrained(job: Job) -> bool:
    """Whether a pretraining job has written its encoder (the last thing it writes, with its result)."""
    out = Path(job.config["output"])
    return (out / "encoder.safetensors").is_file() and (out / "result.json").is_file()
