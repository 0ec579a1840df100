"""The lower bounds in pyproject.toml are true: each is at least the release that brought an API sslseg uses.
A fast guard; `.ci/min_versions.sh` installs the floors themselves and runs the tests against them."""

from __future__ import annotations

import inspect
import tomllib
from collections.abc import Callable
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

PYPROJECT = Path(__file__).resolve().parents[1] / "pyproject.toml"


def _smp_decoder_api() -> bool:
    from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder

    params = inspect.signature(UnetDecoder.__init__).parameters
    forward = inspect.signature(UnetDecoder.forward).parameters
    return "add_center_block" in params and "features" in forward


def _seed_everything_verbose() -> bool:
    import lightning as L

    return "verbose" in inspect.signature(L.seed_everything).parameters


def _timm_lars() -> bool:
    import timm.optim

    return "always_adapt" in inspect.signature(timm.optim.Lars).parameters


def _pillow_png16_gray() -> bool:
    import io

    import numpy as np
    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(np.full((2, 2), 40000, np.uint16)).save(buffer, format="PNG")
    return Image.open(buffer).mode == "I;16"


def _typer_with_click() -> bool:
    from importlib.metadata import version

    return Version(version("typer")) >= Version("0.16") or Version(version("click")) < Version("8.2")


def _bioimageio_file_entries_serialise() -> bool:
    # 0.5.14.3 stopped passing pydantic's SerializationInfo to the wrap handler as its index key, which
    # recent pydantic rejects: with older releases no model description with a test tensor can be built
    from bioimageio.spec.model import v0_5 as bio
    from pydantic import TypeAdapter

    field = TypeAdapter(bio.InputTensorDescr.model_fields["test_tensor"].annotation)
    entry = bio.FileDescr.model_construct(source=PYPROJECT, sha256=None)
    try:
        return str(field.dump_python(entry, mode="json")["source"]) == str(PYPROJECT)
    except (TypeError, ValueError):
        return False


# (distribution, lowest release that has it, the API that sets the floor and where sslseg uses it,
#  a check that the installed release has that API)
FLOOR_SETTERS: list[tuple[str, str, str, Callable[[], bool]]] = [
    (
        "segmentation-models-pytorch",
        "0.5.0",
        "UnetDecoder(add_center_block=...) taking the features as one list (methods/autoencoder.py, masked.py)",
        _smp_decoder_api,
    ),
    (
        "lightning",
        "2.4.0",
        "seed_everything(..., verbose=False) (pretrain.py, finetune.py)",
        _seed_everything_verbose,
    ),
    (
        "timm",
        "1.0.3",
        "timm.optim.Lars with per-group always_adapt (optim.py); 1.0.3 is the first 1.0 release published",
        _timm_lars,
    ),
    (
        "pillow",
        "10.3.0",
        "16-bit grayscale PNGs opened as I;16 (uint16); before, as I (int32) (data/io.py read_image)",
        _pillow_png16_gray,
    ),
    (
        "typer",
        "0.15.4",
        "a help screen that works: older typer accepts any click, and click >= 8.2 breaks its "
        "make_metavar; 0.15.4 pins click < 8.2, later releases support it (cli.py)",
        _typer_with_click,
    ),
    (
        "bioimageio.spec",
        "0.5.14.3",
        "bioimage.io file entries (test tensors, weights) that serialise under the installed pydantic "
        "(export/bioimageio.py, the `export` extra)",
        _bioimageio_file_entries_serialise,
    ),
]

OPTIONAL_EXTRAS = ("export",)  # extras whose floors are checked like the runtime dependencies


def _floors() -> dict[str, Version]:
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    deps = project["dependencies"] + [d for e in OPTIONAL_EXTRAS for d in project["optional-dependencies"][e]]
    floors = {}
    for dep in deps:
        req = Requirement(dep)
        lows = [Version(s.version) for s in req.specifier if s.operator == ">="]
        assert lows, f"pyproject.toml: {dep!r} has no lower bound"
        floors[canonicalize_name(req.name)] = max(lows)
    return floors


@pytest.mark.parametrize(
    ("dist", "needed", "api", "present"), FLOOR_SETTERS, ids=[e[0] for e in FLOOR_SETTERS]
)
def test_declared_floor_is_at_least_the_release_with_the_api(dist, needed, api, present):
    floors = _floors()
    if dist in ("bioimageio.spec",):
        pytest.importorskip(dist)  # an optional extra: its floor is checked where it is installed
    name = canonicalize_name(dist)
    assert name in floors, f"{dist} is not a dependency in pyproject.toml"
    assert floors[name] >= Version(needed), (
        f"{dist}>={floors[name]} in pyproject.toml, but {api} needs {needed}"
    )
    assert present(), f"the installed {dist} lacks {api}: the table entry is wrong"
