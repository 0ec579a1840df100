"""The study: grid expansion, the results store (claims, dependencies, dead runners, concurrency), the
analysis on constructed results with known answers, and the report."""

from __future__ import annotations

import multiprocessing as mp
import re
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import yaml

from sslseg.errors import ConfigError
from sslseg.study.analyze import analyze
from sslseg.study.estimate import _signature, estimate_jobs
from sslseg.study.report import write_report
from sslseg.study.runner import slurm_script
from sslseg.study.spec import StudyConfig, expand, load_study, select_jobs
from sslseg.study.store import JobRow, ResultStore


def _study(tmp_path: Path, **changes) -> StudyConfig:
    tree = {
        "name": "t",
        "output": str(tmp_path / "study"),
        "datasets": [{"name": "synth", "train": str(tmp_path / "data"), "task": "instance"}],
        "pretrainings": [
            {"name": "random", "init": "random"},
            {"name": "simclr", "method": "simclr"},
            {"name": "densecl", "method": "densecl", "params": {"dense_weight": 0.5}},
        ],
        "label_fractions": [0.5, 0.1],
        "seeds": [0, 1],
        "encoder_states": ["finetuned", "frozen"],
        "finetune": {"train": {"epochs": 2}},
    }
    tree.update(changes)
    return StudyConfig.model_validate(tree)


def test_grid_expansion_counts_dependencies_and_order(tmp_path):
    jobs = expand(_study(tmp_path))
    pre = [j for j in jobs if j.kind == "pretrain"]
    cells = [j for j in jobs if j.kind == "finetune"]
    assert [j.key for j in pre] == ["synth/pretrain/simclr", "synth/pretrain/densecl"]
    assert len(cells) == 3 * 2 * 2 * 2
    assert len({j.key for j in jobs}) == len(jobs)
    assert jobs[: len(pre)] == pre  # pretrainings first
    by_key = {j.key: j for j in cells}
    c = by_key["synth/densecl/frozen/f0.1/s1"]
    assert c.depends_on == "synth/pretrain/densecl"
    assert c.config["model"]["frozen"] is True
    assert c.config["model"]["init"].endswith("pretrain/synth/densecl/encoder.safetensors")
    assert c.config["data"]["label_fraction"] == 0.1 and c.config["train"]["seed"] == 1
    assert c.config["train"]["epochs"] == 2  # the study's shared fine-tuning settings
    assert by_key["synth/random/finetuned/f0.5/s0"].depends_on is None
    # every cell of a dataset uses one split file; pretraining sees only its train/val images
    assert {j.config["data"]["split_file"] for j in cells} == {str(tmp_path / "study/splits/synth.json")}
    assert pre[0].config["data"]["split_file"] == str(tmp_path / "study/splits/synth.json")
    assert pre[1].config["params"] == {"dense_weight": 0.5}
    # smallest fraction first within a seed
    first = [j for j in cells if j.seed == 0][:6]
    assert {j.fraction for j in first} == {0.1}


def test_rows_of_semi_supervised_fine_tuning_share_their_pretraining(tmp_path):
    pretrainings = [
        {"name": "random", "init": "random"},
        {"name": "semi", "init": "random", "finetune": {"semi": {"enabled": True}}},
        {"name": "densecl", "method": "densecl"},
        {"name": "densecl-semi", "method": "densecl", "finetune": {"semi": {"enabled": True}}},
    ]
    jobs = expand(_study(tmp_path, pretrainings=pretrainings, encoder_states=["finetuned"]))
    assert [j.key for j in jobs if j.kind == "pretrain"] == ["synth/pretrain/densecl"]
    by_key = {j.key: j for j in jobs}
    semi = by_key["synth/densecl-semi/finetuned/f0.1/s0"]
    assert semi.depends_on == "synth/pretrain/densecl" and semi.config["semi"]["enabled"] is True
    assert semi.config["model"]["init"] == by_key["synth/densecl/finetuned/f0.1/s0"].config["model"]["init"]
    assert by_key["synth/semi/finetuned/f0.1/s0"].config["semi"]["enabled"] is True
    assert by_key["synth/random/finetuned/f0.1/s0"].config["semi"]["enabled"] is False
    assert semi.config["train"]["epochs"] == 2  # the study's shared settings stay


def test_a_subset_of_jobs_brings_the_pretrainings_it_needs(tmp_path):
    jobs = expand(_study(tmp_path, encoder_states=["finetuned"]))
    assert select_jobs(jobs, None) == [j.key for j in jobs]
    wanted = ["synth/densecl/finetuned/f0.1/s1", "synth/random/finetuned/f0.5/s0"]
    # in study order, with the pretraining the densecl cell starts from (and not simclr's)
    assert select_jobs(jobs, wanted) == ["synth/pretrain/densecl", *reversed(wanted)]
    with pytest.raises(ConfigError, match="not in the study"):
        select_jobs(jobs, ["synth/byol/finetuned/f0.1/s0"])


def test_semi_supervised_cells_are_estimated_apart_from_supervised_ones(tmp_path):
    pretrainings = [
        {"name": "random", "init": "random"},
        {"name": "semi", "init": "random", "finetune": {"semi": {"enabled": True}}},
    ]
    jobs = expand(_study(tmp_path, pretrainings=pretrainings, encoder_states=["finetuned"]))
    by_key = {j.key: j for j in jobs}
    # a semi-supervised step also runs the teacher and the student on unlabeled crops: its own step time
    semi, plain = by_key["synth/semi/finetuned/f0.1/s0"], by_key["synth/random/finetuned/f0.1/s0"]
    assert _signature(semi) != _signature(plain)
    # a finished supervised cell's time is not taken for a semi-supervised one
    done = [
        {
            "key": plain.key,
            "status": "done",
            "seconds": {"total": 1e6},
            "config": plain.config,
            "kind": "finetune",
            "dataset": "synth",
        }
    ]
    tiny = {"train": {"batch_size": 2, "crop_size": 32}, "model": {"decoder_channels": [16, 16, 8, 8, 8]}}
    for j in (semi, plain):
        j.config = {**j.config, **{k: {**j.config[k], **v} for k, v in tiny.items()}}
    seconds = estimate_jobs([semi, plain], done)
    assert seconds[plain.key] == 1e6 and seconds[semi.key] < 1e5  # measured, not 10^4 s per step


def test_methods_that_pretrain_a_decoder_get_the_fine_tuned_decoder_shape(tmp_path):
    pretrainings = [{"name": "random", "init": "random"}, {"name": "masked", "method": "masked"}]
    pretrainings.append(
        {"name": "ae", "method": "autoencoder", "params": {"decoder_channels": [8, 8, 8, 8, 8]}}
    )
    pretrainings.append({"name": "simclr", "method": "simclr"})
    finetune = {"model": {"decoder_channels": [32, 16, 16, 8, 8]}}
    study = _study(tmp_path, pretrainings=pretrainings, finetune=finetune)
    jobs = {j.pretraining: j for j in expand(study) if j.kind == "pretrain"}
    assert jobs["masked"].config["params"]["decoder_channels"] == [32, 16, 16, 8, 8]
    assert jobs["ae"].config["params"]["decoder_channels"] == [8, 8, 8, 8, 8]  # the user's own setting wins
    assert "decoder_channels" not in jobs["simclr"].config["params"]


def test_a_dataset_setting_for_dark_on_bright_images_reaches_pretraining_and_fine_tuning(tmp_path):
    datasets = [{"name": "he", "train": str(tmp_path / "data"), "task": "instance", "bright_objects": True}]
    jobs = expand(_study(tmp_path, datasets=datasets))
    assert {j.config["data"]["bright_objects"] for j in jobs} == {True}
    assert {j.config["data"]["bright_objects"] for j in expand(_study(tmp_path))} == {False}


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"finetune": {"data": {"bright_objects": True}}}, "finetune sets data.bright_objects"),
        ({"finetune": {"train": {"seed": 3, "epochs": 2}}}, "finetune sets train.seed"),
        (
            {
                "pretrainings": [
                    {"name": "random", "init": "random", "finetune": {"model": {"encoder": "resnet34"}}}
                ]
            },
            "pretrainings[random].finetune sets model.encoder",
        ),
        ({"pretrain": {"data": {"path": "elsewhere"}}}, "pretrain sets data.path"),
        (
            {
                "pretrainings": [
                    {"name": "random", "init": "random"},
                    {"name": "s", "method": "simclr", "pretrain": {"output": "x"}},
                ]
            },
            "pretrainings[s].pretrain sets output",
        ),
    ],
)
def test_a_setting_the_study_writes_itself_is_refused_not_dropped(tmp_path, change, named):
    # the study writes these into every job from its datasets, budgets, seeds and rows: an override would be
    # replaced without a word, so a row that asks for bright_objects would silently train without it
    with pytest.raises(ConfigError, match=re.escape(named)):
        expand(_study(tmp_path, **change))
    fine = {
        "finetune": {"data": {"scale": 0.5}, "train": {"epochs": 2}, "model": {"encoder": "resnet18"}},
        "pretrain": {"data": {"scale": 0.5}},
    }
    jobs = expand(_study(tmp_path, **fine))  # settings the study leaves alone, or sets alike, pass through
    assert {j.config["data"]["scale"] for j in jobs} == {0.5}


def test_hashes_are_stable_and_follow_the_settings(tmp_path):
    a = {j.key: j.hash for j in expand(_study(tmp_path))}
    assert a == {j.key: j.hash for j in expand(_study(tmp_path))}
    b = {j.key: j.hash for j in expand(_study(tmp_path, pretrain={"train": {"epochs": 3}}))}
    changed = {k for k in a if a[k] != b[k]}
    # a longer pretraining changes the pretrainings and every cell started from them, not random init
    assert "synth/pretrain/simclr" in changed and "synth/simclr/frozen/f0.1/s0" in changed
    assert not any(k.startswith("synth/random/") for k in changed)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"pretrainings": [{"name": "simclr", "method": "simclr"}]}, "named 'random'"),
        ({"label_fractions": [0.1, 0.1]}, "repeat"),
        ({"label_fractions": [0.0]}, "(0, 1]"),
        ({"pretrainings": [{"name": "random", "init": "random", "method": "simclr"}]}, "exactly one"),
    ],
)
def test_study_errors(tmp_path, change, message):
    with pytest.raises(Exception, match=message.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        _study(tmp_path, **change)


def test_load_study_suggests_misspelt_keys_and_expands_the_data_root(tmp_path, monkeypatch):
    monkeypatch.setenv("SSLSEG_DATA", str(tmp_path / "shared"))
    f = tmp_path / "s.yaml"
    tree = {
        "datasets": [{"name": "d", "train": "${SSLSEG_DATA}/dsb"}],
        "pretrainings": [{"name": "random", "init": "random"}],
        "label_fractions": [0.5],
    }
    f.write_text(yaml.safe_dump(tree))
    assert load_study(f).datasets[0].train == tmp_path / "shared" / "dsb"
    f.write_text(yaml.safe_dump({**tree, "label_fraction": [0.5]}))
    with pytest.raises(ConfigError, match="did you mean 'label_fractions'"):
        load_study(f)
    with pytest.raises(ConfigError, match="not found"):
        load_study(tmp_path / "missing.yaml")


# ------------------------------------------------------------------------------------------------- store


def _store_with_jobs(tmp_path: Path) -> tuple[ResultStore, list]:
    jobs = expand(_study(tmp_path, encoder_states=["finetuned"], seeds=[0], label_fractions=[0.5]))
    store = ResultStore(tmp_path / "results.sqlite")
    store.sync(jobs)
    return store, jobs


def test_claims_follow_order_and_wait_for_pretraining(tmp_path):
    store, jobs = _store_with_jobs(tmp_path)
    keys = [j.key for j in jobs]
    first = store.claim("a", keys)
    second = store.claim("b", keys)
    third = store.claim("c", keys)
    assert [first["key"], second["key"], third["key"]] == [
        "synth/pretrain/simclr",
        "synth/pretrain/densecl",
        "synth/random/finetuned/f0.5/s0",
    ]
    assert store.claim("d", keys) is None  # the rest waits on the running pretrainings
    assert store.finish(first["key"], "a", {}, {"total": 1.0}, {})
    assert store.claim("d", keys)["key"] == "synth/simclr/finetuned/f0.5/s0"
    store.fail(second["key"], "b", "boom")
    assert store.claim("e", keys) is None
    rows = {r["key"]: r for r in store.rows(keys)}
    assert rows["synth/densecl/finetuned/f0.5/s0"]["status"] == "failed"
    assert "pretraining synth/pretrain/densecl failed" in rows["synth/densecl/finetuned/f0.5/s0"]["error"]


def test_only_the_owner_stores_a_result_and_dead_runners_are_replaced(tmp_path):
    store, jobs = _store_with_jobs(tmp_path)
    keys = [jobs[0].key]
    row = store.claim("a", keys)
    assert store.claim("b", keys) is None  # alive (this very process holds it)
    store._db.execute("UPDATE jobs SET pid=? WHERE key=?", (2**22 + 12345, row["key"]))  # a dead pid
    again = store.claim("b", keys)
    assert again["key"] == row["key"] and again["resumed"] is True
    assert not store.finish(row["key"], "a", {"x": 1}, {"total": 1}, {})  # "a" lost the job
    assert store.finish(row["key"], "b", {"x": 2}, {"total": 1}, {})
    assert store.rows(keys)[0]["metrics"] == {"x": 2} and store.rows(keys)[0]["attempts"] == 2


def test_a_changed_pretraining_names_the_done_cells_it_feeds_and_spares_the_others(tmp_path):
    store, jobs = _store_with_jobs(tmp_path)
    keys = [j.key for j in jobs]
    while (row := store.claim("a", keys)) is not None:
        store.finish(row["key"], "a", {"aji": 0.5}, {"total": 1}, {})
    changed = expand(_study(tmp_path, pretrain={"train": {"epochs": 99}}))
    report = store.sync(changed)
    random_cells = [k for k in keys if k.split("/")[1] == "random"]
    assert report.changed and not set(random_cells) & set(report.changed)
    simclr_cell = next(k for k in keys if k.split("/")[1] == "simclr")
    assert report.changed[simclr_cell] == ["pretraining.train.epochs"]
    assert report.changed["synth/pretrain/simclr"] == ["train.epochs"]
    assert all(r["status"] == "done" for r in store.rows(keys))  # nothing is redone unless asked


def _claim_all(path: str, keys: list[str], name: str, out: str, start: Any) -> None:
    store = ResultStore(path)
    start.wait(120)  # all runners race from here: a slow process start must not leave one alone
    got = []
    while True:
        row = store.claim(name, keys)
        if row is None:
            if store.counts(keys)["pending"] == 0:
                break
            time.sleep(0.01)
            continue
        time.sleep(0.002)  # "work"
        store.finish(row["key"], name, {}, {"total": 0.0}, {})
        got.append(row["key"])
    Path(out).write_text("\n".join(got))


def test_concurrent_runners_never_run_a_job_twice(tmp_path):
    jobs = expand(_study(tmp_path, seeds=[0, 1, 2, 3, 4]))
    store = ResultStore(tmp_path / "results.sqlite")
    store.sync(jobs)
    keys = [j.key for j in jobs]
    ctx = mp.get_context("spawn")
    start = ctx.Barrier(4)
    procs = [
        ctx.Process(
            target=_claim_all,
            args=(str(tmp_path / "results.sqlite"), keys, f"r{i}", str(tmp_path / f"r{i}"), start),
        )
        for i in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    claimed = [k for i in range(4) for k in (tmp_path / f"r{i}").read_text().split("\n") if k]
    assert sorted(claimed) == sorted(keys)  # every job exactly once
    assert sum(1 for i in range(4) if (tmp_path / f"r{i}").read_text()) >= 2  # the work was shared
    assert all(r["attempts"] == 1 and r["status"] == "done" for r in store.rows(keys))


# ----------------------------------------------------------------------------------------------- analysis


def _rows(study: StudyConfig, scores: dict[str, callable], annotated: callable | None = None) -> list[JobRow]:
    """Done rows whose AJI is scores[pretraining](budget, seed) (budget: the fraction or the image count);
    other metrics equal it. `annotated(budget, seed)`, if given, is each cell's n_labelled_total."""
    rows = []
    for j in expand(study):
        if j.kind == "pretrain":
            rows.append(
                JobRow(
                    **{
                        "key": j.key,
                        "kind": "pretrain",
                        "dataset": j.dataset,
                        "pretraining": j.pretraining,
                        "state": None,
                        "fraction": None,
                        "seed": None,
                        "status": "done",
                        "metrics": {},
                        "seconds": {"total": 100.0},
                        "info": {},
                    }
                )
            )
            continue
        budget = j.fraction if j.fraction is not None else j.labelled_images
        v = scores[j.pretraining](budget, j.seed)
        metrics = dict.fromkeys(("aji", "aji_plus", "pq", "dsb_score", "f1@0.5"), v)
        rows.append(
            JobRow(
                **{
                    "key": j.key,
                    "kind": "finetune",
                    "dataset": j.dataset,
                    "pretraining": j.pretraining,
                    "state": j.state,
                    "fraction": j.fraction,  # as the store keeps it: empty in an image-count study
                    "seed": j.seed,
                    "config": j.config,
                    "status": "done",
                    "metrics": metrics,
                    "seconds": {"total": 50.0},
                    "info": {} if annotated is None else {"n_labelled_total": annotated(budget, j.seed)},
                }
            )
        )
    return rows


def test_analysis_on_constructed_results(tmp_path):
    study = _study(
        tmp_path, encoder_states=["finetuned"], seeds=[0, 1, 2, 3, 4], label_fractions=[0.1, 0.5, 1.0]
    )
    noise = {s: 0.002 * (s - 2) for s in range(5)}
    rows = _rows(
        study,
        {
            "random": lambda f, s: 0.4 + 0.4 * f + noise[s],  # 0.8 at full labels
            # indistinguishable: its seed noise is not random init's, so the pairs do not cancel it
            "simclr": lambda f, s: 0.4 + 0.4 * f + noise[(s + 2) % 5] + 0.0005,
            "densecl": lambda f, s: 0.6 + 0.2 * f + noise[s],  # clearly better, most at few labels
        },
    )
    a = analyze(study, rows)["datasets"]["synth"]
    g = a["groups"]["finetuned"]["aji"]
    assert a["references"]["aji"]["score"] == pytest.approx(0.8)
    # random: mean of 0.4 + 0.4f over [0.1, 1] is 0.62 → integral 0.62 / 0.8
    assert g["pretrainings"]["random"]["integral_mean"] == pytest.approx(0.62 / 0.8, abs=1e-9)
    dense = g["pretrainings"]["densecl"]
    assert dense["test"]["significant"] and dense["test"]["paired_t_p_holm"] < 1e-6
    assert dense["test"]["welch_p_holm"] < 1e-6
    assert not g["pretrainings"]["simclr"]["test"]["significant"]
    assert dense["relative_gain"][0] == pytest.approx(0.62 / 0.44 - 1, abs=1e-3)
    # densecl at 10 % (0.62) equals random at 55 % → saves 1 - 0.1/0.55 of the labels
    assert dense["labels_saved"][0] == pytest.approx(1 - 0.1 / 0.55, abs=1e-3)
    assert dense["labels_saved"][1] == pytest.approx(1 - 0.5 / 0.75, abs=1e-3)  # 0.7 = random at 75 %
    assert dense["labels_saved"][2] == pytest.approx(0.0, abs=1e-6)  # equal at full labels
    assert dense["cost"]["factor"] == pytest.approx((100 + 50) / 50)
    assert a["verdict"]["best"] == "densecl" and "use densecl" in a["verdict"]["text"]


def test_report_from_constructed_results(tmp_path):
    study = _study(tmp_path, seeds=[0, 1, 2], label_fractions=[0.1, 0.5])
    rows = _rows(
        study,
        {
            "random": lambda f, s: 0.5 + 0.2 * f + 0.01 * s,
            "simclr": lambda f, s: 0.55 + 0.2 * f + 0.01 * s,
            "densecl": lambda f, s: np.nan if s == 2 else 0.6 + 0.1 * f,
        },
    )
    analysis = analyze(study, rows)
    paths = write_report(tmp_path / "report", "t", analysis, {}, "name: t\n", "footer")
    html = paths["html"].read_text()
    md = paths["markdown"].read_text()
    assert html.count("data:image/png;base64,") == 1  # the curves figure, embedded
    # the verdict the analysis reached opens the report; each encoder state gets its table
    verdict = analysis["datasets"]["synth"]["verdict"]
    assert verdict["best"] in {"simclr", "densecl"} and verdict["best"] in verdict["text"]
    section = md.split("## Verdict\n", 1)[1].split("\n#", 1)[0]
    assert [line for line in section.splitlines() if line.startswith("- ")] == [f"- {verdict['text']}"]
    assert {"### aji, frozen encoder", "### aji, finetuned encoder"} <= set(md.splitlines())
    curves = paths["curves"].read_text().splitlines()
    assert curves[0].startswith("dataset,state,metric,pretraining,fraction,mean")
    assert len(curves) == 1 + 2 * 5 * 3 * 2  # states × metrics × pretrainings × fractions


def _image_study(tmp_path: Path) -> tuple[StudyConfig, list[dict]]:
    """A study over 4, 8, 16 and 32 labelled images with a fixed validation split of 3 images: the cells
    annotate 7, 11, 19 and 35 images. densecl with n images scores what random init scores with n + 9."""
    study = _study(
        tmp_path,
        datasets=[
            {"name": "synth", "train": str(tmp_path / "data"), "task": "instance", "validation": "fixed"}
        ],
        encoder_states=["finetuned"],
        seeds=[0, 1, 2, 3, 4],
        label_fractions=None,
        labelled_images=[4, 8, 16, 32],
    )
    luck = {0: -0.03, 1: 0.02, 2: -0.01, 3: 0.03, 4: -0.01}  # which images were labelled, shared by a seed
    own = {0: 0.002, 1: -0.001, 2: 0.0, 3: -0.002, 4: 0.001}

    def random_init(n, s):
        return 0.2 + 0.015 * (n + 3) + luck[s]

    rows = _rows(
        study,
        {
            "random": random_init,
            "simclr": lambda n, s: random_init(n, s) + own[s],  # no better
            "densecl": lambda n, s: random_init(n + 9, s) + own[s],
        },
        annotated=lambda n, s: n + 3,  # training images plus the 3 fixed validation images
    )
    return study, rows


def test_image_count_study_analyses_in_annotated_images(tmp_path):
    from sslseg.study.representation_analysis import representative_cells

    study, rows = _image_study(tmp_path)
    assert all(r.fraction is None for r in rows)  # the store has no fraction for these cells
    a = analyze(study, rows)["datasets"]["synth"]
    g = a["groups"]["finetuned"]["aji"]
    assert g["budgets"] == [4, 8, 16, 32] and g["annotated"] == [7, 11, 19, 35] and g["labels_in_images"]
    # the integral runs over the image-count axis: random init's mean over 4..32 images, over its score at 32
    assert g["pretrainings"]["random"]["integral_mean"] == pytest.approx(0.515 / 0.725, abs=1e-9)
    assert a["references"]["aji"]["source"] == "random init, finetuned, 32 labelled images"
    dense = g["pretrainings"]["densecl"]
    assert [b["significant"] for b in dense["budget_tests"]] == [True] * 4
    assert dense["random_needs"][0] == pytest.approx(16)  # densecl with 7 annotated = random init with 16
    assert dense["labels_saved"][0] == pytest.approx(1 - 7 / 16)
    sup = dense["labels_saved_supported"]  # with 4 (+3) it beats random init with 8 (+3), not with 16 (+3)
    assert sup["beats_random_at"] == 8 and sup["random_needs_more_than"] == 11
    assert sup["more_than"] == pytest.approx(1 - 7 / 11)  # validation images counted on both sides
    v = a["verdict"]
    assert v["best"] == "densecl" and v["significant"]
    assert (
        "random init needs more than 11 annotated images to match what densecl scores with 7 "
        "(point estimate 16), so more than 36% of the annotation saved" in v["text"]
    )
    assert "data.validation: fixed" in a["accounting"]
    cells = representative_cells(study, rows, "synth")
    assert {c.key for c in cells.values()} == {
        f"synth/{p}/finetuned/n4/s0" for p in ("random", "simclr", "densecl")
    }


def test_image_count_report_plots_and_names_annotated_images(tmp_path, monkeypatch):
    from sslseg.study import report

    study, rows = _image_study(tmp_path)
    drawn = []
    original = report.png_base64

    def record(fig):
        drawn.append([(ax.get_xlabel(), list(ax.lines[0].get_xdata())) for ax in fig.axes])
        return original(fig)

    monkeypatch.setattr(report, "png_base64", record)
    paths = write_report(tmp_path / "report", "t", analyze(study, rows), {}, "name: t\n", "footer")
    assert drawn == [[("annotated images (training + validation)", [7.0, 11.0, 19.0, 35.0])]]
    md = paths["markdown"].read_text()
    assert "random init needs more than 11 annotated images to match what densecl scores with 7" in md
    assert "fixed validation split (data.validation: fixed)" in md
    assert "7 images (4 + validation): paired Δ (95% CI), p" in md
    assert "(random init needs 16)" in md
    curves = [line.split(",") for line in paths["curves"].read_text().splitlines()]
    head = curves[0]
    assert head[4] == "labelled_images" and "annotated_images" in head
    random_aji = [r for r in curves[1:] if r[2] == "aji" and r[3] == "random"]
    assert [(r[4], r[head.index("annotated_images")]) for r in random_aji] == [
        ("4", "7.0"),
        ("8", "11.0"),
        ("16", "19.0"),
        ("32", "35.0"),
    ]


def test_fraction_report_names_the_annotated_images(tmp_path):
    study = _study(tmp_path, encoder_states=["finetuned"], seeds=[0, 1, 2], label_fractions=[0.1, 0.5])
    rows = _rows(
        study,
        {
            "random": lambda f, s: 0.5 + 0.2 * f + 0.01 * s,
            "simclr": lambda f, s: 0.55 + 0.2 * f + 0.01 * s,
            "densecl": lambda f, s: 0.5 + 0.2 * f + 0.01 * s,
        },
        annotated=lambda f, s: round(70 * f),  # validation from the budget: 7 and 35 annotated images
    )
    analysis = analyze(study, rows)
    g = analysis["datasets"]["synth"]["groups"]["finetuned"]["aji"]
    assert g["annotated"] == [7, 35] and g["labels_x"] == [7, 35]
    md = write_report(tmp_path / "report", "t", analysis, {}, "name: t\n", "footer")["markdown"].read_text()
    assert "10% (7 images): paired Δ (95% CI), p" in md and "50% (35 images): gain / labels saved" in md
    assert "came out of each budget (data.validation: budget)" in md


def test_slurm_script_runs_one_runner_per_task(tmp_path):
    study = _study(tmp_path)
    script = slurm_script(tmp_path / "s.yaml", study, tasks=6, hours=2.5)
    assert "#SBATCH --array=0-5" in script and "#SBATCH --time=02:30:00" in script
    assert "-m sslseg study run" in script and "--no-report" in script
