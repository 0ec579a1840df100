"""The Python API: `from sslseg import pretrain, finetune, evaluate, predict, export` gives callables that run
each step, `import sslseg` loads none of them (nor torch), and the README's example runs as written."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
from pathlib import Path

import pytest

import sslseg

README = Path(__file__).resolve().parents[1] / "README.md"
FUNCTIONS = {
    "pretrain": "pretrain",
    "finetune": "finetune",
    "evaluate": "evaluate_checkpoint",
    "predict": "predict_files",
    "export": "export_model",
    "select": "select",
}


def test_import_sslseg_loads_no_step_and_no_torch():
    code = (
        "import sys, sslseg; print(sorted(m for m in sys.modules if m == 'torch' or m.startswith('sslseg.')))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


@pytest.mark.parametrize("name", list(FUNCTIONS))
def test_each_step_is_its_module_and_callable_with_the_functions_signature(name):
    from importlib import import_module

    step = getattr(sslseg, name)
    module = import_module(f"sslseg.{name}")
    function = getattr(module, FUNCTIONS[name])
    assert step is module and callable(step)
    assert inspect.signature(step) == inspect.signature(function)
    assert sslseg.API[name] == FUNCTIONS[name]
    assert function.__doc__  # documented
    assert name in dir(sslseg)


def test_calling_a_step_runs_its_function(monkeypatch):
    from sslseg import export

    seen = []
    monkeypatch.setattr(export, "export_model", lambda *a, **k: seen.append((a, k)) or "done")
    assert export("ckpt", out="x") == "done" and seen == [(("ckpt",), {"out": "x"})]
    with pytest.raises(AttributeError, match="has no attribute 'train'"):
        sslseg.train  # noqa: B018
    with pytest.raises(ValueError, match="not one of the API's steps"):
        sslseg.entry_point("sslseg.config")


def _readme_example() -> str:
    section = README.read_text().split("## Python API", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```python\n(.*?)```", section, re.S)
    assert len(blocks) == 1, "the Python API section has one example"
    return blocks[0]


def test_readme_example_runs(tmp_path, monkeypatch):
    pytest.importorskip("onnxruntime")  # the example exports to ONNX
    monkeypatch.chdir(tmp_path)
    namespace: dict = {}
    exec(compile(_readme_example(), "README.md (Python API)", "exec"), namespace)
    assert 0 <= namespace["scores"]["aji"] <= 1
    assert len(namespace["report"].labels) == 6 and not namespace["report"].failed
    assert set(namespace["exported"].max_abs_diff) == {"torchscript", "onnx"}
    assert (tmp_path / "api_demo" / "export" / "model.onnx").is_file()
    assert (tmp_path / "api_demo" / "pretrain" / "encoder.safetensors").is_file()
