"""`--device`: auto takes CUDA, then Apple's MPS, then the CPU; a device this machine lacks is one clear error
for predict and evaluate, before any checkpoint or image is read."""

from __future__ import annotations

import pytest
import torch

from sslseg.device import available_devices, resolve_device
from sslseg.errors import ConfigError


def _machine(monkeypatch, cuda: bool, mps: bool) -> None:
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: int(cuda))
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: mps)


@pytest.mark.parametrize(
    ("cuda", "mps", "best"), [(True, True, "cuda"), (False, True, "mps"), (False, False, "cpu")]
)
def test_auto_prefers_cuda_then_mps_then_cpu(monkeypatch, cuda, mps, best):
    _machine(monkeypatch, cuda, mps)
    assert resolve_device("auto") == torch.device(best)
    assert available_devices()[-1] == "cpu"
    assert resolve_device("CPU") == torch.device("cpu")


def test_a_device_that_is_not_there_is_a_clear_error(monkeypatch):
    _machine(monkeypatch, cuda=False, mps=True)
    assert resolve_device("mps") == torch.device("mps")
    with pytest.raises(
        ConfigError, match=r"device 'cuda' is not available on this machine \(available: mps, cpu\)"
    ):
        resolve_device("cuda")
    _machine(monkeypatch, cuda=True, mps=False)
    assert resolve_device("cuda:0") == torch.device("cuda:0")
    with pytest.raises(ConfigError, match="'cuda:3' does not exist: this machine has 1 CUDA device"):
        resolve_device("cuda:3")
    with pytest.raises(ConfigError, match="'mps' is not available"):
        resolve_device("mps")
    for bad in ("tpu", "cpu:1", "cuda:x"):
        with pytest.raises(ConfigError, match="unknown device"):
            resolve_device(bad)


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_predict_and_evaluate_refuse_a_missing_device(monkeypatch, tmp_path, capsys, command):
    _machine(monkeypatch, cuda=False, mps=False)
    ckpt = tmp_path / "best.ckpt"
    ckpt.write_bytes(b"not read: the device is checked first")
    (tmp_path / "images").mkdir()
    (tmp_path / "images" / "a.png").write_bytes(b"")
    from sslseg.cli import main

    monkeypatch.setattr(
        "sys.argv", ["sslseg", command, str(ckpt), str(tmp_path / "images"), "--device", "cuda"]
    )
    with pytest.raises(SystemExit) as stop:
        main()
    assert stop.value.code == 2
    assert "error: device 'cuda' is not available on this machine (available: cpu)" in capsys.readouterr().err
