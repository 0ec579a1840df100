"""The command line as a user meets it: one-line errors with exit code 2, verify's exit code, synth."""

import subprocess
import sys
from pathlib import Path

import numpy as np

from sslseg.data.io import write_image, write_label


def sslseg(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "sslseg", *args], capture_output=True, text=True, cwd=cwd, timeout=300
    )


def test_missing_dataset_is_one_clear_line(tmp_path):
    r = sslseg("finetune", "--train", str(tmp_path / "nowhere"), "--output", str(tmp_path / "run"))
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert "nowhere" in r.stderr and "error:" in r.stderr


def test_misspelt_setting_suggests_the_key(tmp_path):
    r = sslseg("finetune", "--set", "train.epoch=3")
    assert r.returncode == 2 and "did you mean 'train.epochs'" in r.stderr
    assert "Traceback" not in r.stderr


def test_verify_lists_problems_with_files_and_exits_1(tmp_path):
    write_image(tmp_path / "images" / "a.tif", np.zeros((8, 8), np.uint8))
    write_label(tmp_path / "labels" / "a.tif", np.zeros((9, 8), np.int32))  # wrong size
    write_image(tmp_path / "images" / "b.tif", np.zeros((8, 8), np.uint8))  # no mask: unlabeled, no error
    r = sslseg("data", "verify", str(tmp_path))
    assert r.returncode == 1
    # one line per problem, naming its file, then the summary
    lines = r.stdout.splitlines()
    assert any(line.startswith("ERROR") and "a.tif" in line and "image size" in line for line in lines), (
        r.stdout
    )
    assert not any(line.startswith("ERROR") and "b.tif" in line for line in lines), r.stdout
    assert any(line.startswith("IMAGES") and "1 unlabeled" in line and "b.tif" in line for line in lines), (
        r.stdout
    )
    assert lines[-1].startswith("NOT OK") and "1 errors" in lines[-1], r.stdout


def test_synth_then_verify_is_clean(tmp_path):
    r = sslseg("data", "synth", str(tmp_path / "d"), "--n", "3", "--size", "64")
    assert r.returncode == 0, r.stderr
    r = sslseg("data", "verify", str(tmp_path / "d"))
    assert r.returncode == 0, r.stdout
