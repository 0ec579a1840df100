"""The `sslseg` command line. Every user-facing error is one clear line (exit code 2), never a traceback."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from sslseg.console import quiet_libraries
from sslseg.errors import SslsegError

app = typer.Typer(
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    help="sslseg: annotation-efficient biomedical image segmentation.",
)
data_app = typer.Typer(no_args_is_help=True, help="Check, convert and generate datasets.")
app.add_typer(data_app, name="data")

SetOption = Annotated[
    list[str] | None,
    typer.Option("--set", "-s", help="override any setting: section.key=value (repeatable)"),
]
TtaOption = Annotated[
    bool | None,
    typer.Option(
        "--tta/--no-tta",
        help="average the 8 flips/quarter turns of each image (default: the model's inference.tta)",
    ),
]
DeviceOption = Annotated[
    str,
    typer.Option(help="where the network runs: auto (cuda, else mps, else cpu), cpu, cuda, cuda:N or mps"),
]
RerunChangedOption = Annotated[
    bool,
    typer.Option(
        "--rerun-changed",
        help="run again the finished jobs whose settings changed (their old results are moved aside, still "
        "readable); without it they keep their results",
    ),
]


@data_app.command("verify")
def data_verify(
    path: Path,
    layout: str = "auto",
    task: str = "auto",
    mask_suffix: str | None = None,
) -> None:
    """List every problem in a dataset with its file; exit code 1 when there is any error."""
    from sslseg.data.verify import verify_dataset

    report = verify_dataset(path, layout=layout, task=task, mask_suffix=mask_suffix)
    typer.echo(report.format())
    raise typer.Exit(0 if report.ok else 1)


@data_app.command("convert")
def data_convert(path: Path, out: Path, layout: str = "auto", mask_suffix: str | None = None) -> None:
    """Write any supported layout as images/ + labels/ TIFF pairs."""
    from sslseg.data.verify import convert_dataset

    n = convert_dataset(path, out, layout=layout, mask_suffix=mask_suffix)
    typer.echo(f"wrote {n} image/label pairs to {out}")


@data_app.command("synth")
def data_synth(
    out: Path,
    n: Annotated[int, typer.Option("--n", help="number of images")] = 64,
    size: int = 256,
    seed: int = 0,
) -> None:
    """Generate the built-in synthetic fluorescence-nuclei dataset (instance labels)."""
    from sslseg.data.synth import write_synthetic_dataset

    write_synthetic_dataset(out, n_images=n, size=size, seed=seed)
    typer.echo(f"wrote {n} synthetic images with instance labels to {out}")


def _load(model: Any, config: Path | None, flags: dict[str, Any], sets: list[str] | None) -> Any:
    """A config from a YAML file, then the named flags, then `--set` overrides (later wins)."""
    from sslseg.config import deep_merge, load_config, parse_overrides

    overrides: dict[str, Any] = {}
    for dotted, value in flags.items():
        if value is not None:
            overrides = deep_merge(overrides, parse_overrides([f"{dotted}={value}"]))
    overrides = deep_merge(overrides, parse_overrides(sets or []))
    return load_config(model, config, overrides)


@app.command()
def finetune(
    config: Annotated[Path | None, typer.Option(help="YAML config file")] = None,
    train: Annotated[Path | None, typer.Option(help="training dataset folder")] = None,
    test: Annotated[Path | None, typer.Option(help="separate labelled test dataset")] = None,
    task: Annotated[str | None, typer.Option(help="semantic or instance")] = None,
    encoder: Annotated[str | None, typer.Option(help="encoder name, e.g. resnet18, resnet50")] = None,
    init: Annotated[str | None, typer.Option(help="random, imagenet or an encoder weights file")] = None,
    frozen: Annotated[bool | None, typer.Option("--frozen/--fine-tuned", help="freeze the encoder")] = None,
    label_fraction: Annotated[float | None, typer.Option(help="share of the labelled images to use")] = None,
    labelled_images: Annotated[
        int | None, typer.Option(help="number of labelled images to use (validation included)")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="run seed (init and labelled subset)")] = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="run folder")] = None,
    resume: Annotated[bool, typer.Option(help="continue from the run folder's last checkpoint")] = False,
    set_: SetOption = None,
) -> None:
    """Fine-tune a U-Net (semantic or instance) and score it on the test split."""
    from sslseg.config import FinetuneConfig, to_yaml
    from sslseg.finetune import finetune as run_finetune

    cfg = _load(
        FinetuneConfig,
        config,
        {
            "data.train": train,
            "data.test": test,
            "data.task": task,
            "model.encoder": encoder,
            "model.init": init,
            "model.frozen": frozen,
            "data.label_fraction": label_fraction,
            "data.labelled_images": labelled_images,
            "train.seed": seed,
            "train.epochs": epochs,
            "output": output,
        },
        set_,
    )
    typer.echo(to_yaml(cfg), err=True)
    result = run_finetune(cfg, resume=resume)
    if result.main_process:
        typer.echo(json.dumps({"output": str(result.output), "test": result.test}, indent=2))


PretrainConfigOption = Annotated[Path | None, typer.Option("--config", help="YAML config file")]
DataOption = Annotated[Path | None, typer.Option(help="folder of (unlabeled) images, any layout")]
MethodOption = Annotated[str | None, typer.Option(help="SSL method (see `sslseg methods`)")]
EncoderOption = Annotated[str | None, typer.Option(help="encoder name, e.g. resnet18, resnet50")]
OutputOption = Annotated[Path | None, typer.Option("--output", "-o", help="run folder")]


def _pretrain_flags(
    data: Path | None,
    method: str | None,
    encoder: str | None,
    epochs: int | None,
    batch_size: int | None,
    output: Path | None,
) -> dict[str, Any]:
    """The settings the named flags of `pretrain` (and `pretrain-slurm`) stand for."""
    return {
        "data.path": data,
        "method": method,
        "encoder": encoder,
        "train.epochs": epochs,
        "train.batch_size": batch_size,
        "output": output,
    }


@app.command()
def pretrain(
    config: PretrainConfigOption = None,
    data: DataOption = None,
    method: MethodOption = None,
    encoder: EncoderOption = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option()] = None,
    output: OutputOption = None,
    resume: Annotated[bool, typer.Option(help="continue from the run folder's last checkpoint")] = False,
    set_: SetOption = None,
) -> None:
    """Pretrain an encoder with a self-supervised method; writes encoder.safetensors for `finetune --init`."""
    from sslseg.config import PretrainConfig, to_yaml
    from sslseg.pretrain import pretrain as run_pretrain

    flags = _pretrain_flags(data, method, encoder, epochs, batch_size, output)
    cfg = _load(PretrainConfig, config, flags, set_)
    typer.echo(to_yaml(cfg), err=True)
    result = run_pretrain(cfg, resume=resume)
    if result.main_process:
        typer.echo(
            json.dumps({"weights": str(result.weights), "seconds": round(result.summary["seconds"], 1)})
        )


@app.command("pretrain-slurm")
def pretrain_slurm(
    nodes: Annotated[int, typer.Option(help="machines (SLURM nodes)")],
    gpus_per_node: Annotated[int, typer.Option(help="GPUs per node; one task (process) each")],
    config: PretrainConfigOption = None,
    data: DataOption = None,
    method: MethodOption = None,
    encoder: EncoderOption = None,
    epochs: Annotated[int | None, typer.Option()] = None,
    batch_size: Annotated[int | None, typer.Option(help="per GPU")] = None,
    output: OutputOption = None,
    hours: Annotated[float, typer.Option(help="time limit of the job")] = 24.0,
    partition: Annotated[str | None, typer.Option(help="SLURM partition")] = None,
    cpus_per_task: Annotated[int, typer.Option(help="CPU cores per GPU task")] = 8,
    out: Annotated[Path | None, typer.Option(help="script file (default: print it)")] = None,
    set_: SetOption = None,
) -> None:
    """Write an sbatch script for one pretraining on NODES × GPUS_PER_NODE GPUs (srun, one task per GPU,
    Lightning DDP); the settings are those `sslseg pretrain` takes, checked now."""
    from sslseg.atomic import write_text
    from sslseg.config import PretrainConfig
    from sslseg.slurm import pretrain_slurm_script

    flags = _pretrain_flags(data, method, encoder, epochs, batch_size, output)
    pairs = [f"{k}={v}" for k, v in flags.items() if v is not None] + list(set_ or [])
    placed = [f"train.num_nodes={nodes}", f"train.devices={gpus_per_node}"]
    cfg = _load(PretrainConfig, config, {}, [*pairs, *placed])  # fails here on a setting that cannot run
    script = pretrain_slurm_script(cfg, config, pairs, nodes, gpus_per_node, hours, partition, cpus_per_task)
    if out is None:
        typer.echo(script)
    else:
        write_text(out, script)
        typer.echo(f"wrote {out}; submit with: sbatch {out}")


@app.command()
def methods() -> None:
    """List the SSL methods with their settings and defaults."""
    from sslseg.methods import METHODS

    for name, cls in METHODS.items():
        typer.echo(f"{name:14s} {cls.description}")
        for field, info in cls.Params.model_fields.items():
            typer.echo(f"{'':14s}   params.{field} = {info.default!r}")


@app.command()
def tune(run: Path) -> None:
    """Choose instance post-processing thresholds on a finished run's validation split; re-score its test."""
    from sslseg.finetune import tune_run

    summary = tune_run(run)
    typer.echo(json.dumps({"postprocess": summary["postprocess_tuning"], "test": summary["test"]}, indent=2))


@app.command()
def evaluate(
    checkpoint: Path,
    data: Path,
    out: Annotated[Path | None, typer.Option(help="folder for per_image.csv and metrics.json")] = None,
    layout: str = "auto",
    mask_suffix: str | None = None,
    tta: TtaOption = None,
    device: DeviceOption = "auto",
    pixel_size: Annotated[
        float | None,
        typer.Option(
            help="pixel size in µm of the images, for data.object_size_um (default: each TIFF's own)"
        ),
    ] = None,
) -> None:
    """Score a fine-tuned model on a labelled dataset at native resolution."""
    from sslseg.evaluate import evaluate_checkpoint

    mean = evaluate_checkpoint(
        checkpoint,
        data,
        out,
        layout=layout,
        mask_suffix=mask_suffix,
        tta=tta,
        device=device,
        pixel_size=pixel_size,
    )
    typer.echo(json.dumps(mean, indent=2))


@app.command()
def predict(
    checkpoint: Path,
    inputs: list[Path],
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("predictions"),
    formats: Annotated[
        str,
        typer.Option(
            help="comma-separated outputs: tiff (label map; tiled BigTIFF for large images; OME-Zarr for "
            ".zarr inputs), zarr (OME-Zarr label map), overlay (PNG), csv (per-object measurements), "
            "geojson (QuPath detections), roi (ImageJ/Fiji ROI zip)"
        ),
    ] = "tiff,overlay",
    pixel_size: Annotated[
        float | None,
        typer.Option(
            help="pixel size in µm for the measurements and data.object_size_um (default: read from each "
            "TIFF's metadata)"
        ),
    ] = None,
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="predict again images whose outputs already exist")
    ] = False,
    tta: TtaOption = None,
    tile_size: Annotated[
        int | None, typer.Option(help="network tile side in pixels (default: the checkpoint's)")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help="tiles per forward pass (default: the checkpoint's)")
    ] = None,
    part: Annotated[
        str | None,
        typer.Option(help="i/n: predict only the i-th of n shares of the sorted image list (array jobs)"),
    ] = None,
    block_size: Annotated[
        int | None,
        typer.Option(
            help="segment block-wise with blocks of this side (default: only images over 4096×4096 px, in "
            "2048 px blocks); memory then does not grow with the image"
        ),
    ] = None,
    level: Annotated[int, typer.Option(help="pyramid level of OME-TIFF / OME-Zarr inputs (0 = full)")] = 0,
    series: Annotated[int, typer.Option(help="series of multi-series TIFF inputs")] = 0,
    device: DeviceOption = "auto",
    engine: Annotated[
        str,
        typer.Option(
            help="what runs the network: torch, onnx (onnxruntime on the CPU; pip install 'sslseg[export]') "
            "or auto (onnx on the CPU when onnxruntime is installed, else torch)"
        ),
    ] = "auto",
) -> None:
    """Segment images of any size (tiled; block-wise when large) and write the chosen outputs. A batch goes
    on past unreadable images and lists them at the end (exit code 1); a rerun skips images whose outputs
    are complete."""
    from sslseg.predict import predict_files

    report = predict_files(
        checkpoint,
        inputs,
        out,
        tta=tta,
        formats=formats,
        pixel_size=pixel_size,
        overwrite=overwrite,
        tile_size=tile_size,
        batch_size=batch_size,
        part=part,
        block_size=block_size,
        level=level,
        series=series,
        device=device,
        engine=engine,
    )
    done = f"predicted {len(report.outputs)} images into {out}"
    if report.skipped:
        done += f"; skipped {len(report.skipped)} whose outputs were complete (--overwrite to redo)"
    typer.echo(done)
    if report.failed:
        total = len(report.outputs) + len(report.skipped) + len(report.failed)
        typer.secho(f"{len(report.failed)} of {total} images failed:", fg=typer.colors.RED, err=True)
        for path, reason in report.failed.items():
            typer.echo(f"  {path}: {reason}", err=True)
        raise typer.Exit(1)


@app.command()
def export(
    checkpoint: Path,
    out: Annotated[Path, typer.Option("--out", "-o", help="output folder")] = Path("export"),
    formats: Annotated[
        str,
        typer.Option(help="comma-separated: torchscript, onnx, bioimageio (a zipped bioimage.io package)"),
    ] = "torchscript,onnx,bioimageio",
    name: Annotated[str | None, typer.Option(help="model name in the package")] = None,
    author: Annotated[
        list[str] | None, typer.Option(help="author of the model (repeatable; default: your user name)")
    ] = None,
    license: Annotated[str, typer.Option(help="SPDX licence of the weights")] = "CC-BY-4.0",
    cite: Annotated[
        list[str] | None,
        typer.Option(help='"TEXT|DOI-or-URL" to cite (repeatable; default: the U-Net paper)'),
    ] = None,
    sample: Annotated[
        Path | None, typer.Option(help="image for the package's test input and cover (default: synthetic)")
    ] = None,
    onnx_exporter: Annotated[
        str, typer.Option(help="torch's ONNX exporter: torchscript (fast) or dynamo (needs onnxscript)")
    ] = "torchscript",
    test_package: Annotated[
        bool,
        typer.Option(
            "--test-package/--no-test-package", help="run bioimageio.core's model test if installed"
        ),
    ] = True,
) -> None:
    """Export a fine-tuned model as TorchScript, ONNX (each checked against PyTorch) and a validated
    bioimage.io package, with its post-processing settings in sslseg.yaml."""
    from sslseg.errors import ConfigError
    from sslseg.export import export_model

    pairs = []
    for entry in cite or []:
        text, sep, ref = entry.rpartition("|")
        if not sep or not text.strip() or not ref.strip():
            raise ConfigError(f'--cite {entry!r}: give "TEXT|DOI-or-URL"')
        pairs.append((text.strip(), ref.strip()))
    result = export_model(
        checkpoint,
        out,
        formats,
        name=name,
        authors=author or [],
        license=license,
        cite=pairs,
        sample=sample,
        onnx_exporter=onnx_exporter,
        test_package=test_package,
    )
    typer.echo(json.dumps(result.as_dict(), indent=2))


@app.command("select")
def select_command(
    pool: Path,
    budget: Annotated[int, typer.Option(help="how many images (regions) to propose")],
    out: Annotated[Path, typer.Option("--out", "-o", help="folder for the proposal (outside the pool)")],
    strategy: Annotated[
        str | None,
        typer.Option(
            help="typiclust (default), probcover, kcenter, random; uncertainty (the default with --model)"
        ),
    ] = None,
    features: Annotated[
        str,
        typer.Option(
            help="descriptors (seven image statistics), random, imagenet, an encoder.safetensors (or its "
            "pretrain folder) or a fine-tuned checkpoint, whose encoder's pooled embedding is used"
        ),
    ] = "descriptors",
    encoder: Annotated[str | None, typer.Option(help="architecture of random/imagenet features")] = None,
    model: Annotated[
        Path | None, typer.Option(help="fine-tuned checkpoint: weigh its TTA disagreement with diversity")
    ] = None,
    region: Annotated[
        int | None, typer.Option(help="propose non-overlapping SIZE×SIZE px regions instead of whole images")
    ] = None,
    annotated: Annotated[
        list[Path] | None,
        typer.Option(help="an earlier proposal whose labelled images count as annotated (repeatable)"),
    ] = None,
    heldout: Annotated[
        list[Path] | None,
        typer.Option(
            help="a test set (folder): copies of its images in the pool are never proposed (repeatable)"
        ),
    ] = None,
    seed: int = 0,
    layout: str = "auto",
    mask_suffix: str | None = None,
    scale: Annotated[
        float | None, typer.Option(help="working scale for encoder features (default: the encoder's run)")
    ] = None,
    device: DeviceOption = "auto",
    pixel_size: Annotated[
        float | None,
        typer.Option(
            help="pixel size in µm of the images, for a --model with data.object_size_um (default: each file's own)"
        ),
    ] = None,
) -> None:
    """Propose which images of POOL to annotate next (images that have a label already are never proposed):
    writes OUT/images, an empty OUT/labels to fill, to_annotate.csv and contact_sheet.png."""
    from sslseg.select import select

    result = select(
        pool,
        budget,
        out,
        strategy=strategy,
        features=features,
        encoder=encoder,
        model=model,
        region=region,
        annotated=annotated or [],
        heldout=heldout or [],
        seed=seed,
        layout=layout,
        mask_suffix=mask_suffix,
        scale=scale,
        device=device,
        pixel_size=pixel_size,
    )
    typer.echo(
        f"proposed {len(result.rows)} of {result.candidates} unannotated {'regions' if region else 'images'} "
        f"({result.annotated} annotated) into {out}: {result.csv.name}, {result.contact_sheet.name}; put "
        f"each label into {out / 'labels'} named after its image, and `sslseg data verify {out}` counts them"
    )


study_app = typer.Typer(no_args_is_help=True, help="Run a study: pretrainings × label fractions × seeds.")
app.add_typer(study_app, name="study")


@study_app.command("run")
def study_run(
    study_file: Path,
    workers: Annotated[
        int | None, typer.Option(help="parallel workers (default: one per GPU, else 1)")
    ] = None,
    dry_run: Annotated[
        bool, typer.Option("--dry-run", help="list the jobs and their estimated cost")
    ] = False,
    report: Annotated[bool, typer.Option("--report/--no-report", help="write the report at the end")] = True,
    rerun_changed: RerunChangedOption = False,
    set_: SetOption = None,
) -> None:
    """Run every job of a study that is not done yet (resumable; several runners may share one study)."""
    from sslseg.config import parse_overrides
    from sslseg.study.runner import run_study
    from sslseg.study.spec import load_study

    study = load_study(study_file, parse_overrides(set_ or []))
    if dry_run:
        from sslseg.study.estimate import dry_run_table

        typer.echo(dry_run_table(study))
        return
    summary = run_study(study, workers=workers, rerun_changed=rerun_changed)
    c = summary.counts
    typer.echo(
        f"study '{study.name}': {c['done']} done, {c['failed']} failed, {c['pending'] + c['running']} left "
        f"({summary.seconds / 60:.1f} min)",
        err=True,
    )
    if report and c["done"]:
        from sslseg.study.report import report_study

        paths = report_study(summary.study_dir)
        typer.echo(f"report: {paths['html'].resolve()}")
    if c["failed"]:
        raise typer.Exit(1)


@study_app.command("status")
def study_status(study_dir: Path) -> None:
    """Counts of done, running, pending and failed jobs, who runs what, and the errors of failed ones."""
    import time

    from sslseg.config import read_yaml_mapping
    from sslseg.study.store import read_rows, read_superseded

    spec = study_dir / "study.yaml"
    backend = read_yaml_mapping(spec, "study file").get("store", "auto") if spec.is_file() else "auto"
    rows = read_rows(study_dir, backend=backend)
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    typer.echo(", ".join(f"{v} {k}" for k, v in sorted(counts.items())))
    now = time.time()
    for r in rows:
        if r["status"] == "running":
            beat = f", last heartbeat {now - r['heartbeat']:.0f} s ago" if r["heartbeat"] else ""
            typer.echo(f"  running {r['key']}: {r['runner']} on {r['host']}{beat}")
        elif r["status"] == "failed":
            typer.echo(f"  failed {r['key']}: {r['error']}")
        if r.get("changed"):
            typer.echo(
                f"  changed {r['key']}: its result was made before {', '.join(r['changed'])} changed "
                "(`study run --rerun-changed` redoes it)"
            )
    for old in read_superseded(study_dir, backend=backend):
        metrics = ", ".join(
            f"{k} {v:.3f}" for k, v in (old.get("metrics") or {}).items() if isinstance(v, float)
        )
        typer.echo(
            f"  superseded {old['key']} ({', '.join(old.get('changed') or [])} changed): {metrics or 'no metrics'}; "
            f"folder {old.get('moved_to')}"
        )


@study_app.command("slurm")
def study_slurm(
    study_file: Path,
    tasks: Annotated[int, typer.Option(help="array tasks (one GPU each)")] = 8,
    hours: Annotated[float, typer.Option(help="time limit per task")] = 24.0,
    out: Annotated[Path | None, typer.Option(help="script file (default: print it)")] = None,
    rerun_changed: RerunChangedOption = False,
    set_: SetOption = None,
) -> None:
    """Write a SLURM array-job script whose tasks claim jobs from the study's store (by default a folder of
    claim and result files, safe on a network filesystem; `--set store=sqlite` for SQLite)."""
    from sslseg.atomic import write_text
    from sslseg.config import parse_overrides
    from sslseg.study.runner import prepare, slurm_script, with_store
    from sslseg.study.spec import load_study

    study = with_store(load_study(study_file, parse_overrides(set_ or [])), "files")
    if study.store == "sqlite":
        typer.secho(
            "warning: this study keeps its results in SQLite, whose locking is unreliable on a network "
            "filesystem; for a folder shared by the nodes, start it with `--set store=files` in a new output",
            err=True,
            fg=typer.colors.YELLOW,
        )
    prepare(study, rerun_changed)  # splits and the job table exist before any task starts
    script = slurm_script(study_file, study, tasks, hours, set_ or [])
    if out is None:
        typer.echo(script)
    else:
        write_text(out, script)
        typer.echo(f"wrote {out}; submit with: sbatch {out}, then `sslseg report {study.output}`")


@app.command()
def report(
    study_dir: Path,
    representation: Annotated[
        bool | None, typer.Option("--representation/--no-representation", help="CKA, retrieval, uncertainty")
    ] = None,
) -> None:
    """Analyse a study's results and write report.html, report.md and CSV tables into STUDY_DIR/report."""
    from sslseg.study.report import report_study

    paths = report_study(study_dir, representation=representation)
    typer.echo(f"report: {paths['html'].resolve()}\nsummary: {paths['markdown'].resolve()}")


@app.command()
def demo(
    out: Annotated[Path, typer.Option("--out", "-o", help="demo folder")] = Path("demo"),
    quick: Annotated[bool, typer.Option(help="tiny budget, for smoke tests")] = False,
) -> None:
    """The main job on built-in synthetic data: a small study (random init vs SSL and semi-supervised) and its report."""
    from sslseg.demo import run_demo

    summary = run_demo(out, quick=quick)
    typer.echo(f"\ndemo finished; outputs in {out.resolve()}\n{summary}")


def main() -> None:
    """Entry point: run the app, turning sslseg errors into one-line messages."""
    quiet_libraries()
    try:
        app()
    except SslsegError as e:
        typer.secho(f"error: {e}", fg=typer.colors.RED, err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        typer.secho("interrupted", err=True)
        sys.exit(130)
