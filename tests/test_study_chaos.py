"""Chaos on a study folder shared through the files store: three runner processes, one of them a newer sslseg
(its configs have an extra option with a default), are killed, or suspended past the stale timeout, at
random points and restarted, a bounded number of times. Afterwards every job has exactly one result, stored
by the runner that held its claim last; no runner found its folder removed or rewritten while it still held
the claim; nothing failed. The training is faked by a job that writes a few fenced steps (seconds in all)."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import random
import signal
import time
from pathlib import Path
from typing import Any

from pydantic import Field

from sslseg.atomic import write_text
from sslseg.config import FinetuneConfig, PretrainConfig
from sslseg.data.synth import write_synthetic_dataset
from sslseg.fence import check_fence
from sslseg.study import runner, spec
from sslseg.study.spec import StudyConfig, expand
from sslseg.study.store import FileStore, read_rows

STALE = 1.5  # seconds without a heartbeat before a claim is taken over
BEAT = 0.1
STEPS = 6
EVENTS = 10
SEED = 7


def _study(tmp_path: Path) -> StudyConfig:
    return StudyConfig.model_validate(
        {
            "name": "chaos",
            "output": str(tmp_path / "study"),
            "datasets": [{"name": "synth", "train": str(tmp_path / "data"), "task": "instance"}],
            "pretrainings": [
                {"name": "random", "init": "random"},
                {"name": "simclr", "method": "simclr"},
                {"name": "densecl", "method": "densecl"},
            ],
            "label_fractions": [0.25, 0.5],
            "seeds": [0, 1],
            "store": "files",
        }
    )


def _log(folder: Path, record: dict[str, Any]) -> None:
    with open(folder / f"{os.getpid()}.jsonl", "a") as fh:  # one file per process, whole lines
        fh.write(json.dumps(record) + "\n")


def _runner_process(study_json: dict, name: str, newer: bool, logs: str) -> None:
    log_dir = Path(logs)
    if newer:  # a runner of a newer sslseg: an option more, with its default, in both configs

        class NewerFinetune(FinetuneConfig):
            new_option: int = Field(3)

        class NewerPretrain(PretrainConfig):
            another_option: str = "as before"

        spec.FinetuneConfig, spec.PretrainConfig, spec._DEFAULTS = NewerFinetune, NewerPretrain, {}

    def _run(row: dict, config: dict, resume: bool, progress: bool) -> tuple[dict, dict, dict]:
        out = Path(config["output"])
        start = 0
        if resume:
            done = [int(p.name.split("-")[1]) for p in out.glob("step-*")]
            start = max(done, default=-1) + 1
        mine: list[Path] = []
        for step in range(start, STEPS):
            missing = [str(p) for p in mine if not p.exists()]
            check_fence()  # after the look: a folder moved by a runner that took the job over is no violation
            if missing:
                _log(log_dir, {"violation": "folder changed under its live runner", "key": row["key"]})
            write_text(out / f"step-{step}", row["token"])
            mine.append(out / f"step-{step}")
            time.sleep(0.1)
        return {"aji": 0.5}, {"total": 0.3}, {"token": row["token"]}

    runner._run = _run
    finish = FileStore.finish

    def logged_finish(self: FileStore, key: str, who: str, *args: Any) -> bool:
        stored = finish(self, key, who, *args)
        if stored:
            _log(log_dir, {"finished": key, "runner": who, "token": args[2]["token"]})
        return stored

    FileStore.finish = logged_finish  # type: ignore[method-assign]
    study = StudyConfig.model_validate(study_json)
    runner.prepare(study)  # the newer runner adopts every job as its own version, the older ones back
    runner.worker_loop(study_json, name, poll=0.05, stale_after=STALE, heartbeat=BEAT)


def test_three_runners_one_newer_killed_and_suspended_at_random_run_every_job_once(tmp_path):
    write_synthetic_dataset(tmp_path / "data", n_images=12, size=48)
    study = _study(tmp_path)
    jobs = expand(study)
    runner.prepare(study)
    logs = tmp_path / "logs"
    logs.mkdir()
    study_json = study.model_dump(mode="json")
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    versions = {"r0": False, "r1": False, "r2": True}

    def start(name: str) -> Any:
        p = ctx.Process(target=_runner_process, args=(study_json, name, versions[name], str(logs)))
        p.start()
        return p

    procs = {name: start(name) for name in versions}
    rng = random.Random(SEED)
    counts = {"killed": 0, "suspended": 0, "restarted": 0}
    deadline = time.time() + 120
    while sum(counts.values()) - counts["restarted"] < EVENTS and time.time() < deadline:
        time.sleep(rng.uniform(0.2, 0.7))
        name = rng.choice(sorted(procs))
        p = procs[name]
        if not p.is_alive():
            if not any(q.is_alive() for q in procs.values()):
                break  # the study is done
            continue
        if rng.random() < 0.5:
            os.kill(p.pid, signal.SIGKILL)
            p.join(10)
            counts["killed"] += 1
            procs[name] = start(name)
            counts["restarted"] += 1
        else:
            os.kill(p.pid, signal.SIGSTOP)
            time.sleep(STALE + 0.6)  # long enough for its claim to go stale and be taken over
            os.kill(p.pid, signal.SIGCONT)
            counts["suspended"] += 1
    for p in procs.values():
        p.join(max(1.0, deadline - time.time()))
        if p.is_alive():
            p.kill()
    assert all(p.exitcode == 0 for p in procs.values()), {n: p.exitcode for n, p in procs.items()}

    records = [json.loads(line) for f in logs.glob("*.jsonl") for line in f.read_text().splitlines()]
    assert [r for r in records if "violation" in r] == []
    finished = [r["finished"] for r in records if "finished" in r]
    assert sorted(finished) == sorted(j.key for j in jobs)  # every job's result exactly once
    rows = read_rows(study.output, backend="files")
    assert all(r["status"] == "done" for r in rows)
    for row in rows:  # the result comes from the runner that holds the job's folder last
        out = Path(row["config"]["output"])
        holder = (out / ".claim").read_text()
        assert row["info"]["token"] == row["token"] == holder, row["key"]
        # the steps were written claim after claim: no runner wrote again once another had taken over
        writers = [(out / f"step-{i}").read_text() for i in range(STEPS)]
        blocks = [w for i, w in enumerate(writers) if i == 0 or w != writers[i - 1]]
        assert len(blocks) == len(set(blocks)) and blocks[-1] == holder, (row["key"], writers)
    takeovers = sum(r["attempts"] - 1 for r in rows)
    print(json.dumps({"chaos": counts, "jobs": len(jobs), "results": len(finished), "takeovers": takeovers}))
    assert counts["killed"] and counts["suspended"] and takeovers  # the chaos reached running jobs
