"""The bioimage.io exporter: the model package (state dict, TorchScript and ONNX weights, test tensors,
README, cover image, sidecar), written, zipped and validated by bioimage.io's own tools — the one format
that needs more than the network, so its prose and pictures live here and nowhere else."""

from __future__ import annotations

import getpass
import importlib.util
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from sslseg.atomic import atomic_path
from sslseg.data.io import read_image
from sslseg.data.normalize import harmonise_channels, normalize
from sslseg.data.synth import generate_sample
from sslseg.data.task_rules import task_rules
from sslseg.errors import DataError, ExportCheckFailed
from sslseg.export.common import (
    FILE_NAMES,
    ExportResult,
    ProbabilityNet,
    architecture_kwargs,
    check_close,
    random_tiles,
)
from sslseg.export.onnx import export_onnx
from sslseg.export.settings import SIDECAR, labels_from_probabilities, load_sidecar
from sslseg.export.torchscript import export_torchscript
from sslseg.predict import display_rgb, overlay
from sslseg.segmentation.engines import ONNX_OPSET
from sslseg.segmentation.module import SegmentationModule
from sslseg.segmentation.tasks import Task

STATE_DICT = "model.state_dict.pt"
PACKAGE_SAMPLE_SIZE = 256  # the synthetic test image of a package, when no --sample is given
UNET_CITATION = {
    "text": "Ronneberger, Fischer and Brox. U-Net: Convolutional Networks for Biomedical Image Segmentation. "
    "MICCAI 2015.",
    "doi": "10.1007/978-3-319-24574-4_28",
}


def _sample_image(sample: str | Path | None, channels: int, stride: int) -> np.ndarray:
    """The package's test image as float32 H×W×C with H and W multiples of `stride`: `sample` cropped
    about its centre (to at most 512 px a side), or a synthetic nuclei image."""
    if sample is None:
        raw = generate_sample(seed=0, size=PACKAGE_SAMPLE_SIZE)[0][..., None]
    else:
        raw = read_image(sample)
    h, w = (min(512, s) // stride * stride for s in raw.shape[:2])
    if h == 0 or w == 0:
        raise DataError(Path(str(sample)), f"too small for a test image: at least {stride}×{stride} px")
    y, x = (raw.shape[0] - h) // 2, (raw.shape[1] - w) // 2
    try:
        image = harmonise_channels(raw[y : y + h, x : x + w], channels)
    except ValueError as e:
        raise DataError(Path(str(sample)), str(e)) from None
    return image.astype(np.float32)


def _preprocessing(normalization: str) -> list[Any]:
    """sslseg's normalisation in bioimage.io terms: per image and channel, over y and x."""
    from bioimageio.spec.model import v0_5 as bio

    axes = [bio.AxisId("y"), bio.AxisId("x")]
    if normalization == "per_image":
        return [bio.ZeroMeanUnitVarianceDescr(kwargs=bio.ZeroMeanUnitVarianceKwargs(axes=axes, eps=1e-6))]
    # sslseg: (x - p1) / ((p99.8 - p1) / 4), i.e. scale_range to [0, 1] and then ×4
    return [
        bio.ScaleRangeDescr(
            kwargs=bio.ScaleRangeKwargs(axes=axes, min_percentile=1.0, max_percentile=99.8, eps=1e-6)
        ),
        bio.ScaleLinearDescr(kwargs=bio.ScaleLinearKwargs(gain=4.0, offset=0.0)),
    ]


def _readme(settings: dict[str, Any], name: str) -> str:
    """The package's documentation: what goes in, what comes out, and how labels are made."""
    pre = settings["preprocessing"]
    post = settings["postprocess"]
    outputs = ", ".join(settings["outputs"])
    lines = [
        f"# {name}",
        "",
        f"A U-Net fine-tuned with sslseg {settings['sslseg_version']} for {settings['task']} segmentation.",
        "",
        "## Input",
        f"{settings['in_channels']} channel(s), height and width multiples of {settings['stride']} px. Each "
        f"image is normalised per channel ({pre['normalization']}: "
        + (
            "zero mean, unit variance"
            if pre["normalization"] == "per_image"
            else "1st percentile to 0, 99.8th to 4"
        )
        + "), as the preprocessing of this package describes.",
    ]
    if pre["bright_objects"]:
        lines.append(
            "The model was trained with `bright_objects`: an image whose objects are darker than its "
            "background (median above the mean) must be inverted (negated) before normalisation."
        )
    if pre["scale"] != 1.0:
        lines.append(f"Images must be resized by a factor of {pre['scale']} before the network.")
    if pre.get("object_size_um") is not None:
        lines.append(
            f"Each image must be resized by {pre['object_size']} × its pixel size (µm) / "
            f"{pre['object_size_um']} (its objects are about {pre['object_size_um']} µm across, and the "
            f"network sees them {pre['object_size']} px across)."
        )
    elif pre["object_size"] is not None:
        lines.append(
            f"sslseg resizes each image so that its objects are about {pre['object_size']} px across; "
            "other tools should present objects at that size."
        )
    lines += [
        "",
        "## Output",
        f"Probabilities ({settings['activation']} applied), one channel each: {outputs}.",
        "",
        "## Post-processing",
    ]
    if task_rules(settings["task"]).labels_are_classes:
        lines.append("The class of each pixel is the channel of highest probability.")
    else:
        lines.append(
            f"Instances come from a marker-controlled watershed on the '{settings['instance_head']}' head's "
            f"maps: foreground above {post['fg_threshold']}, seeds above {post['seed_threshold']}"
            + (f", cut where contact is at least {post['contact_threshold']}" if "contact" in outputs else "")
            + f", smoothing σ {post['smooth_sigma']}, objects under {post['min_size']} px dropped."
        )
    lines += [
        "",
        f"All of these settings are in `{SIDECAR}` (also under `config.sslseg` of rdf.yaml). With sslseg "
        "installed, the same label maps come from:",
        "",
        "```python",
        "from sslseg.export import labels_from_probabilities, load_sidecar",
        "",
        f'labels = labels_from_probabilities(probabilities, load_sidecar("{SIDECAR}"))  # K×H×W array in',
        "```",
        "",
    ]
    return "\n".join(lines)


def _cover(path: Path, raw: np.ndarray, labels: np.ndarray, task: str | Task) -> None:
    """The test image beside its segmentation (2:1), as the package's cover."""
    left = display_rgb(raw)
    right = overlay(raw, labels, task)
    with atomic_path(path) as tmp:
        Image.fromarray(np.concatenate([left, right], axis=1)).save(tmp, format="PNG")


def write_package(
    module: SegmentationModule,
    net: ProbabilityNet,
    result: ExportResult,
    settings: dict[str, Any],
    *,
    name: str | None,
    authors: Sequence[str],
    license: str,
    cite: Sequence[tuple[str, str]],
    sample: str | Path | None,
    onnx_exporter: str,
    test_package: bool,
) -> Path:
    """Write, zip and validate the bioimage.io model package; returns the zip's path."""
    from bioimageio.spec import InvalidDescr, load_description, save_bioimageio_package
    from bioimageio.spec.model import v0_5 as bio

    cfg = module.cfg
    kwargs = architecture_kwargs(module)
    channels = kwargs["in_channels"]
    name = name or f"sslseg {cfg.data.task} U-Net {cfg.model.encoder}"
    target = result.out / FILE_NAMES["bioimageio"]
    with tempfile.TemporaryDirectory(prefix=".bioimageio-", dir=result.out) as tmp_dir:
        stage = Path(tmp_dir)
        raw = _sample_image(sample, channels, net.stride)
        test_input = raw.transpose(2, 0, 1)[None]  # 1×C×H×W, before preprocessing
        with torch.no_grad():
            test_output = net(torch.from_numpy(normalize(raw, cfg.data.normalization))[None]).numpy()
        np.save(stage / "test_input.npy", test_input)
        np.save(stage / "test_output.npy", test_output)
        labels = labels_from_probabilities(test_output[0], load_sidecar(result.out / SIDECAR))
        _cover(stage / "cover.png", raw, labels, module.task)
        (stage / "README.md").write_text(_readme(settings, name))
        shutil.copy(result.out / SIDECAR, stage / SIDECAR)
        torch.save(net.state_dict(), stage / STATE_DICT)

        torch_version = bio.Version(torch.__version__.split("+")[0])
        state_dict = bio.PytorchStateDictWeightsDescr(
            source=stage / STATE_DICT,
            architecture=bio.ArchitectureFromLibraryDescr(
                callable=bio.Identifier("ProbabilityNet"), import_from="sslseg.export", kwargs=kwargs
            ),
            pytorch_version=torch_version,
        )
        weights: dict[str, Any] = {"pytorch_state_dict": state_dict}
        script = result.files.get("torchscript")
        if script is None:  # the package carries every format, checked like the files beside it
            script = stage / FILE_NAMES["torchscript"]
            check_close(
                "torchscript", script, export_torchscript(net, script, random_tiles(channels, net.stride))
            )
        weights["torchscript"] = bio.TorchscriptWeightsDescr(
            source=script, pytorch_version=torch_version, parent="pytorch_state_dict"
        )
        onnx_path = result.files.get("onnx")
        if onnx_path is None and importlib.util.find_spec("onnxruntime") and importlib.util.find_spec("onnx"):
            onnx_path = stage / FILE_NAMES["onnx"]
            tiles = random_tiles(channels, net.stride)
            check_close("onnx", onnx_path, export_onnx(net, onnx_path, tiles, onnx_exporter))
        if onnx_path is not None:
            weights["onnx"] = bio.OnnxWeightsDescr(
                source=onnx_path, opset_version=ONNX_OPSET, parent="pytorch_state_dict"
            )

        space_in = bio.ParameterizedSize(min=net.stride, step=net.stride)
        descr = bio.ModelDescr(
            name=name,
            description=f"{cfg.data.task.capitalize()} segmentation with a {cfg.model.encoder} U-Net "
            f"fine-tuned by sslseg (self-supervised pretraining, few-label fine-tuning).",
            authors=[bio.Author(name=a) for a in (authors or [getpass.getuser()])],
            cite=[
                bio.CiteEntry(text=text, **({"doi": ref} if ref.startswith("10.") else {"url": ref}))
                for text, ref in (cite or [(UNET_CITATION["text"], UNET_CITATION["doi"])])
            ],
            license=license,
            documentation=bio.FileDescr(source=stage / "README.md"),
            covers=[bio.FileDescr(source=stage / "cover.png")],
            tags=["sslseg", "unet", "segmentation", f"{cfg.data.task}-segmentation", "pytorch"],
            attachments=[bio.FileDescr(source=stage / SIDECAR)],
            inputs=[
                bio.InputTensorDescr(
                    id=bio.TensorId("input"),
                    description=f"image, {channels} channel(s), raw intensities",
                    axes=[
                        bio.BatchAxis(),
                        bio.ChannelAxis(
                            channel_names=[bio.Identifier(f"channel{i}") for i in range(channels)]
                        ),
                        bio.SpaceInputAxis(id=bio.AxisId("y"), size=space_in),
                        bio.SpaceInputAxis(id=bio.AxisId("x"), size=space_in),
                    ],
                    test_tensor=bio.FileDescr(source=stage / "test_input.npy"),
                    preprocessing=_preprocessing(cfg.data.normalization),
                )
            ],
            outputs=[
                bio.OutputTensorDescr(
                    id=bio.TensorId("probabilities"),
                    description=f"{settings['activation']} probabilities: {', '.join(settings['outputs'])}; "
                    f"labels by the post-processing in {SIDECAR}",
                    axes=[
                        bio.BatchAxis(),
                        bio.ChannelAxis(channel_names=[bio.Identifier(n) for n in settings["outputs"]]),
                        *(
                            bio.SpaceOutputAxis(
                                id=bio.AxisId(a),
                                size=bio.SizeReference(
                                    tensor_id=bio.TensorId("input"), axis_id=bio.AxisId(a)
                                ),
                            )
                            for a in ("y", "x")
                        ),
                    ],
                    test_tensor=bio.FileDescr(source=stage / "test_output.npy"),
                )
            ],
            weights=bio.WeightsDescr(**weights),
            config={"sslseg": settings},
        )
        with atomic_path(target) as tmp_zip:
            save_bioimageio_package(descr, output_path=tmp_zip)
            loaded = load_description(tmp_zip, format_version="latest")
            summary = loaded.validation_summary
            result.validation["bioimageio.spec"] = summary.status
            if isinstance(loaded, InvalidDescr) or summary.status == "failed":
                raise ExportCheckFailed(f"{target}: bioimage.io validation failed:\n{summary.format()}")
            if test_package and importlib.util.find_spec("bioimageio.core"):
                result.validation["bioimageio.core"] = _test_with_core(tmp_zip, target)
    return target


def _test_with_core(package: Path, target: Path) -> str:
    """Run bioimageio.core's model test (every weight format on the test tensors); returns its status."""
    from bioimageio.core import test_model

    summary = test_model(package)
    if summary.status != "passed":
        raise ExportCheckFailed(f"{target}: bioimageio.core's model test failed:\n{summary.format()}")
    return summary.status
