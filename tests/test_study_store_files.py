"""The study's results stores behind one interface, and the files backend for a study folder on a shared
network filesystem: runner processes sharing a folder without SQLite run every job exactly once, a killed
runner's job is finished by another, a stale claim is taken over by exactly one runner. Jobs are faked
(`run_job` replaced), so the whole file takes seconds."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import stat
import threading
import time
from pathlib import Path
from typing import Any

import pytest
import yaml
from typer.testing import CliRunner

from sslseg.data.synth import write_synthetic_dataset
from sslseg.study import runner
from sslseg.study.runner import slurm_script, with_store, worker_loop
from sslseg.study.spec import StudyConfig, expand
from sslseg.study.store import ROW_FIELDS, FileStore, open_store, read_rows


def _study(tmp_path: Path, **changes: Any) -> StudyConfig:
    tree = {
        "name": "t",
        "output": str(tmp_path / "study"),
        "datasets": [{"name": "synth", "train": str(tmp_path / "data"), "task": "instance"}],
        "pretrainings": [
            {"name": "random", "init": "random"},
            {"name": "simclr", "method": "simclr"},
            {"name": "densecl", "method": "densecl"},
        ],
        "label_fractions": [0.5],
        "seeds": [0],
        "store": "files",
    }
    tree.update(changes)
    return StudyConfig.model_validate(tree)


def _synced(tmp_path: Path, backend: str, **changes: Any) -> tuple[Any, list]:
    study = _study(tmp_path, store=backend, **changes)
    jobs = expand(study)
    store = open_store(study.output, backend)
    store.sync(jobs)
    return store, jobs


# ------------------------------------------------------------------------------ one interface, two stores


@pytest.mark.parametrize("backend", ["sqlite", "files"])
def test_both_stores_claim_in_order_wait_for_pretraining_and_keep_one_result(tmp_path, backend):
    store, jobs = _synced(tmp_path, backend)
    keys = [j.key for j in jobs]
    with store:
        first, second, third = (store.claim(r, keys) for r in "abc")
        assert [first["key"], second["key"], third["key"]] == [
            "synth/pretrain/simclr",
            "synth/pretrain/densecl",
            "synth/random/finetuned/f0.5/s0",
        ]
        assert first["config"]["method"] == "simclr" and first["resumed"] is False
        assert store.claim("d", keys) is None  # the rest waits on the running pretrainings
        assert store.heartbeat(first["key"], "a") and not store.heartbeat(first["key"], "b")
        assert not store.finish(first["key"], "b", {}, {"total": 1.0}, {})  # not b's job
        assert store.finish(first["key"], "a", {"aji": 0.5}, {"total": 1.0}, {"n": 1})
        assert store.claim("d", keys)["key"] == "synth/simclr/finetuned/f0.5/s0"
        assert store.fail(second["key"], "b", "boom")
        assert store.claim("e", keys) is None
        rows = {r["key"]: r for r in store.rows(keys)}
        assert list(rows) == keys and all(set(r) >= set(ROW_FIELDS) for r in rows.values())
        assert rows[first["key"]]["metrics"] == {"aji": 0.5} and rows[first["key"]]["info"] == {"n": 1}
        assert rows[first["key"]]["runner"] == "a" and rows[first["key"]]["attempts"] == 1
        assert rows["synth/densecl/finetuned/f0.5/s0"]["status"] == "failed"
        assert "pretraining synth/pretrain/densecl failed" in rows["synth/densecl/finetuned/f0.5/s0"]["error"]
        assert store.counts(keys) == {"pending": 0, "running": 2, "done": 1, "failed": 2}
        assert store.reset_failed(keys) == 2
        assert store.counts(keys)["pending"] == 2
        assert store.claim("f", keys)["key"] == second["key"]  # a reset job is claimable at once


@pytest.mark.parametrize("backend", ["sqlite", "files"])
def test_both_stores_keep_a_changed_result_until_asked_then_move_it_aside(tmp_path, backend):
    store, jobs = _synced(tmp_path, backend)
    keys = [j.key for j in jobs]
    with store:
        row = store.claim("a", keys)
        assert store.finish(row["key"], "a", {"aji": 0.5}, {"total": 1}, {})
        changed = expand(_study(tmp_path, store=backend, pretrain={"train": {"epochs": 99}}))
        report = store.sync(changed)
        # the done pretraining keeps its result, named with the setting that changed; the rest had none
        assert report.changed == {row["key"]: ["train.epochs"]} and report.updated == 3
        (kept,) = store.rows([row["key"]])
        assert (
            kept["status"] == "done"
            and kept["metrics"] == {"aji": 0.5}
            and kept["changed"] == ["train.epochs"]
        )
        assert store.claim("b", [row["key"]]) is None
        assert store.sync(changed).superseded == []  # nothing moves without being asked
        report = store.sync(changed, rerun_changed=True)
        (entry,) = report.superseded
        assert entry["key"] == row["key"] and entry["changed"] == ["train.epochs"]
        assert entry["moved_to"].startswith(str(tmp_path / "study" / "superseded"))
        (old,) = store.superseded()
        assert old["metrics"] == {"aji": 0.5} and old["config"]["train"]["epochs"] != 99
        assert old["changed"] == ["train.epochs"]
        assert store.rows([row["key"]])[0]["status"] == "pending"
        again = store.claim("b", keys)  # at once: pending, started afresh
        assert again["key"] == row["key"] and again["resumed"] is False
        assert again["config"]["train"]["epochs"] == 99


def test_a_stale_claim_is_taken_over_and_its_old_owner_stores_nothing(tmp_path):
    store_a, jobs = _synced(tmp_path, "files")
    store_b = FileStore(store_a.root, stale_after=60)
    keys = [jobs[0].key]
    row = store_a.claim("a", keys)
    assert store_b.claim("b", keys) is None  # fresh, and its process (this one) is alive
    claim = store_a.claims_dir / "synth%2Fpretrain%2Fsimclr.1"
    old = time.time() - 3600
    os.utime(claim, (old, old))  # no heartbeat for an hour: the runner's node died
    assert store_b.rows(keys)[0]["status"] == "running"  # until someone takes it over
    again = store_b.claim("b", keys)
    assert again["key"] == row["key"] and again["resumed"] is True and again["attempts"] == 2
    assert not store_a.heartbeat(row["key"], "a")  # "a" learns it lost the job
    assert not store_a.finish(row["key"], "a", {"x": 1}, {"total": 1}, {})
    assert not store_a.fail(row["key"], "a", "late")
    assert store_b.heartbeat(row["key"], "b")
    assert store_b.finish(row["key"], "b", {"x": 2}, {"total": 1}, {})
    (done,) = store_a.rows(keys)
    assert done["status"] == "done" and done["metrics"] == {"x": 2} and done["runner"] == "b"
    assert done["attempts"] == 2
    assert store_b.claim("c", keys) is None  # done stays done though its claims are old


def test_only_one_of_many_runners_takes_over_a_stale_claim(tmp_path):
    store, jobs = _synced(tmp_path, "files")
    keys = [jobs[0].key]
    store.claim("dead", keys)
    old = time.time() - 3600
    os.utime(next(store.claims_dir.glob("*.1")), (old, old))
    start = threading.Barrier(8)
    won: list[str] = []

    class SlowFileStore(FileStore):
        def _stale(self, *args: Any) -> bool | None:
            stale = super()._stale(*args)
            time.sleep(0.3)  # a slow filesystem: every runner has judged the claim stale before any acts
            return stale

    def race(name: str) -> None:
        mine = SlowFileStore(store.root, stale_after=60)  # every runner its own view of the folder
        start.wait(30)
        if mine.claim(name, keys) is not None:
            won.append(name)

    threads = [threading.Thread(target=race, args=(f"r{i}",)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert len(won) == 1
    assert sorted(p.name for p in store.claims_dir.iterdir() if not p.name.startswith(".clock")) == [
        "synth%2Fpretrain%2Fsimclr.1",
        "synth%2Fpretrain%2Fsimclr.2",
    ]  # no temporary file left behind


def test_heartbeat_touches_the_claim_and_notices_a_takeover(tmp_path):
    store, jobs = _synced(tmp_path, "files")
    row = store.claim("a", [jobs[0].key])
    claim = next(store.claims_dir.glob("*.1"))
    os.utime(claim, (0, 0))
    beat = runner._Heartbeat(store, row["key"], "a", every=0.02)
    time.sleep(0.3)
    assert time.time() - claim.stat().st_mtime < 5 and not beat.lost.is_set()
    (store.claims_dir / claim.name.replace(".1", ".2")).write_text(json.dumps({"runner": "b"}))
    deadline = time.time() + 10
    while not beat.lost.is_set() and time.time() < deadline:
        time.sleep(0.02)
    beat.stop()
    assert beat.lost.is_set()


# --------------------------------------------------------------------------- runners in separate processes


def _fake_job(log: Path, store_root: Path, hang: str | None = None):
    """A job that logs who ran it, checks that its pretraining was done first, and takes a moment (or,
    for the key `hang`, forever: the process is killed in it)."""

    def run_job(row: dict[str, Any], progress: bool = False, fence: Any = None) -> tuple[dict, dict, dict]:
        dep_ok = True
        if row["depends_on"]:
            dep = FileStore(store_root, create=False).rows([row["depends_on"]])[0]
            dep_ok = dep["status"] == "done"
        with open(log, "a") as fh:  # O_APPEND: whole lines from every process
            fh.write(json.dumps({"key": row["key"], "pid": os.getpid(), "dep_ok": dep_ok, **row}) + "\n")
        if row["key"] == hang:
            time.sleep(3600)
        time.sleep(0.01)
        return {"aji": 0.5}, {"total": 0.01}, {"pid": os.getpid()}

    return run_job


def _runner_process(study_json: dict, name: str, log: str, start: Any, hang: str | None = None) -> None:
    runner.run_job = _fake_job(Path(log), Path(study_json["output"]) / "store", hang)
    if start is not None:
        start.wait(120)  # all runners race from here: a slow process start must not leave one alone
    worker_loop(study_json, name, poll=0.02)


def _context() -> Any:
    """Fork where there is fork: the runners need no fresh interpreter (they run no torch), and starting
    four on a busy machine would otherwise take longer than the test."""
    return mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")


def _log(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_runner_processes_sharing_a_folder_without_sqlite_run_every_job_once(tmp_path):
    study = with_store(_study(tmp_path, seeds=[0, 1, 2], label_fractions=[0.25, 0.5]))
    jobs = expand(study)
    with open_store(study.output, "files") as store:
        store.sync(jobs)
    ctx = _context()
    start = ctx.Barrier(4)
    log = tmp_path / "log.jsonl"
    study_json = study.model_dump(mode="json")
    procs = [
        ctx.Process(target=_runner_process, args=(study_json, f"r{i}", str(log), start)) for i in range(4)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    assert all(p.exitcode == 0 for p in procs)
    ran = _log(log)
    assert sorted(r["key"] for r in ran) == sorted(j.key for j in jobs)  # every job exactly once
    assert all(r["dep_ok"] for r in ran)  # no cell started before its pretraining was done
    assert len({r["runner"] for r in ran}) >= 2  # the work was shared
    rows = read_rows(study.output)
    assert all(r["status"] == "done" and r["attempts"] == 1 for r in rows)
    assert {r["key"]: r["runner"] for r in rows} == {r["key"]: r["runner"] for r in ran}
    assert not (Path(study.output) / "results.sqlite").exists()
    assert len(list((Path(study.output) / "store" / "results").glob("*.json"))) == len(jobs)
    assert not [p for p in (Path(study.output) / "store").rglob(".*")]  # no temporary or clock files


def test_a_killed_runners_job_is_finished_by_another_while_sqlite_is_read_only(tmp_path):
    study = with_store(_study(tmp_path, seeds=[0, 1]))
    jobs = expand(study)
    out = Path(study.output)
    out.mkdir(parents=True)
    sqlite = out / "results.sqlite"  # a store the cluster cannot write (and must not touch)
    sqlite.write_bytes(b"read-only, not even a database")
    sqlite.chmod(stat.S_IRUSR | stat.S_IRGRP)
    victim = "synth/random/finetuned/f0.5/s1"
    log = tmp_path / "log.jsonl"
    study_json = study.model_dump(mode="json")
    with open_store(out, "files") as store:
        store.sync(jobs)

    # 1. a runner killed in the middle of a job
    ctx = _context()
    first = ctx.Process(target=_runner_process, args=(study_json, "killed", str(log), None, victim))
    first.start()
    deadline = time.time() + 120
    while victim not in [r["key"] for r in _log(log)] and time.time() < deadline:
        time.sleep(0.05)
    first.kill()
    first.join(30)
    before = {r["key"]: r for r in read_rows(out, backend="files")}
    assert before[victim]["status"] == "running" and before[victim]["runner"] == "killed"

    # 2. another runner (here, on the same host, which knows the dead process) finishes the study
    resumed: list[bool] = []
    fake = _fake_job(log, out / "store")

    def run_job(row: dict, progress: bool = False, fence: Any = None) -> tuple[dict, dict, dict]:
        resumed.append(row["resumed"])
        return fake(row, progress)

    runner.run_job, saved = run_job, runner.run_job
    try:
        worker_loop(study_json, "second", poll=0.02)
    finally:
        runner.run_job = saved
    ran = [r["key"] for r in _log(log)]
    assert ran.count(victim) == 2 and sorted(set(ran)) == sorted(j.key for j in jobs)
    assert len(ran) == len(jobs) + 1  # everything else exactly once
    after = {r["key"]: r for r in read_rows(out, backend="files")}
    assert all(r["status"] == "done" for r in after.values())
    assert after[victim]["runner"] == "second" and after[victim]["attempts"] == 2
    # the dead runner's job came first, resumed; the rest started afresh
    assert ran[len(ran) - len(resumed)] == victim and resumed == [True] + [False] * (len(resumed) - 1)
    assert sqlite.read_bytes() == b"read-only, not even a database"


# ------------------------------------------------------------------------- status, report and SLURM script


def test_status_and_report_rebuild_their_view_from_the_files(tmp_path):
    from sslseg.cli import app
    from sslseg.study.report import report_study
    from sslseg.study.runner import prepare

    study = _study(tmp_path, label_fractions=[0.5, 1.0], seeds=[0, 1, 2], analysis={"representation": False})
    write_synthetic_dataset(tmp_path / "data", n_images=6, size=32, seed=0)
    jobs = prepare(study)
    keys = [j.key for j in jobs]
    with FileStore(Path(study.output) / "store") as store:
        while (row := store.claim("w", keys)) is not None:
            if row["key"] == "synth/pretrain/densecl":
                store.fail(row["key"], "w", "out of memory")
                continue
            metrics = {}
            if row["kind"] == "finetune":
                score = (
                    0.4 + 0.3 * row["fraction"] + 0.1 * (row["pretraining"] == "simclr") + 0.01 * row["seed"]
                )
                metrics = dict.fromkeys(("aji", "aji_plus", "pq", "dsb_score", "f1@0.5"), score)
            store.finish(row["key"], "w", metrics, {"total": 10.0}, {})
        last = store.rows()[-1]
    assert last["status"] == "failed"
    status = CliRunner().invoke(app, ["study", "status", str(study.output)])
    assert status.exit_code == 0, status.output
    assert status.output.startswith(f"{len(keys) - 7} done, 7 failed")  # densecl and its 6 cells
    assert "failed synth/pretrain/densecl: out of memory" in status.output
    assert "its pretraining synth/pretrain/densecl failed" in status.output
    assert yaml.safe_load((Path(study.output) / "study.yaml").read_text())["store"] == "files"
    paths = report_study(study.output, progress=False)
    md = paths["markdown"].read_text()
    assert "simclr" in md and "Verdict" in md


def test_slurm_script_uses_the_files_store_unless_told_otherwise(tmp_path):
    import subprocess

    study = _study(tmp_path, store="auto")
    script = slurm_script(tmp_path / "my study.yaml", study, tasks=4, overrides=["finetune.train.epochs=3"])
    assert "--set store=files" in script and "--set finetune.train.epochs=3" in script
    assert "'" + str((tmp_path / "my study.yaml").resolve()) + "'" in script  # quoted for the shell
    (tmp_path / "job.sh").write_text(script)
    assert subprocess.run(["bash", "-n", str(tmp_path / "job.sh")]).returncode == 0
    assert "--set store=sqlite" in slurm_script(tmp_path / "s.yaml", _study(tmp_path, store="sqlite"), 2)


def test_auto_store_follows_the_folder_and_refuses_two(tmp_path):
    from sslseg.errors import ConfigError

    study = _study(tmp_path, store="auto")
    assert with_store(study).store == "sqlite" and with_store(study, "files").store == "files"
    (Path(study.output) / "store").mkdir(parents=True)
    assert with_store(study).store == "files"
    (Path(study.output) / "results.sqlite").write_bytes(b"")
    with pytest.raises(ConfigError, match="both"):
        with_store(study)
    assert with_store(_study(tmp_path, store="sqlite")).store == "sqlite"


@pytest.mark.parametrize("backend", ["sqlite", "files"])
def test_a_stopped_runner_leaves_its_job_to_the_next_at_once(tmp_path, monkeypatch, backend):
    store, jobs = _synced(tmp_path, backend)
    store.close()
    study = _study(tmp_path, store=backend)

    def interrupted(row: dict, progress: bool = False, fence: Any = None) -> tuple:
        raise KeyboardInterrupt  # as Ctrl-C, or Lightning's SIGTERM handling at a SLURM time limit

    monkeypatch.setattr(runner, "run_job", interrupted)
    with pytest.raises(KeyboardInterrupt):
        worker_loop(study.model_dump(mode="json"), "stopped", poll=0.01)
    with open_store(study.output, backend) as other:  # stale only after 600 s, were it not released
        again = other.claim("next", [j.key for j in jobs])
        assert again["key"] == jobs[0].key and again["resumed"] is True
