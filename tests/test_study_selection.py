"""A study row can choose its annotated images with `sslseg select` (`selection:`) instead of drawing them:
one proposal per dataset and budget, computed once before the cells, the same images for every seed; a
fine-tuning run takes exactly the images of its `data.labelled_list`."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest
from conftest import finished_cell

from sslseg.config import FinetuneConfig
from sslseg.data.splits import read_labelled_list
from sslseg.data.synth import write_synthetic_dataset
from sslseg.errors import ConfigError, DataError
from sslseg.finetune import finetune
from sslseg.study.runner import prepare
from sslseg.study.spec import StudyConfig


def _study(data: Path, out: Path, **changes: Any) -> StudyConfig:
    tree: dict[str, Any] = {
        "name": "sel",
        "output": str(out),
        "datasets": [{"name": "synth", "train": str(data), "task": "instance", "test_fraction": 0.25}],
        "pretrainings": [
            {"name": "random", "init": "random"},
            {"name": "typiclust", "init": "random", "selection": {"strategy": "typiclust"}},
        ],
        "labelled_images": [2, 4],
        "seeds": [0, 1],
        "finetune": {
            "model": {"decoder_channels": [16, 16, 8, 8, 8]},
            "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 2, "crop_size": 32},
        },
    }
    tree.update(changes)
    return StudyConfig.model_validate(tree)


def test_a_selection_row_trains_every_seed_on_the_same_chosen_images(tmp_path, monkeypatch):
    data = write_synthetic_dataset(tmp_path / "data", n_images=12, size=48)
    study = _study(data, tmp_path / "study")
    # labels are never read while choosing: the pool's samples carry none
    monkeypatch.setattr("sslseg.data.layouts.LabelFile.load", lambda *a: pytest.fail("a label was read"))
    import sslseg.select as select_mod

    passes, matrix = [], select_mod._feature_matrix
    monkeypatch.setattr(select_mod, "_feature_matrix", lambda *a, **k: passes.append(1) or matrix(*a, **k))
    jobs = prepare(study)
    monkeypatch.undo()
    assert len(passes) == 1  # one feature pass for the row's two budgets, not one per budget
    split = json.loads((tmp_path / "study" / "splits" / "synth.json").read_text())
    cells = {j.key: j for j in jobs if j.kind == "finetune"}
    chosen = {}
    for budget in (2, 4):
        a = cells[f"synth/typiclust/finetuned/n{budget}/s0"].config["data"]["labelled_list"]
        b = cells[f"synth/typiclust/finetuned/n{budget}/s1"].config["data"]["labelled_list"]
        assert a == b and Path(a).is_file()
        chosen[budget] = read_labelled_list(a)
        assert len(chosen[budget]) == budget and not set(chosen[budget]) & set(split["test"])
    assert cells["synth/random/finetuned/n2/s0"].config["data"]["labelled_list"] is None
    assert not list((tmp_path / "study" / "selections" / "synth" / "typiclust-descriptors").glob(".*"))

    cell = cells["synth/typiclust/finetuned/n4/s1"]
    result = finetune(FinetuneConfig.model_validate(cell.config))
    trained = json.loads((result.output / "split.json").read_text())
    assert sorted(trained["train"] + trained["val"]) == sorted(chosen[4])
    assert result.summary["n_labelled_total"] == 4

    calls = []
    monkeypatch.setattr("sslseg.select.select", lambda *a, **k: calls.append(a))
    prepare(study)  # computed once: a rerun reads the proposals it has
    assert calls == []


def test_a_run_of_other_rows_leaves_the_choosing_to_the_cells_that_need_it(tmp_path, monkeypatch):
    """Running only random init's cells makes no proposal (choosing can cost minutes on a large pool); the
    chosen row's recipe is written all the same, and its first cell makes its proposal when it runs."""
    from sslseg.study.proposals import ensure_proposal

    data = write_synthetic_dataset(tmp_path / "data", n_images=12, size=48)
    study = _study(data, tmp_path / "study")
    calls = []
    monkeypatch.setattr("sslseg.select.select", lambda *a, **k: calls.append(a))
    jobs = {j.key: j for j in prepare(study, only=["synth/random/finetuned/n2/s0"])}
    assert calls == []
    monkeypatch.undo()
    listing = Path(jobs["synth/typiclust/finetuned/n4/s1"].config["data"]["labelled_list"])
    assert not listing.is_file() and (listing.parent.parent / "request.json").is_file()
    ensure_proposal(listing)
    assert len(read_labelled_list(listing)) == 4
    # a run that includes a chosen row's cell makes that row's proposals up front (a fresh study folder: the
    # one above has them all already)
    fresh = _study(data, tmp_path / "study2")
    cells = {j.key: j for j in prepare(fresh, only=["synth/typiclust/finetuned/n2/s0"])}
    assert Path(cells["synth/typiclust/finetuned/n2/s0"].config["data"]["labelled_list"]).is_file()


def test_a_chosen_budget_is_checked(tmp_path):
    data = write_synthetic_dataset(tmp_path / "data", n_images=8, size=48)
    listing = tmp_path / "chosen.txt"
    listing.write_text("synth_0001\nnot_an_image\n")
    cfg = FinetuneConfig.model_validate(
        {
            "data": {"train": str(data), "labelled_list": str(listing)},
            "model": {"decoder_channels": [16, 16, 8, 8, 8]},
            "train": {"epochs": 1, "steps_per_epoch": 1, "batch_size": 2, "crop_size": 32},
            "output": str(tmp_path / "run"),
        }
    )
    with pytest.raises(ConfigError, match=r"names 1 images that are not labelled images.*not_an_image"):
        finetune(cfg)
    listing.write_text("synth_0001\nsynth_0001\n")
    with pytest.raises(DataError, match="names images twice"):
        read_labelled_list(listing)
    with pytest.raises(ValueError, match="set only one"):
        FinetuneConfig.model_validate({"data": {"labelled_list": "x.txt", "label_fraction": 0.5}})
    with pytest.raises(ValueError, match="labelled_images"):
        _study(data, tmp_path / "s", labelled_images=None, label_fractions=[0.5])


def test_the_report_sets_chosen_images_against_the_random_draws(tmp_path):
    from scipy import stats

    from sslseg.study.report import selection_section
    from sslseg.study.sections import Figure, render_markdown
    from sslseg.study.selection_analysis import selection_against_draws
    from sslseg.study.store import JobRow

    data = write_synthetic_dataset(tmp_path / "data", n_images=12, size=48)
    study = _study(data, tmp_path / "study", seeds=[0, 1, 2, 3, 4])
    jobs = {j.key: j for j in prepare(study)}
    draws = [0.30, 0.50, 0.40, 0.45, 0.35]  # random init: each seed another draw of 4 images
    chosen = [0.46, 0.44, 0.48, 0.47, 0.45]  # the chosen 4 images, seeds vary the training only
    rows = [
        finished_cell("synth", name, 4, seed, score)
        for name, scores in (("random", draws), ("typiclust", chosen))
        for seed, score in enumerate(scores)
    ]
    # a chosen cell names the proposal it trained on: the report shows that proposal's contact sheet
    rows = [
        dataclasses.replace(r, config=jobs[r.key].config) if r.pretraining == "typiclust" else r for r in rows
    ]
    (c,) = selection_against_draws(study, rows)  # budget 2 has no finished cell
    assert (c.row, c.budget, c.metric) == ("typiclust", 4, "aji")
    assert c.welch_p == pytest.approx(
        stats.ttest_ind(chosen, draws, equal_var=False, alternative="greater").pvalue
    )
    assert c.mann_whitney_p == pytest.approx(stats.mannwhitneyu(chosen, draws, alternative="greater").pvalue)
    assert c.share_beaten == pytest.approx(0.8)  # all but 0.50 lie below the chosen mean 0.46
    assert c.worst_at_median  # the worst chosen seed (0.44) is above the draws' median (0.40)
    section = selection_section([c])
    assert section is not None and any(isinstance(b, Figure) for b in section.blocks)  # the contact sheet
    md = render_markdown("t", [section])
    assert (
        "| synth | typiclust (typiclust-descriptors) | 4 | 0.460 (5) | 0.400 [" in md
        and "| 80% | yes |" in md
    )
    assert "Only 5 random draws" in md  # five draws: the report says they are too few to know the spread
    # the verdict compares initialisations seed by seed; a row that chooses other images is not one
    from sslseg.study.analyze import analyze

    at_two = [  # budget 2 finished too, so that every row has a label-efficiency integral
        JobRow(
            **{**r.__dict__, "key": r.key.replace("/n4/", "/n2/"), "config": {"data": {"labelled_images": 2}}}
        )
        for r in rows
    ]
    v = analyze(study, rows + at_two)["datasets"]["synth"]["verdict"]
    assert v["best"] is None and "choosing the images to annotate" in v["text"], v["text"]
    ten = dataclasses.replace(c, draws=draws * 2)
    assert "Only" not in render_markdown("t", [selection_section([ten])])  # ten draws: no such note
    assert selection_section([]) is None


def test_features_from_the_studys_own_pretraining_choose_once_it_has_run(tmp_path, monkeypatch):
    """`features: <row>` chooses with that row's pretrained encoder: the plan cannot make the proposals
    (the encoder does not exist yet), so the row's cells wait for the pretraining and the first one makes
    them, labels unread; the proposals' folder names the pretraining's settings, so changed settings
    choose anew."""
    from sslseg.data.layouts import LabelFile
    from sslseg.study.runner import run_study

    data = write_synthetic_dataset(tmp_path / "data", n_images=12, size=48)
    rows = [
        {"name": "random", "init": "random"},
        {"name": "simclr", "method": "simclr"},
        {"name": "chosen", "init": "random", "selection": {"strategy": "typiclust", "features": "simclr"}},
    ]
    tiny_pretraining = {"views": {"size": 32}, "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8}}
    study = _study(data, tmp_path / "study", pretrainings=rows, seeds=[0], pretrain=tiny_pretraining)
    jobs = {j.key: j for j in prepare(study)}
    cell = jobs["synth/chosen/finetuned/n2/s0"]
    assert cell.depends_on == "synth/pretrain/simclr" and cell.config["model"]["init"] == "random"
    listed = Path(cell.config["data"]["labelled_list"])
    settings = jobs["synth/pretrain/simclr"].identity.settings_hash
    assert listed.parent.parent.name == f"typiclust-simclr-{settings}" and not listed.exists()
    assert (listed.parent.parent / "request.json").is_file()

    real_select = __import__("sslseg.select", fromlist=["select"]).select
    calls: list[dict[str, Any]] = []

    def select_reading_no_label(*args: Any, **kwargs: Any) -> Any:
        calls.append(kwargs)
        with monkeypatch.context() as m:
            m.setattr(LabelFile, "load", lambda *a: pytest.fail("a label was read while choosing"))
            return real_select(*args, **kwargs)

    monkeypatch.setattr("sslseg.select.select", select_reading_no_label)
    summary = run_study(study, workers=1, progress=False, only=[cell.key])
    assert summary.counts["done"] == 2  # the pretraining, then the cell
    assert len(calls) == 1 and calls[0]["features"] == jobs["synth/pretrain/simclr"].config["output"]
    assert (
        len(read_labelled_list(listed)) == 2
        and len(read_labelled_list(listed.parent.parent / "n4" / listed.name)) == 4
    )
    trained = json.loads((Path(cell.config["output"]) / "split.json").read_text())
    assert sorted(trained["train"] + trained["val"]) == sorted(read_labelled_list(listed))
    first = read_labelled_list(listed)
    listed.parent.rename(tmp_path / "lost")  # once the pretraining is done, the plan itself makes them
    prepare(study)
    assert len(calls) == 2 and read_labelled_list(listed) == first  # the same choice, made again

    longer = _study(
        data,
        tmp_path / "study",
        pretrainings=rows,
        seeds=[0],
        pretrain={**tiny_pretraining, "train": {**tiny_pretraining["train"], "steps_per_epoch": 3}},
    )
    again = {j.key: j for j in prepare(longer)}["synth/chosen/finetuned/n2/s0"]
    assert Path(again.config["data"]["labelled_list"]).parent != listed.parent  # chosen anew, beside the old
    assert again.identity.hash != cell.identity.hash


def test_features_naming_a_row_must_name_one_the_study_pretrains(tmp_path):
    data = write_synthetic_dataset(tmp_path / "data", n_images=8, size=48)
    base = [{"name": "random", "init": "random"}, {"name": "imnet", "init": "imagenet"}]
    with pytest.raises(
        ValueError, match="chooses its images with row 'imnet', which the study does not pretrain"
    ):
        _study(
            data,
            tmp_path / "s",
            pretrainings=[*base, {"name": "c", "init": "random", "selection": {"features": "imnet"}}],
        )
    two = [
        {"name": "random", "init": "random"},
        {"name": "simclr", "method": "simclr"},
        {"name": "c", "method": "byol", "selection": {"features": "simclr"}},
    ]
    with pytest.raises(
        ConfigError, match="starts from its own pretraining but chooses its images with row 'simclr'"
    ):
        prepare(_study(data, tmp_path / "s", pretrainings=two))
    own = [
        {"name": "random", "init": "random"},
        {"name": "simclr", "method": "simclr", "selection": {"features": "simclr"}},
    ]
    jobs = prepare(_study(data, tmp_path / "t", pretrainings=own))
    assert {j.depends_on for j in jobs if j.pretraining == "simclr" and j.kind == "finetune"} == {
        "synth/pretrain/simclr"
    }


def test_the_verdict_names_a_pretraining_never_a_row_that_chooses_its_images(tmp_path):
    """Beside a pretraining, a row that chooses its images (trained on other images than random init, seed
    by seed) is never the one the verdict names, however high it scores; and with the pretraining not yet
    finished at every budget (or at all) the verdict waits for it, rather than calling the study one of choices
    alone."""
    from conftest import finished_cell

    from sslseg.study.analyze import analyze

    data = write_synthetic_dataset(tmp_path / "data", n_images=12, size=48)
    rows_of_study = [
        {"name": "random", "init": "random"},
        {"name": "imagenet", "init": "imagenet"},
        {"name": "typiclust", "init": "random", "selection": {"strategy": "typiclust"}},
    ]
    study = _study(data, tmp_path / "study", seeds=[0, 1, 2], pretrainings=rows_of_study)
    gain = {"random": 0.0, "imagenet": 0.05, "typiclust": 0.2}  # the chosen images score highest
    rows = [
        finished_cell("synth", name, budget, seed, 0.3 + 0.05 * budget + g + 0.01 * seed)
        for name, g in gain.items()
        for budget in (2, 4)
        for seed in (0, 1, 2)
    ]
    v = analyze(study, rows)["datasets"]["synth"]["verdict"]
    assert v["best"] == "imagenet" and "typiclust" not in v["text"], v["text"]
    unfinished = [r for r in rows if r.pretraining != "imagenet" or r.key.split("/")[3] == "n2"]
    waiting = analyze(study, unfinished)["datasets"]["synth"]["verdict"]
    assert waiting["best"] is None and "not enough finished cells" in waiting["text"], waiting["text"]
    # nor when the pretraining has no finished cell at all: the study still compares pretrainings
    none_yet = analyze(study, [r for r in rows if r.pretraining != "imagenet"])["datasets"]["synth"][
        "verdict"
    ]
    assert none_yet["best"] is None and "not enough finished cells" in none_yet["text"], none_yet["text"]
