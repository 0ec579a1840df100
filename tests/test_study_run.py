"""A whole study through the command line: a runner killed mid-job, two runners restarted at once, the
report. Tiny images and budgets; about a minute on 2 cores."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from html import escape
from pathlib import Path

import yaml

from sslseg.data.synth import write_synthetic_dataset


def _sslseg(*args: str, cwd: Path) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # two runners on two cores: no oversubscription
    return subprocess.Popen(
        [sys.executable, "-m", "sslseg", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


def _jobs(db: Path) -> dict[str, dict]:
    with sqlite3.connect(db) as con:
        con.row_factory = sqlite3.Row
        return {
            r["key"]: dict(r) for r in con.execute("SELECT key, status, attempts, runner, info FROM jobs")
        }


def _md_section(md: str, heading: str) -> str:
    """The Markdown between `heading` (a whole line) and the next heading of any level."""
    lines = md.splitlines()
    assert heading in lines, f"the report has no {heading!r} section"
    start = lines.index(heading) + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("#")), len(lines))
    return "\n".join(lines[start:end])


def _md_table(section: str) -> list[list[str]]:
    """The body rows of the first Markdown table in a section, as lists of cells."""
    rows = [line.strip("|").split("|") for line in section.splitlines() if line.startswith("|")]
    return [[c.strip() for c in r] for r in rows[2:]]  # past the header and the |---| line


def _verdicts(md: str) -> list[str]:
    """The report's verdict lines, one per dataset."""
    return [line[2:] for line in _md_section(md, "## Verdict").splitlines() if line.startswith("- ")]


def test_killed_study_resumes_and_two_runners_share_the_rest(tmp_path):
    write_synthetic_dataset(tmp_path / "data", n_images=12, size=48, seed=0)
    study = {
        "name": "tiny",
        "output": "study",
        "datasets": [{"name": "synth", "train": "data", "task": "instance", "test_fraction": 0.25}],
        "pretrainings": [{"name": "random", "init": "random"}, {"name": "simclr", "method": "simclr"}],
        "label_fractions": [0.5],
        "seeds": [0, 1],
        "pretrain": {"views": {"size": 32}, "train": {"epochs": 1, "steps_per_epoch": 2, "batch_size": 8}},
        "finetune": {
            "model": {"decoder_channels": [32, 16, 16, 16, 16]},
            "train": {"epochs": 4, "steps_per_epoch": 3, "batch_size": 2, "crop_size": 32},
            "postprocess": {"tune": False},
        },
        "analysis": {"representation": False},
    }
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(study))
    db = tmp_path / "study" / "results.sqlite"

    # 1. a runner killed while a fine-tuning job has written its first checkpoint
    first = _sslseg("study", "run", "s.yaml", "--no-report", cwd=tmp_path)
    victim = None
    deadline = time.time() + 240
    while victim is None and time.time() < deadline and first.poll() is None:
        time.sleep(0.2)
        if not db.exists():
            continue
        try:
            running = [k for k, r in _jobs(db).items() if r["status"] == "running" and "/pretrain/" not in k]
        except sqlite3.OperationalError:
            continue  # the runner holds the write lock this instant
        for key in running:
            if (tmp_path / "study" / "cells" / key / "checkpoints" / "last.ckpt").exists():
                victim = key
    assert victim is not None, f"no fine-tuning job got to a checkpoint: {first.communicate()[1][-2000:]}"
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    before = _jobs(db)
    done_before = {k for k, r in before.items() if r["status"] == "done"}
    assert before[victim]["status"] == "running"  # the dead runner's claim is still in the store

    # 2. two runners at once finish the study: the killed job is resumed, nothing done is redone
    runners = [_sslseg("study", "run", "s.yaml", "--no-report", cwd=tmp_path) for _ in range(2)]
    for r in runners:
        out, err = r.communicate(timeout=400)
        assert r.returncode == 0, err[-2000:]
    after = _jobs(db)
    assert all(r["status"] == "done" for r in after.values()), after
    assert len(after) == 1 + 2 * 2
    # done jobs keep their products, not their resume state; with the representation analysis off the report
    # reopens no model, so no cell keeps its weights (keep_weights: report), every pretraining does
    cells = tmp_path / "study" / "cells"
    assert not list(tmp_path.glob("study/**/checkpoints"))
    assert len(list(cells.glob("**/result.json"))) == 4 and not list(cells.glob("**/best.ckpt"))
    assert list(tmp_path.glob("study/pretrain/**/encoder.safetensors"))
    for key, r in after.items():
        if key in done_before:
            assert r["attempts"] == 1 and r["runner"] == before[key]["runner"]  # never redone
        elif key == victim:
            assert r["attempts"] == 2 and '"resumed": true' in r["info"]
        else:
            assert r["attempts"] == 1

    # 3. the report
    rep = _sslseg("report", "study", cwd=tmp_path)
    out, err = rep.communicate(timeout=200)
    assert rep.returncode == 0, err[-2000:]
    md = (tmp_path / "study" / "report" / "report.md").read_text()
    # the verdict compares the one SSL pretraining with random init on finished cells
    (verdict,) = _verdicts(md)
    assert verdict.startswith("synth: ") and "simclr" in verdict, verdict
    assert "not enough finished cells" not in verdict
    assert (tmp_path / "study" / "report" / "report.html").stat().st_size > 10_000

    # 4. a finished study: the dry run lists every job as done with its measured time; status agrees
    dry = _sslseg("study", "run", "s.yaml", "--dry-run", cwd=tmp_path)
    out, err = dry.communicate(timeout=200)
    assert dry.returncode == 0, err[-2000:]
    job_status = [line.split()[1] for line in out.splitlines() if line.startswith("synth/")]
    assert job_status == ["done"] * 5 and "about 0 min of work left" in out, out
    status = _sslseg("study", "status", "study", cwd=tmp_path)
    out, _ = status.communicate(timeout=100)
    assert out.startswith("5 done")


def test_quick_demo_ends_in_a_full_report(tmp_path):
    demo = _sslseg("demo", "--quick", "--out", str(tmp_path / "demo"), cwd=tmp_path)
    out, err = demo.communicate(timeout=600)
    assert demo.returncode == 0, err[-3000:]
    assert "report:" in out and "synthetic-nuclei" in out
    report = tmp_path / "demo" / "study" / "report"
    html, md = (report / "report.html").read_text(), (report / "report.md").read_text()
    sections = ("Representation similarity", "How far fine-tuning moves", "Example predictions")
    for section in (*sections, "Chosen images against random draws"):
        assert section in html, section
    (verdict,) = _verdicts(md)
    assert verdict.startswith("synthetic-nuclei: ") and "not enough finished cells" not in verdict, verdict
    assert f"<div class='verdict'>{escape(verdict)}</div>" in html
    # the uncertainty section: one row per pretraining, each with a measured mean uncertainty and error
    assert "<h3>Prediction uncertainty</h3>" in html
    rows = _md_table(_md_section(md, "### Prediction uncertainty"))
    assert {r[0] for r in rows} == {"random", "densecl", "semi", "typiclust"}, rows
    for name, uncertainty, error, *_ in rows:
        assert 0 <= float(uncertainty) <= 1 and 0 <= float(error) <= 1, (name, uncertainty, error)
    assert (tmp_path / "demo" / "study.yaml").is_file()  # the study the demo ran, to edit and rerun
    # only the cells the report reopens (smallest budget, first seed) keep their weights: 4 of 16
    cells = tmp_path / "demo" / "study" / "cells"
    assert len(list(cells.glob("**/result.json"))) == 16
    kept = sorted(str(p.parent.relative_to(cells)) for p in cells.glob("**/best.ckpt"))
    assert kept == [
        f"synthetic-nuclei/{p}/finetuned/n2/s0" for p in ("densecl", "random", "semi", "typiclust")
    ]
