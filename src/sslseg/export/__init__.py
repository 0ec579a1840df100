"""Models out of sslseg: a fine-tuned checkpoint as TorchScript, ONNX and a bioimage.io model package, so
that Fiji (deepImageJ), ilastik, QuPath, napari or plain onnxruntime can run it without sslseg.

Every exported file holds `ProbabilityNet`: the U-Net followed by its task's activation, normalised images in
and probabilities out. Each format is checked against PyTorch on random tiles of two shapes (the height and
width axes are dynamic) and the export fails when they differ by more than `TOLERANCE`. What turns the
probabilities into labels (task, instance head, tuned thresholds, working scale) travels in the sidecar
`sslseg.yaml`, beside the files and inside the package, and `labels_from_probabilities` reproduces sslseg's
label maps from it. The optional dependencies come with `pip install 'sslseg[export]'`.

The package has one room per format (`torchscript`, `onnx`, `bioimageio`), the network and its check
against PyTorch they share (`common`) and the sidecar (`settings`); this module is the entry point,
`export_model`, and re-exports what callers import from `sslseg.export`."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import yaml
from tqdm.auto import tqdm

import sslseg
from sslseg.atomic import write_text
from sslseg.evaluate import load_model
from sslseg.export.bioimageio import write_package
from sslseg.export.common import (
    CHECK_TILES,
    FILE_NAMES,
    TOLERANCE,
    ExportResult,
    ProbabilityNet,
    architecture_kwargs,
    check_close,
    max_abs_difference,
    probability_net,
    random_tiles,
)
from sslseg.export.onnx import export_onnx, onnx_runner
from sslseg.export.settings import (
    SIDECAR,
    ExportedSettings,
    labels_from_probabilities,
    load_sidecar,
    sidecar,
)
from sslseg.export.torchscript import export_torchscript, torchscript_runner
from sslseg.predict import parse_choices
from sslseg.segmentation.engines import require

__all__ = [
    "CHECK_TILES",
    "EXPORT_FORMATS",
    "FILE_NAMES",
    "SIDECAR",
    "TOLERANCE",
    "ExportResult",
    "ExportedSettings",
    "ProbabilityNet",
    "architecture_kwargs",
    "check_close",
    "export_model",
    "export_onnx",
    "export_torchscript",
    "labels_from_probabilities",
    "load_sidecar",
    "max_abs_difference",
    "onnx_runner",
    "parse_export_formats",
    "probability_net",
    "random_tiles",
    "require",
    "sidecar",
    "torchscript_runner",
]

#: What `sslseg export --formats` accepts.
EXPORT_FORMATS = ("torchscript", "onnx", "bioimageio")


def parse_export_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """Formats from "torchscript,onnx" or a list; unknown names are a ConfigError listing the valid ones."""
    return parse_choices(formats, EXPORT_FORMATS, "export")


def export_model(
    checkpoint: str | Path,
    out: str | Path,
    formats: str | Iterable[str] = EXPORT_FORMATS,
    *,
    name: str | None = None,
    authors: Sequence[str] = (),
    license: str = "CC-BY-4.0",
    cite: Sequence[tuple[str, str]] = (),
    sample: str | Path | None = None,
    onnx_exporter: str = "torchscript",
    test_package: bool = True,
    progress: bool = True,
) -> ExportResult:
    """Export a fine-tuned checkpoint (or run folder) into `out`: TorchScript and ONNX files, each checked
    against PyTorch on random tiles, and a bioimage.io model package validated by bioimage.io's own tools
    (and run by bioimageio.core's test when it is installed and `test_package`), with `sslseg.yaml` beside
    them. `authors`, `license`, `cite` (text, DOI or URL pairs; default: the U-Net paper) and `name` fill
    the package's metadata; `sample` is the image its test input and cover are made from (default: a
    synthetic nuclei image)."""
    chosen = parse_export_formats(formats)
    if "onnx" in chosen:  # missing optional dependencies fail before any work
        require("onnx", "ONNX export")
        require("onnxruntime", "checking the ONNX export")
    if "bioimageio" in chosen:
        require("bioimageio.spec", "the bioimage.io package")
    out = Path(out)
    module = load_model(checkpoint, device="cpu")
    net = probability_net(module)
    tiles = random_tiles(architecture_kwargs(module)["in_channels"], net.stride)
    result = ExportResult(out, {}, {})
    settings = sidecar(module, checkpoint)
    write_text(out / SIDECAR, yaml.safe_dump(settings, sort_keys=False))
    result.files["sidecar"] = out / SIDECAR

    steps = [f for f in ("torchscript", "onnx") if f in chosen]
    if "bioimageio" in chosen:
        steps.append("bioimageio")
    bar = tqdm(steps, desc="exporting", disable=not progress)
    for fmt in bar:
        bar.set_postfix_str(fmt)
        path = out / FILE_NAMES[fmt]
        if fmt == "torchscript":
            diff = export_torchscript(net, path, tiles)
        elif fmt == "onnx":
            diff = export_onnx(net, path, tiles, onnx_exporter)
        else:
            package = write_package(
                module,
                net,
                result,
                settings,
                name=name,
                authors=authors,
                license=license,
                cite=cite,
                sample=sample,
                onnx_exporter=onnx_exporter,
                test_package=test_package,
            )
            result.files[fmt] = package
            result.package_bytes = package.stat().st_size
            continue
        result.files[fmt] = path
        result.max_abs_diff[fmt] = diff
        check_close(fmt, path, diff)
    return result


sslseg.entry_point(__name__)  # `from sslseg import export` is callable (see sslseg.API)
