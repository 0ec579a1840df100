"""The layout registry: every registered layout detects and scans a sample of its own, and detection tries
the layouts in the registry's order (so a new layout is one module and one entry)."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sslseg.data.layouts import LAYOUTS, detect_layout, find_samples, registry
from sslseg.errors import DataError

H, W = 12, 16


def _png(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def _image() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (H, W), dtype=np.uint8)


def _mask() -> np.ndarray:
    mask = np.zeros((H, W), np.uint8)
    mask[2:6, 3:9] = 255
    return mask


def _pairs(root: Path) -> Path:
    _png(root / "images" / "a.png", _image())
    _png(root / "masks" / "a.png", _mask())
    return root


def _dsb(root: Path) -> Path:
    _png(root / "a" / "images" / "a.png", _image())
    _png(root / "a" / "masks" / "m0.png", _mask())
    return root


def _monuseg(root: Path) -> Path:
    _png(root / "a.png", _image())
    vertices = "".join(f'<Vertex X="{x}" Y="{y}"/>' for x, y in [(2, 2), (8, 2), (8, 6), (2, 6)])
    (root / "a.xml").write_text(
        f"<Annotations><Region Id='1'><Vertices>{vertices}</Vertices></Region></Annotations>"
    )
    return root


def _coco(root: Path) -> Path:
    _png(root / "images" / "a.png", _image())
    data = {
        "images": [{"id": 1, "file_name": "a.png", "height": H, "width": W}],
        "annotations": [{"id": 1, "image_id": 1, "segmentation": [[2, 2, 8, 2, 8, 6, 2, 6]]}],
    }
    (root / "train.json").write_text(json.dumps(data))
    return root


def _unlabeled(root: Path) -> Path:
    _png(root / "raw" / "a.png", _image())
    return root


SAMPLES: dict[str, Callable[[Path], Path]] = {
    "pairs": _pairs,
    "dsb": _dsb,
    "monuseg": _monuseg,
    "coco": _coco,
    "unlabeled": _unlabeled,
}


def test_every_registered_layout_has_a_sample_here():
    assert set(SAMPLES) == set(LAYOUTS), "add a sample folder for the new layout to SAMPLES"


@pytest.mark.parametrize("name", list(LAYOUTS))
def test_each_layout_detects_and_scans_its_own_sample(tmp_path: Path, name: str):
    layout = LAYOUTS[name]
    root = SAMPLES[name](tmp_path)
    assert layout.detect(root)
    assert detect_layout(root) == name
    [sample] = find_samples(root)
    assert sample.id == "a"
    if layout.label is None:
        assert sample.label is None
    else:
        assert isinstance(sample.label, layout.label)
        labels = sample.label.load((H, W))
        assert labels.shape == (H, W) and labels[4, 5] > 0 and labels[10, 14] == 0  # the object, not more


def test_detection_follows_the_registry_order(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    root = _pairs(tmp_path)  # an image folder is also an unlabeled dataset: the first match wins
    assert LAYOUTS["unlabeled"].detect(root)
    assert detect_layout(root) == "pairs"
    monkeypatch.setattr(registry, "LAYOUTS", dict(reversed(list(LAYOUTS.items()))))
    assert detect_layout(root) == "unlabeled"


def test_unknown_layout_lists_the_registered_ones(tmp_path: Path):
    with pytest.raises(DataError, match="expected auto or one of " + ", ".join(LAYOUTS)):
        find_samples(_pairs(tmp_path), layout="nope")
