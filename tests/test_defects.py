"""The planted-defect matrix: every kind of bad input a user may bring, and what they are told.

Broken files are errors that `sslseg data verify` lists and that stop training before it starts, each
naming the file and the problem. Unusual but valid images (RGBA, palette, 16-bit, float, mixed gray and
colour) are read correctly; a mix of channel counts is a documented, warned correction. Bad settings and
unfitting weights are one-line errors naming the key or the file. (Unit tests of single readers and checks
live in test_data_io, test_data_verify, test_config, test_splits and test_weights. An image without a
label is no defect: it joins the unlabeled pool, see test_label_budget.)
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image
from test_faults import sslseg

from sslseg.data.datasets import load_samples, load_unlabeled
from sslseg.data.io import read_image
from sslseg.data.layouts import find_samples
from sslseg.data.verify import verify_dataset
from sslseg.errors import DataError

H, W = 16, 20
RNG = np.random.default_rng(7)


def _png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
    return path


def _rgb() -> np.ndarray:
    return RNG.integers(0, 256, (H, W, 3), dtype=np.uint8)


def _mask(values: tuple[int, ...] = (255,), shape: tuple[int, int] = (H, W)) -> np.ndarray:
    mask = np.zeros(shape, np.uint8)
    for i, v in enumerate(values):
        mask[2 + 4 * i : 5 + 4 * i, 3:9] = v
    return mask


def _clean(root: Path, n: int = 3) -> Path:
    """n RGB PNG images with binary 0/255 masks in images/ + masks/."""
    for i in range(n):
        _png(root / "images" / f"s{i}.png", _rgb())
        _png(root / "masks" / f"s{i}.png", _mask())
    return root


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


# --- broken files: (what is planted, the file it names, the problem verify reports, the training error) --


def _corrupt_bytes(root: Path) -> Path:
    (root / "images" / "s0.png").write_bytes(RNG.integers(0, 256, 600, dtype=np.uint8).tobytes())
    return root / "images" / "s0.png"


def _truncated_png(root: Path) -> Path:
    _truncate(root / "images" / "s0.png")
    return root / "images" / "s0.png"


def _truncated_tiff(root: Path) -> Path:
    (root / "images" / "s0.png").unlink()
    path = root / "images" / "s0.tif"
    tifffile.imwrite(path, RNG.integers(0, 256, (64, 64, 3), dtype=np.uint8), compression="zlib")
    _truncate(path)
    return path


def _zero_byte_mask(root: Path) -> Path:
    (root / "masks" / "s1.png").write_bytes(b"")
    return root / "masks" / "s1.png"


def _mask_of_another_size(root: Path) -> Path:
    return _png(root / "masks" / "s1.png", _mask(shape=(H - 4, W)))


def _binary_mask_with_a_2(root: Path) -> Path:
    return _png(root / "masks" / "s2.png", _mask((1, 2)))


def _empty_folder(root: Path) -> Path:
    for path in sorted(root.rglob("*"), reverse=True):
        path.unlink() if path.is_file() else path.rmdir()
    return root


BROKEN: dict[str, tuple[Callable[[Path], Path], str, str]] = {
    "corrupt image bytes": (_corrupt_bytes, "truncated or corrupt PNG", "truncated or corrupt PNG"),
    "truncated PNG": (_truncated_png, "truncated or corrupt PNG", "truncated or corrupt PNG"),
    "truncated TIFF": (_truncated_tiff, "truncated or corrupt TIFF", "truncated or corrupt TIFF"),
    "zero-byte file": (_zero_byte_mask, "file is empty (0 bytes)", "file is empty (0 bytes)"),
    "mask of another size": (_mask_of_another_size, "does not match image size", "does not match image size"),
    "binary mask holding 0/1/2": (
        _binary_mask_with_a_2,
        "unexpected label values {0, 1, 2}: a binary mask should hold {0, 1} or {0, 255}",
        "mask values [0, 1, 2] do not fit 2 classes (expected {0, 1} or {0, 255}); if the mask has more "
        "classes, set data.num_classes",
    ),
    "empty folder": (_empty_folder, "empty dataset: no image files found", "empty dataset: no image files"),
}


@pytest.mark.parametrize("defect", list(BROKEN))
def test_verify_names_the_file_and_the_problem(defect, tmp_path, capsys):
    plant, problem, _ = BROKEN[defect]
    bad = plant(_clean(tmp_path / "data"))
    code, out, _ = sslseg(capsys, "data", "verify", str(tmp_path / "data"))
    assert code == 1
    errors = [line for line in out.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and f"{bad}: " in errors[0] and problem in errors[0], out


@pytest.mark.parametrize("defect", list(BROKEN))
def test_training_stops_before_it_starts_naming_the_file_and_the_problem(defect, tmp_path):
    plant, _, problem = BROKEN[defect]
    bad = plant(_clean(tmp_path / "data"))
    with pytest.raises(DataError) as e:  # what `finetune` does before it builds a model
        load_samples(find_samples(tmp_path / "data"), "semantic", 2, progress=False)
    assert e.value.path == bad and problem in e.value.problem


# --- unusual images that are valid: read exactly, verified clean, trained on ----------------------------

_RGBA = RNG.integers(0, 256, (H, W, 4), dtype=np.uint8)  # alpha varies: a real fourth channel
_PALETTE = Image.fromarray(_rgb()).convert("P")
_GRAY16 = RNG.integers(0, 2**16, (H, W), dtype=np.uint16)
_RGB16 = RNG.integers(0, 2**16, (H, W, 3), dtype=np.uint16)
_FLOAT = RNG.normal(100.0, 30.0, (H, W)).astype(np.float32)

VALID: dict[str, tuple[str, Callable[[Path], None], np.ndarray, int]] = {
    # name: (file name, writer, the array read_image must return, channels training uses)
    "RGBA PNG": ("a.png", lambda p: Image.fromarray(_RGBA).save(p), _RGBA, 4),
    "palette PNG": ("a.png", _PALETTE.save, np.asarray(_PALETTE.convert("RGB")), 3),
    "16-bit gray PNG": ("a.png", lambda p: Image.fromarray(_GRAY16).save(p), _GRAY16[..., None], 1),
    "16-bit RGB TIFF": ("a.tif", lambda p: tifffile.imwrite(p, _RGB16, photometric="rgb"), _RGB16, 3),
    "16-bit gray TIFF": ("a.tif", lambda p: tifffile.imwrite(p, _GRAY16), _GRAY16[..., None], 1),
    "float32 TIFF": ("a.tif", lambda p: tifffile.imwrite(p, _FLOAT), _FLOAT[..., None], 1),
}


@pytest.mark.parametrize("kind", list(VALID))
def test_unusual_images_are_read_exactly_and_train(kind, tmp_path):
    name, write, expected, channels = VALID[kind]
    for i in range(2):
        (tmp_path / "images").mkdir(exist_ok=True)
        write(tmp_path / "images" / f"{i}{name}")
        _png(tmp_path / "masks" / f"{i}{Path(name).stem}.png", _mask())
    image = read_image(tmp_path / "images" / f"0{name}")
    assert image.dtype == expected.dtype and np.array_equal(image, expected)
    report = verify_dataset(tmp_path)
    assert report.ok and not report.problems, report.format()
    loaded, used = load_samples(find_samples(tmp_path), "semantic", 2, progress=False)
    assert used == channels and loaded[0].image.shape == (channels, H, W)
    assert np.isfinite(loaded[0].image).all() and abs(float(loaded[0].image.mean())) < 1e-3


# --- mixed channel counts: one count for all, warned about ----------------------------------------------


def test_gray_among_rgb_is_repeated_with_a_warning(tmp_path):
    root = _clean(tmp_path, 2)
    gray = RNG.integers(0, 256, (H, W), dtype=np.uint8)
    _png(root / "images" / "g.png", gray)
    _png(root / "masks" / "g.png", _mask())
    expected = (
        "images have mixed channel counts; using 3 channels: 1 image with 1 channel (e.g. g.png): "
        "gray used as 3 equal channels"
    )
    with pytest.warns(UserWarning, match=expected.replace("(", r"\(").replace(")", r"\)")):
        loaded, channels = load_samples(find_samples(root), "semantic", 2, progress=False)
    assert channels == 3
    g = next(s for s in loaded if s.id == "g").image
    assert np.array_equal(g[0], g[1]) and np.array_equal(g[0], g[2])
    assert "training brings them to one count" in verify_dataset(root).warnings[0].message


def test_rgba_among_rgb_drops_alpha_with_a_warning(tmp_path):
    """Formerly a ValueError ("cannot turn a 3-channel image into 4 channels") from deep in training."""
    root = _clean(tmp_path, 2)
    _png(root / "images" / "rgba.png", _RGBA)
    _png(root / "masks" / "rgba.png", _mask())
    with pytest.warns(UserWarning, match=r"using 3 channels: 1 image with 4 channels .*: alpha dropped"):
        loaded, channels = load_samples(find_samples(root), "semantic", 2, progress=False)
    assert channels == 3 and all(s.image.shape[0] == 3 for s in loaded)
    with pytest.warns(UserWarning, match="alpha dropped"):
        images, channels = load_unlabeled(find_samples(root), progress=False)  # pretraining reads alike
    assert channels == 3 and all(im.shape[0] == 3 for im in images)


def test_rgb_image_for_a_four_channel_model_is_a_clear_error(tmp_path):
    root = _clean(tmp_path, 1)
    with pytest.raises(DataError, match=r"s0.png: cannot turn a 3-channel image into 4 channels"):
        load_samples(find_samples(root), "semantic", 2, channels=4, progress=False)


# --- settings and weights: one line naming the key or the file -----------------------------------------


@pytest.fixture(scope="module")
def nuclei(tmp_path_factory) -> Path:
    from sslseg.data.synth import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("synth"), n_images=6, size=64, seed=4)


def _error(capsys, *args: str) -> str:
    code, _, err = sslseg(capsys, *args)
    assert code == 2 and "Traceback" not in err, err[-3000:]
    return err.strip().split("error: ", 1)[1]


def test_label_fraction_leaving_no_labelled_image(nuclei, tmp_path, capsys):
    out = str(tmp_path / "run")
    message = _error(capsys, "finetune", "--train", str(nuclei), "--label-fraction", "0.01", "-o", out)
    assert message == (
        "data.label_fraction=0.01 of 6 labelled images outside the test split leaves no labelled image; "
        "use at least 0.1667"
    )


def test_unknown_method_lists_the_valid_ones(tmp_path, capsys):
    message = _error(capsys, "pretrain", "--data", str(tmp_path), "--set", "method=simclrr")
    assert message.startswith("unknown SSL method 'simclrr'; valid methods: ") and "simclr," in message


def test_misspelt_keys_suggest_the_right_one(tmp_path, capsys):
    config = tmp_path / "pre.yaml"
    config.write_text("optim:\n  warmup_epoch: 2\n")
    message = _error(capsys, "pretrain", "--config", str(config), "--data", str(tmp_path))
    assert message.startswith(f"invalid settings in {config}:")
    assert "unknown key 'optim.warmup_epoch' (did you mean 'optim.warmup_epochs'?)" in message
    # a method's own settings are checked before any image is read (the data folder does not exist)
    message = _error(capsys, "pretrain", "--data", str(tmp_path / "nowhere"), "--set", "params.temprature=1")
    assert "params of simclr" in message and "(did you mean 'temperature'?)" in message


def test_weights_of_another_encoder_name_the_file_not_every_key(nuclei, tmp_path, capsys):
    from sslseg.nn.unet import build_encoder
    from sslseg.weights import save_encoder

    weights = save_encoder(build_encoder("resnet34", 1), tmp_path / "r34" / "encoder.safetensors", {})
    args = ["finetune", "--train", str(nuclei), "--encoder", "resnet18", "--init", str(weights)]
    message = _error(capsys, *args, "-o", str(tmp_path / "run"))  # no sidecar: the keys tell
    assert message.startswith(f"{weights}: weights do not fit this encoder: 0 missing keys [], 96 unexpected")
    assert message.endswith("were they saved for another encoder than 'resnet18'?") and len(message) < 400
    save_encoder(build_encoder("resnet34", 1), weights, {"encoder": "resnet34", "in_channels": 1})
    message = _error(capsys, *args, "-o", str(tmp_path / "run2"))
    assert message == f"{weights}: weights are for encoder 'resnet34', but the model uses 'resnet18'"
