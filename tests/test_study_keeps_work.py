"""A study never loses finished work: an upgrade (a new option with a default), a moved study folder and a new
data root redo nothing and leave every file as it was; a real change keeps the old results (named, then moved
aside on request, never deleted); a folder that cannot be resumed is moved aside; a runner that lost its claim
writes nothing more. The training is faked (`runner._run` writes a few files), so the file takes seconds."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from pydantic import Field
from typer.testing import CliRunner

from sslseg.atomic import write_json, write_text
from sslseg.cli import app
from sslseg.config import FinetuneConfig, PretrainConfig, to_yaml
from sslseg.data.synth import write_synthetic_dataset
from sslseg.fence import ClaimLost, Fence, fenced
from sslseg.study import runner, spec
from sslseg.study.report import earlier_settings_section
from sslseg.study.runner import prepare, run_job, run_study
from sslseg.study.spec import StudyConfig, expand
from sslseg.study.store import JobRow, open_store, read_rows, read_superseded


def _study(data: Path, out: Path, backend: str = "sqlite", **changes: Any) -> StudyConfig:
    tree: dict[str, Any] = {
        "name": "keep",
        "output": str(out),
        "datasets": [{"name": "synth", "train": str(data), "task": "instance"}],
        "pretrainings": [{"name": "random", "init": "random"}, {"name": "simclr", "method": "simclr"}],
        "labelled_images": [2, 4],
        "seeds": [0, 1],
        "store": backend,
    }
    tree.update(changes)
    return StudyConfig.model_validate(tree)


@pytest.fixture
def fake_training(monkeypatch) -> list[str]:
    """Replace the training of a job by a few files written as training writes them; returns the keys run."""
    ran: list[str] = []

    def _run(row: dict, config: dict, resume: bool, progress: bool) -> tuple[dict, dict, dict]:
        out = Path(config["output"])
        write_text(out / "checkpoints" / "last.ckpt", f"weights of {row['key']}")
        write_json(out / "result.json", {"key": row["key"], "epochs": config["train"]["epochs"]})
        ran.append(row["key"])
        metrics = {} if row["kind"] == "pretrain" else {"aji": 0.1 * len(ran)}
        return metrics, {"total": 0.01, "fit": 0.01, "test": 0.0}, {"resumed": resume}

    monkeypatch.setattr(runner, "_run", _run)
    return ran


def _files(folder: Path) -> dict[str, str]:
    """Every file of a study's job folders, by path relative to the study, with a digest of its bytes."""
    out = {}
    for sub in ("cells", "pretrain", "superseded"):
        for path in sorted((folder / sub).rglob("*")):
            if path.is_file():
                out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def _upgrade(monkeypatch) -> None:
    """This process becomes a newer sslseg: both configs gain an option with a default."""

    class NewerFinetune(FinetuneConfig):
        new_option: int = Field(3, description="an option a newer version added")

    class NewerPretrain(PretrainConfig):
        another_option: str = "as before"

    monkeypatch.setattr(spec, "FinetuneConfig", NewerFinetune)
    monkeypatch.setattr(spec, "PretrainConfig", NewerPretrain)
    monkeypatch.setattr(spec, "_DEFAULTS", {})


@pytest.mark.parametrize("backend", ["sqlite", "files"])
def test_upgrade_moved_study_and_new_data_root_redo_nothing(tmp_path, monkeypatch, fake_training, backend):
    write_synthetic_dataset(tmp_path / "data", n_images=12, size=48)
    study = _study(tmp_path / "data", tmp_path / "study", backend)
    summary = run_study(study, progress=False)
    assert summary.counts["done"] == len(expand(study)) == len(fake_training) == 9
    before = _files(tmp_path / "study")
    rows_before = {r["key"]: r["metrics"] for r in read_rows(tmp_path / "study")}

    _upgrade(monkeypatch)
    shutil.move(tmp_path / "study", tmp_path / "moved" / "study")
    shutil.move(tmp_path / "data", tmp_path / "elsewhere" / "data")
    fake_training.clear()
    moved = _study(tmp_path / "elsewhere" / "data", tmp_path / "moved" / "study", backend)
    assert all("new_option" in j.config for j in expand(moved) if j.kind == "finetune")
    summary = run_study(moved, progress=False)

    assert fake_training == []  # nothing redone
    assert summary.counts["done"] == 9
    assert _files(tmp_path / "moved" / "study") == before  # every result file byte-identical
    rows = read_rows(tmp_path / "moved" / "study")
    assert {r["key"]: r["metrics"] for r in rows} == rows_before
    assert not any(r["changed"] for r in rows)
    # the stored settings now point at the new places, so the report finds the cells where they are
    assert all(r["config"]["output"].startswith(str(tmp_path / "moved")) for r in rows)


@pytest.mark.parametrize("backend", ["sqlite", "files"])
def test_a_real_change_keeps_old_results_then_moves_them_aside_on_request(
    tmp_path, fake_training, capsys, backend
):
    write_synthetic_dataset(tmp_path / "data", n_images=12, size=48)
    study = _study(tmp_path / "data", tmp_path / "study", backend)
    run_study(study, progress=False)
    before = _files(tmp_path / "study")
    fake_training.clear()

    longer = _study(tmp_path / "data", tmp_path / "study", backend, finetune={"train": {"epochs": 7}})
    run_study(longer, progress=False)
    assert fake_training == []  # kept, not redone
    assert "8 finished job(s) kept although their settings changed (train.epochs)" in capsys.readouterr().err
    rows = read_rows(tmp_path / "study")
    assert sum(r["changed"] == ["train.epochs"] for r in rows) == 8
    assert all(r["status"] == "done" for r in rows)
    assert _files(tmp_path / "study") == before
    kept = earlier_settings_section([JobRow.from_row(r) for r in rows], [])
    assert kept is not None and [r[2] for r in kept.blocks[1].rows] == ["kept, in the analysis"] * 8
    status = CliRunner().invoke(app, ["study", "status", str(tmp_path / "study")])
    assert status.output.count("changed synth/") == 8 and "train.epochs changed" in status.output

    run_study(longer, progress=False, rerun_changed=True)
    assert sorted(fake_training) == sorted(r["key"] for r in rows if r["kind"] == "finetune")
    old = read_superseded(tmp_path / "study")
    assert len(old) == 8 and all(o["changed"] == ["train.epochs"] and "aji" in o["metrics"] for o in old)
    after = _files(tmp_path / "study")
    for o in old:  # each old folder lies, unchanged, where its record says
        moved = Path(o["moved_to"]).relative_to(tmp_path / "study")
        folder = Path(o["folder"]).relative_to(tmp_path / "study")
        for name, digest in before.items():
            if Path(name).is_relative_to(folder):
                assert after[str(moved / Path(name).relative_to(folder))] == digest
    rows = [JobRow.from_row(r) for r in read_rows(tmp_path / "study")]
    assert all(r.status == "done" and not r.changed for r in rows)
    moved = earlier_settings_section(rows, old)
    assert moved is not None and [r[2] for r in moved.blocks[1].rows] == ["moved aside"] * 8
    status = CliRunner().invoke(app, ["study", "status", str(tmp_path / "study")])
    assert status.output.count("superseded synth/") == 8 and "(train.epochs changed): aji 0." in status.output


def test_a_folder_that_cannot_be_resumed_is_moved_aside_not_removed(tmp_path, fake_training):
    write_synthetic_dataset(tmp_path / "data", n_images=12, size=48)
    study = _study(tmp_path / "data", tmp_path / "study")
    jobs = prepare(study)
    cell = next(j for j in jobs if j.kind == "finetune")
    out = Path(cell.config["output"])
    write_text(out / "logs" / "metrics.csv", "epoch,loss\n0,1.0\n")  # a killed attempt, no checkpoint
    with open_store(study.output, "sqlite") as store:
        row = store.claim("r", [cell.key])
    run_job(row)
    aside = list((tmp_path / "study" / "superseded").rglob("metrics.csv"))
    assert len(aside) == 1 and aside[0].read_text() == "epoch,loss\n0,1.0\n"
    assert (out / "result.json").is_file() and not (out / "logs").exists()


def test_a_runner_that_lost_its_claim_writes_nothing_more(tmp_path):
    folder = tmp_path / "job"
    mine = Fence(folder, "token-a")
    with fenced(mine):
        write_text(folder / "step1", "a")
        Fence(folder, "token-b").path.write_text("token-b")  # another runner took the job over
        with pytest.raises(ClaimLost, match="another runner took this job over"):
            write_text(folder / "step2", "a")
    assert not (folder / "step2").exists()
    write_text(folder / "free", "x")  # outside a fenced job, writes are not checked
    lost = Fence(folder, "token-b")
    with fenced(lost):
        lost.lost.set()  # the heartbeat learnt it from the store
        with pytest.raises(ClaimLost, match="heartbeat went stale"):
            write_text(folder / "step3", "b")


def test_cells_an_older_store_reset_are_taken_back_from_their_finished_folders(tmp_path, fake_training):
    write_synthetic_dataset(tmp_path / "data", n_images=12, size=48)
    study = _study(tmp_path / "data", tmp_path / "study", seeds=[0])
    jobs = prepare(study)
    cell = next(j for j in jobs if j.kind == "finetune" and j.pretraining == "random")
    other = next(j for j in jobs if j.kind == "finetune" and j.pretraining == "random" and j.key != cell.key)
    for job, epochs in ((cell, None), (other, 99)):  # a finished run of the same settings, and of others
        config = dict(job.config)
        if epochs:
            config["train"] = {**config["train"], "epochs": epochs}
        out = Path(job.config["output"])
        write_text(out / "config.yaml", to_yaml(FinetuneConfig.model_validate(config)))
        write_json(out / "result.json", {"test": {"aji": 0.42}, "fit_seconds": 5.0, "test_seconds": 1.0})
    prepare(study)
    rows = {r["key"]: r for r in read_rows(tmp_path / "study")}
    assert rows[cell.key]["status"] == "done" and rows[cell.key]["metrics"] == {"aji": 0.42}
    assert rows[cell.key]["seconds"]["total"] == 6.0
    assert rows[other.key]["status"] == "pending"  # its folder ran other settings: it is redone


def test_a_live_claim_of_another_version_waits_for_the_stale_timeout(tmp_path):
    study = _study(tmp_path / "data", tmp_path / "study", "files")
    jobs = expand(study)
    with open_store(study.output, "files") as store:
        store.sync(jobs)
        row = store.claim("old-version", [jobs[0].key])
        record = store.jobs_dir / f"{quote(row['key'], safe='')}.json"
        tree = json.loads(record.read_text())
        write_json(record, {**tree, "config_hash": "a-newer-version"})  # as a newer runner would write it
        assert store.claim("newer", [jobs[0].key]) is None  # the old runner lives: its job stays its own
        assert store.heartbeat(row["key"], "old-version")


def test_a_result_is_stored_only_by_compare_and_set_on_the_claim(tmp_path, monkeypatch):
    study = _study(tmp_path / "data", tmp_path / "study", "files")
    jobs = expand(study)
    with open_store(study.output, "files") as store:
        store.sync(jobs)
        row = store.claim("a", [jobs[0].key])
        # another runner takes the job over right after "a" checked that it still owns it
        monkeypatch.setattr(store, "_owns", lambda key, runner: True)
        taken = json.dumps({"runner": "b", "token": "b-token", "key": row["key"]})
        (store.claims_dir / f"{next(store.claims_dir.glob('*.1')).name[:-2]}.2").write_text(taken)
        assert not store.finish(row["key"], "a", {"aji": 1.0}, {"total": 1.0}, {})
        assert not list(store.results_dir.glob("*.json"))


def test_a_self_training_cell_killed_after_its_teacher_is_resumed_by_the_study(tmp_path):
    write_synthetic_dataset(tmp_path / "data", n_images=12, size=48)
    study = _study(
        tmp_path / "data", tmp_path / "study", finetune={"semi": {"enabled": True, "method": "self_training"}}
    )
    cell = next(j for j in prepare(study) if j.kind == "finetune")
    row = {"key": cell.key, "kind": "finetune", "config": cell.config}
    out = Path(cell.config["output"])
    assert not runner.resumable(row)
    write_json(out / "teacher" / "result.json", {"test": {"aji": 0.3}})  # the teacher finished, then a kill
    assert runner.resumable(row)  # the student's folder has no last.ckpt, yet the run continues
