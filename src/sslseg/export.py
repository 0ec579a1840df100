"""Models out of sslseg: a fine-tuned checkpoint as TorchScript, ONNX and a bioimage.io model package, so
that Fiji (deepImageJ), ilastik, QuPath, napari or plain onnxruntime can run it without sslseg.

Every exported file holds `ProbabilityNet`: the U-Net followed by its task's activation, normalised images in
and probabilities out. Each format is checked against PyTorch on random tiles of two shapes (the height and
width axes are dynamic) and the export fails when they differ by more than `TOLERANCE`. What turns the
probabilities into labels (task, instance head, tuned thresholds, working scale) travels in the sidecar
`sslseg.yaml`, beside the files and inside the package, and `labels_from_probabilities` reproduces sslseg's
label maps from it. The optional dependencies come with `pip install 'sslseg[export]'`."""

from __future__ import annotations

import getpass
import importlib
import importlib.util
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from PIL import Image
from tqdm.auto import tqdm

import sslseg
from sslseg.atomic import atomic_path, write_text
from sslseg.config import PostprocessConfig
from sslseg.data.io import read_image
from sslseg.data.normalize import harmonise_channels, normalize
from sslseg.data.synth import generate_sample
from sslseg.errors import ConfigError, DataError, ExportCheckFailed
from sslseg.evaluate import load_model
from sslseg.nn.unet import build_unet
from sslseg.predict import display_rgb, overlay, parse_choices
from sslseg.segmentation.engines import (
    ONNX_EXPORTERS,
    ONNX_OPSET,
    ActivatedNet,
    onnx_export,
    require,
)
from sslseg.segmentation.inference import probabilities_to_labels
from sslseg.segmentation.module import SegmentationModule
from sslseg.segmentation.tasks import task_named

#: What `sslseg export --formats` accepts.
EXPORT_FORMATS = ("torchscript", "onnx", "bioimageio")
#: Largest absolute difference in probability allowed between PyTorch and an exported format.
TOLERANCE = 1e-4
#: (batch, height, width) of the random tiles each format is checked on, in multiples of the U-Net's stride:
#: two shapes, so a format whose spatial axes were fixed at export fails the check.
CHECK_TILES = ((1, 3, 4), (2, 2, 2))
SIDECAR = "sslseg.yaml"
FILE_NAMES = {"torchscript": "model.torchscript.pt", "onnx": "model.onnx", "bioimageio": "bioimageio.zip"}
STATE_DICT = "model.state_dict.pt"
PACKAGE_SAMPLE_SIZE = 256  # the synthetic test image of a package, when no --sample is given
UNET_CITATION = {
    "text": "Ronneberger, Fischer and Brox. U-Net: Convolutional Networks for Biomedical Image Segmentation. "
    "MICCAI 2015.",
    "doi": "10.1007/978-3-319-24574-4_28",
}


class ProbabilityNet(ActivatedNet):
    """A fine-tuned sslseg U-Net followed by its task's activation, as every exported format holds it:
    B×C×H×W normalised images in (H and W multiples of `stride`), B×K×H×W probabilities out (softmax over
    the classes for semantic tasks, one sigmoid map per channel of the instance head for instance tasks).
    Importable by name, so a bioimage.io `pytorch_state_dict` can rebuild it."""

    def __init__(
        self,
        encoder: str,
        in_channels: int,
        out_channels: int,
        decoder_channels: Sequence[int],
        task: str,
    ) -> None:
        try:
            task_named(task)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        super().__init__(build_unet(encoder, in_channels, out_channels, tuple(decoder_channels)), task)
        self.stride = 2 ** len(decoder_channels)


def architecture_kwargs(module: SegmentationModule) -> dict[str, Any]:
    """The arguments of `ProbabilityNet` that rebuild a fine-tuned module's network."""
    cfg = module.cfg
    return {
        "encoder": cfg.model.encoder,
        "in_channels": int(module.hparams["in_channels"]),
        "out_channels": task_named(cfg.data.task).output_channels(cfg),
        "decoder_channels": [int(c) for c in cfg.model.decoder_channels],
        "task": cfg.data.task,
    }


def probability_net(module: SegmentationModule) -> ProbabilityNet:
    """The exportable network of a fine-tuned module (its weights copied), on the CPU in eval mode."""
    net = ProbabilityNet(**architecture_kwargs(module))
    net.net.load_state_dict(module.net.state_dict())
    return net.cpu().eval()


def sidecar(module: SegmentationModule, checkpoint: str | Path) -> dict[str, Any]:
    """What sslseg does around the network, for whoever runs an exported file: the preprocessing before it
    and the post-processing (with the checkpoint's tuned thresholds) that turns probabilities into labels."""
    cfg = module.cfg
    d = cfg.data
    task = task_named(d.task)
    classes = task.labels_are_classes
    return {
        "sslseg_version": sslseg.__version__,
        "checkpoint": str(checkpoint),
        "task": d.task,
        "num_classes": d.num_classes if classes else None,
        "instance_head": None if classes else cfg.model.instance_head,
        "in_channels": int(module.hparams["in_channels"]),
        "outputs": task.output_names(cfg),
        "activation": task.activation,
        "stride": 2 ** len(cfg.model.decoder_channels),
        "preprocessing": {
            "normalization": d.normalization,
            "bright_objects": d.bright_objects,
            "scale": d.scale,
            "object_size": d.object_size,
            "object_size_um": d.object_size_um,
        },
        "postprocess": cfg.postprocess.model_dump(mode="json"),
        "inference": cfg.inference.model_dump(mode="json"),
    }


@dataclass(frozen=True)
class ExportedSettings:
    """The sidecar of an export read back: enough to turn the exported network's probabilities into the
    label maps sslseg would make."""

    task: str
    instance_head: str | None
    outputs: list[str]
    postprocess: PostprocessConfig
    preprocessing: dict[str, Any]
    raw: dict[str, Any] = field(repr=False)


def load_sidecar(path: str | Path) -> ExportedSettings:
    """Read `sslseg.yaml` (or the export folder holding it); a missing or malformed file is a DataError."""
    path = Path(path)
    if path.is_dir():
        path = path / SIDECAR
    if not path.is_file():
        raise DataError(path, f"no {SIDECAR} here: not an sslseg export")
    try:
        raw = yaml.safe_load(path.read_text())
        return ExportedSettings(
            task=raw["task"],
            instance_head=raw.get("instance_head"),
            outputs=list(raw["outputs"]),
            postprocess=PostprocessConfig.model_validate(raw["postprocess"]),
            preprocessing=dict(raw["preprocessing"]),
            raw=raw,
        )
    except (yaml.YAMLError, KeyError, TypeError, ValueError) as e:
        raise DataError(path, f"not a readable sslseg export sidecar: {e}") from None


def labels_from_probabilities(probs: np.ndarray, settings: ExportedSettings) -> np.ndarray:
    """K×H×W probabilities of an exported network → the label map sslseg's post-processing makes of them
    (classes, or instances by the sidecar's head and thresholds)."""
    if probs.ndim != 3 or probs.shape[0] != len(settings.outputs):
        raise ValueError(
            f"expected {len(settings.outputs)}×H×W probabilities ({', '.join(settings.outputs)}), "
            f"got shape {probs.shape}"
        )
    tensor = torch.from_numpy(np.ascontiguousarray(probs, dtype=np.float32))
    return probabilities_to_labels(tensor, settings.task, settings.postprocess, settings.instance_head or "")


@dataclass
class ExportResult:
    """What an export wrote and how closely each format reproduces PyTorch."""

    out: Path
    files: dict[str, Path]
    max_abs_diff: dict[str, float]
    package_bytes: int | None = None
    validation: dict[str, str] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready summary (what the CLI prints)."""
        return {
            "out": str(self.out),
            "files": {k: str(v) for k, v in self.files.items()},
            "max_abs_diff": self.max_abs_diff,
            "tolerance": TOLERANCE,
            "package_bytes": self.package_bytes,
            "validation": self.validation,
        }


def parse_export_formats(formats: str | Iterable[str]) -> tuple[str, ...]:
    """Formats from "torchscript,onnx" or a list; unknown names are a ConfigError listing the valid ones."""
    return parse_choices(formats, EXPORT_FORMATS, "export")


def random_tiles(in_channels: int, stride: int, seed: int = 0) -> list[torch.Tensor]:
    """The normalised random tiles (CHECK_TILES) every format is compared with PyTorch on."""
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(b, in_channels, h * stride, w * stride, generator=gen) for b, h, w in CHECK_TILES]


def max_abs_difference(
    reference: Callable[[torch.Tensor], torch.Tensor],
    candidate: Callable[[torch.Tensor], np.ndarray],
    tiles: Sequence[torch.Tensor],
) -> float:
    """Largest absolute difference between two networks' outputs over `tiles` (a shape mismatch is an
    ExportCheckFailed too)."""
    worst = 0.0
    for x in tiles:
        with torch.no_grad():
            expected = reference(x).numpy()
        got = np.asarray(candidate(x))
        if got.shape != expected.shape:
            raise ExportCheckFailed(
                f"output shape {got.shape} for input {tuple(x.shape)}, PyTorch gives {expected.shape}"
            )
        worst = max(worst, float(np.abs(got.astype(np.float64) - expected).max()))
    return worst


def check_close(name: str, path: Path, diff: float, tolerance: float = TOLERANCE) -> None:
    """Fail loudly when an exported file does not reproduce PyTorch."""
    if not diff <= tolerance:  # NaN fails too
        raise ExportCheckFailed(
            f"{path}: the {name} export differs from PyTorch by up to {diff:.3g} on random tiles "
            f"(tolerance {tolerance:g}); it was kept for inspection but must not be used"
        )


def export_torchscript(net: ProbabilityNet, path: Path, tiles: Sequence[torch.Tensor]) -> float:
    """Trace the network to TorchScript, save it atomically, and return the largest difference of the
    saved file's outputs from PyTorch on `tiles`."""
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        traced = torch.jit.trace(net, tiles[0], check_trace=False)
    with atomic_path(path) as tmp:
        torch.jit.save(traced, str(tmp))
    return max_abs_difference(net, torchscript_runner(path), tiles)


def export_onnx(
    net: ProbabilityNet, path: Path, tiles: Sequence[torch.Tensor], exporter: str = "torchscript"
) -> float:
    """Export the network to ONNX (opset ONNX_OPSET, batch, height and width dynamic) with torch's
    TorchScript-based exporter (fast, no extra dependency) or its dynamo exporter (needs onnxscript), and
    return the largest difference of onnxruntime's outputs from PyTorch on `tiles`."""
    if exporter not in ONNX_EXPORTERS:
        raise ConfigError(f"unknown ONNX exporter '{exporter}'; choose from {', '.join(ONNX_EXPORTERS)}")
    onnx = require("onnx", "ONNX export")
    require("onnxruntime", "checking the ONNX export")
    if exporter == "dynamo":
        require("onnxscript", "the dynamo ONNX exporter")
    with atomic_path(path) as tmp:
        onnx_export(net, tiles[0], tmp, exporter)
    onnx.checker.check_model(str(path), full_check=True)  # well-formed, and its shapes infer
    return max_abs_difference(net, onnx_runner(path), tiles)


def onnx_runner(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    """An exported ONNX file as a function of a batch, run by onnxruntime on the CPU."""
    ort = require("onnxruntime", "running an ONNX export")
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    return lambda x: session.run(None, {name: x.detach().cpu().numpy()})[0]


def torchscript_runner(path: Path) -> Callable[[torch.Tensor], np.ndarray]:
    """An exported TorchScript file as a function of a batch, on the CPU."""
    loaded = torch.jit.load(str(path), map_location="cpu").eval()

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return loaded(x).numpy()

    return run


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
            package = _package(
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
    if settings["task"] == "semantic":
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


def _cover(path: Path, raw: np.ndarray, labels: np.ndarray, task: str) -> None:
    """The test image beside its segmentation (2:1), as the package's cover."""
    left = display_rgb(raw)
    right = overlay(raw, labels, task)
    with atomic_path(path) as tmp:
        Image.fromarray(np.concatenate([left, right], axis=1)).save(tmp, format="PNG")


def _package(
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
        _cover(stage / "cover.png", raw, labels, cfg.data.task)
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


sslseg.entry_point(__name__)  # `from sslseg import export` is callable (see sslseg.API)
