"""`sslseg export`: TorchScript and ONNX reproduce PyTorch (and a mismatch fails loudly), the post-processing
settings survive the trip through the sidecar, and the bioimage.io package passes bioimage.io's validator."""

from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from conftest import tiny_instance_checkpoint
from typer.testing import CliRunner

from sslseg.cli import app
from sslseg.errors import ConfigError, ExportCheckFailed
from sslseg.evaluate import load_model
from sslseg.export import (
    TOLERANCE,
    check_close,
    export_model,
    labels_from_probabilities,
    load_sidecar,
    max_abs_difference,
    onnx_runner,
    parse_export_formats,
    probability_net,
    random_tiles,
    require,
    torchscript_runner,
)
from sslseg.segmentation.inference import probabilities_to_labels

TUNED = {"fg_threshold": 0.37, "seed_threshold": 0.61, "min_size": 5}  # not the defaults


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory) -> Path:
    """A tiny instance model trained for one step, with post-processing thresholds as tuning leaves them."""
    # a small encoder keeps each exported file (and the package, which holds three) at about 1.5 MB
    path = tiny_instance_checkpoint(
        tmp_path_factory.mktemp("tiny"),
        model={"encoder": "tu-mobilenetv3_small_050"},
        postprocess={"tune": False},
    )
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    ckpt["hyper_parameters"]["config"]["postprocess"].update(TUNED)
    torch.save(ckpt, path)
    return path


def test_torchscript_and_onnx_reproduce_pytorch_at_any_size(checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    out = tmp_path / "export"
    result = CliRunner().invoke(
        app, ["export", str(checkpoint), "--out", str(out), "--formats", "torchscript,onnx"]
    )
    assert result.exit_code == 0, result.output
    printed = json.loads(result.output[result.output.index("{") :])
    for fmt in ("torchscript", "onnx"):
        assert 0 <= printed["max_abs_diff"][fmt] <= TOLERANCE, printed
        assert Path(printed["files"][fmt]).is_file()
    assert not (out / "bioimageio.zip").exists()  # only the formats asked for

    # a size and batch neither export saw: the spatial axes are dynamic, the outputs probabilities
    net = probability_net(load_model(checkpoint, device="cpu"))
    x = torch.randn(3, 1, 96, 160)
    with torch.no_grad():
        expected = net(x).numpy()
    assert expected.min() >= 0 and expected.max() <= 1 and expected.shape == (3, 3, 96, 160)
    for run in (torchscript_runner(out / "model.torchscript.pt"), onnx_runner(out / "model.onnx")):
        assert np.abs(run(x) - expected).max() <= TOLERANCE


def test_a_format_that_differs_from_pytorch_fails_loudly(checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    result = export_model(checkpoint, tmp_path, "onnx", progress=False)
    path = result.files["onnx"]
    net = probability_net(load_model(checkpoint, device="cpu"))
    tiles = random_tiles(1, net.stride)
    check_close("onnx", path, max_abs_difference(net, onnx_runner(path), tiles))  # the export is good
    with torch.no_grad():
        net.net.segmentation_head[0].bias.add_(0.5)  # the network the file claims to be changes
    diff = max_abs_difference(net, onnx_runner(path), tiles)
    assert diff > 100 * TOLERANCE
    with pytest.raises(
        ExportCheckFailed, match=r"model\.onnx: the onnx export differs from PyTorch by up to"
    ):
        check_close("onnx", path, diff)
    with pytest.raises(ExportCheckFailed):
        check_close("onnx", path, float("nan"))


def test_sidecar_carries_the_post_processing_and_reproduces_sslseg_labels(checkpoint, tmp_path):
    pytest.importorskip("onnxruntime")
    export_model(checkpoint, tmp_path, "onnx", progress=False)
    module = load_model(checkpoint, device="cpu")
    settings = load_sidecar(tmp_path)
    assert settings.postprocess == module.cfg.postprocess
    assert settings.postprocess.model_dump(include=set(TUNED)) == TUNED
    assert settings.task == "instance" and settings.instance_head == "contact"
    assert settings.outputs == ["foreground", "distance", "contact"]
    assert settings.preprocessing["normalization"] == "per_image"

    # labels from the ONNX file's probabilities and the sidecar = sslseg's own post-processing
    x = torch.from_numpy(np.random.default_rng(0).normal(size=(1, 1, 64, 64)).astype(np.float32))
    probs = onnx_runner(tmp_path / "model.onnx")(x)[0]
    with torch.no_grad():
        reference = probability_net(module)(x)[0]
    expected = probabilities_to_labels(
        reference, "instance", module.cfg.postprocess, module.cfg.model.instance_head
    )
    np.testing.assert_array_equal(labels_from_probabilities(probs, settings), expected)
    with pytest.raises(ValueError, match="expected 3×H×W probabilities"):
        labels_from_probabilities(probs[:1], settings)


def test_bioimageio_package_passes_the_validator(checkpoint, tmp_path):
    pytest.importorskip("bioimageio.spec")
    pytest.importorskip("onnxruntime")
    from bioimageio.spec import load_description

    result = export_model(
        checkpoint,
        tmp_path,
        "bioimageio",
        authors=["Ada Lovelace"],
        cite=[("A paper", "https://example.org/paper")],
        test_package=False,  # bioimageio.core's model test takes minutes; the validator below does not
        progress=False,
    )
    package = result.files["bioimageio"]
    assert package == tmp_path / "bioimageio.zip" and result.package_bytes == package.stat().st_size
    assert result.validation["bioimageio.spec"] in ("passed", "valid-format")
    names = set(zipfile.ZipFile(package).namelist())
    expected = {"rdf.yaml", "sslseg.yaml", "README.md", "cover.png", "test_input.npy", "test_output.npy"}
    assert expected | {"model.state_dict.pt", "model.torchscript.pt", "model.onnx"} <= names

    descr = load_description(package, format_version="latest")
    assert descr.validation_summary.status in ("passed", "valid-format"), descr.validation_summary.format()
    assert {w for w, d in descr.weights if d is not None} >= {"pytorch_state_dict", "torchscript", "onnx"}
    assert [a.name for a in descr.authors] == ["Ada Lovelace"]
    assert "zero_mean_unit_variance" in [step.id for step in descr.inputs[0].preprocessing]
    rdf = yaml.safe_load(zipfile.ZipFile(package).read("rdf.yaml"))
    assert rdf["config"]["sslseg"]["postprocess"]["fg_threshold"] == TUNED["fg_threshold"]
    packed = yaml.safe_load(zipfile.ZipFile(package).read("sslseg.yaml"))
    assert packed["postprocess"] == load_sidecar(tmp_path).postprocess.model_dump(mode="json")
    assert "bioimageio.core" not in result.validation


def test_bad_options_and_missing_extras_are_clear_errors(checkpoint, tmp_path, monkeypatch):
    with pytest.raises(ConfigError, match="unknown export format.*keras.*choose from torchscript"):
        parse_export_formats("onnx,keras")
    with pytest.raises(
        ConfigError, match=r"not installed; install the export extra: pip install 'sslseg\[export\]'"
    ):
        require("sslseg_no_such_package", "testing")
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # as if it were not installed
    with pytest.raises(ConfigError, match="onnxruntime.*sslseg\\[export\\]"):
        export_model(checkpoint, tmp_path / "x", "torchscript,onnx", progress=False)
    assert not (tmp_path / "x").exists()  # nothing written before the check
