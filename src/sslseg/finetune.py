"""Fine-tune a U-Net on a labelled budget of a dataset, select the best epoch on its validation images (or
train a fixed schedule when the budget is too small to spare any), and score it on the test split at
native resolution."""

from __future__ import annotations

import json
import platform
import sys
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint
from torch.utils.data import DataLoader

import sslseg
from sslseg.atomic import atomic_path, write_json, write_text
from sslseg.config import FinetuneConfig, load_config, to_yaml
from sslseg.data.datasets import (
    CompactImage,
    LoadedSample,
    RandomBaseCrops,
    RandomCropDataset,
    load_heldout,
    load_samples,
)
from sslseg.data.heldout import HeldoutIndex, drop_heldout
from sslseg.data.layouts import Sample, find_samples
from sslseg.data.splits import (
    LabelBudget,
    assign_budget,
    dataset_split,
    load_split,
    read_labelled_list,
    save_split,
)
from sslseg.errors import ConfigError, DataError
from sslseg.evaluate import evaluate_samples, load_model, summarize, write_rows_csv
from sslseg.metrics.embeddings import weight_change
from sslseg.oom import explain_out_of_memory
from sslseg.rundir import (
    RandomStateCheckpoint,
    last_checkpoint,
    prepare_run_dir,
    run_loggers,
    save_model_checkpoint,
)
from sslseg.segmentation.module import SegmentationModule, ValidationImages
from sslseg.segmentation.pseudo_labels import pseudo_label
from sslseg.segmentation.tasks import task_named
from sslseg.segmentation.tuning import tune_postprocess
from sslseg.trainer import build_trainer, check_trainer_settings

TEACHER = "teacher"  # self-training: the teacher's run folder inside the student's
PSEUDO_LABELS = "pseudo_labels"  # self-training: one file per pseudo-labelled image, for resuming


@dataclass
class FinetuneResult:
    """Where the run wrote its outputs and what it scored."""

    output: Path
    best_checkpoint: Path
    test: dict[str, float]
    summary: dict[str, Any]
    main_process: bool = True  # False in the other processes of a DDP run, which score nothing


class EpochSummary(L.Callback):
    """One plain line per epoch (loss, val score, time), readable in logs where progress bars are not."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        m = trainer.callback_metrics
        parts = [f"epoch {trainer.current_epoch + 1}/{trainer.max_epochs}"]
        for key in ("train/loss", "val/score"):
            if key in m:
                parts.append(f"{key} {float(m[key]):.4f}")
        parts.append(f"{time.perf_counter() - self.start:.0f}s")
        print("  ".join(parts), file=sys.stderr, flush=True)


def resolve_splits(cfg: FinetuneConfig, samples: list[Sample]) -> LabelBudget:
    """The run's train/val/test/unlabeled images: the dataset split (from the split file, or drawn from
    `split_seed` among the labelled images) and within it the labelled budget drawn from `train.seed`."""
    d = cfg.data
    ids = [s.id for s in samples]
    labelled = [s.id for s in samples if s.label is not None]
    if not labelled:
        raise DataError(
            d.train, f"none of the {len(ids)} images has a label: there is nothing to fine-tune on"
        )
    if d.split_file is not None:
        split = load_split(d.split_file, ids)
        source = d.split_file
    else:
        test_fraction = 0.0 if d.test is not None else d.test_fraction
        split = dataset_split(ids, labelled, d.val_fraction, test_fraction, d.split_seed, d.validation)
        source = d.train
    held_out = split["test"] + (split["val"] if d.validation == "fixed" else [])
    has_label = set(labelled)
    missing = [i for i in held_out if i not in has_label]
    if missing:
        raise DataError(source, f"{len(missing)} test or validation images have no label, e.g. {missing[:3]}")
    return assign_budget(
        split,
        ids,
        labelled,
        validation=d.validation,
        seed=cfg.train.seed,
        val_fraction=d.val_fraction,
        label_fraction=d.label_fraction,
        labelled_images=d.labelled_images,
        val_max_images=cfg.train.val_max_images,
        chosen=read_labelled_list(d.labelled_list) if d.labelled_list is not None else None,
    )


def can_resume(output: str | Path) -> bool:
    """Whether the run folder `output` holds state that `finetune(cfg, resume=True)` continues: the run's
    last checkpoint, or, for self-training, its teacher's (finished, or saved after an epoch)."""
    out = Path(output)
    teacher = out / TEACHER
    return any(
        p.is_file()
        for p in (
            out / "checkpoints" / "last.ckpt",
            teacher / "result.json",
            teacher / "checkpoints" / "last.ckpt",
        )
    )


def _prepare_output(cfg: FinetuneConfig, out: Path, resume: bool) -> tuple[Path, bool]:
    """Check the run folder (`prepare_run_dir`, and for self-training its teacher's too). Returns the last
    checkpoint and whether training continues from it: a self-training run resumed before its student's
    first epoch ended continues its teacher or its pseudo-labels, and its student starts afresh."""
    if not (cfg.semi.enabled and cfg.semi.method == "self_training"):
        return prepare_run_dir(out, resume), resume
    if resume and not can_resume(out):
        raise ConfigError(
            f"--resume: no checkpoint to resume from at {out / 'checkpoints' / 'last.ckpt'}, and the "
            f"self-training teacher in {out / TEACHER} neither finished nor saved one"
        )
    if not resume and any((out / TEACHER / "checkpoints").glob("*.ckpt")):
        raise ConfigError(
            f"{out} already holds checkpoints of an earlier run (its self-training teacher's): continue it "
            "with --resume, or choose another output folder (or delete this one)"
        )
    student_started = resume and (out / "checkpoints" / "last.ckpt").is_file()
    if resume and not student_started:  # nothing of the student's to check: it has not saved an epoch
        out.mkdir(parents=True, exist_ok=True)
        for stale in (out / "checkpoints").glob(".*.tmp*"):  # a write cut off by a kill (see atomic_path)
            stale.unlink(missing_ok=True)
        return out / "checkpoints" / "last.ckpt", False
    return prepare_run_dir(out, resume), resume


def finetune(
    cfg: FinetuneConfig,
    resume: bool = False,
    progress: bool = True,
    callbacks: list[L.Callback] | None = None,
) -> FinetuneResult:
    """Run one fine-tuning job end to end; outputs go to `cfg.output` (resolved config saved first).
    `resume` continues a killed run (see `can_resume`), self-training in any of its phases; `callbacks`
    are added to the trainer's own (e.g. a step timer)."""
    if cfg.data.train is None:
        raise ConfigError("data.train is not set: give the training dataset folder")
    out = Path(cfg.output)
    last, resume_fit = _prepare_output(cfg, out, resume)
    write_text(out / "config.yaml", to_yaml(cfg))
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    check_trainer_settings(cfg.train)

    # images without a label are the normal case: they are the unlabeled pool, never train/val/test
    samples = find_samples(
        cfg.data.train, layout=cfg.data.layout, mask_suffix=cfg.data.mask_suffix, allow_unlabeled=True
    )
    if cfg.data.max_images:
        samples = samples[: cfg.data.max_images]
    budget = resolve_splits(cfg, samples)
    split = budget.as_split()
    save_split(out / "split.json", split)
    if progress:
        n = cfg.train.epochs
        val = f"{len(budget.val)} validate" if budget.val else f"none validates: {n} epoch(s), the last kept"
        print(
            f"labelled images used: {budget.n_labelled_total} ({len(budget.train)} train, {val}); "
            f"{len(budget.unlabeled)} unlabeled",
            file=sys.stderr,
            flush=True,
        )
    labelled = budget.train
    by_id = {s.id: s for s in samples}
    d = cfg.data
    # only training images may use their labels to choose their working scale (object_size); validation
    # images are loaded at native scale and sized at inference, as test and new images are
    train_set, channels = _load_training(cfg, [by_id[i] for i in labelled], None, progress)
    val_set = validation_set(cfg, split, by_id, channels, progress)

    module = SegmentationModule(cfg.model_dump(mode="json"), channels)
    module.val_samples = val_set
    initial_weights = {k: v.detach().clone() for k, v in module.state_dict().items()}
    semi_method = cfg.semi.method if cfg.semi.enabled else None
    test_samples = _test_samples(cfg, split, by_id)
    unlabeled, n_excluded = (
        _unlabeled_samples(cfg, budget, by_id, test_samples, progress) if semi_method else ([], 0)
    )
    pool = (
        _unlabeled_pool(cfg, unlabeled, channels, train_set, progress)
        if semi_method == "mean_teacher"
        else []
    )
    if pool:
        crops = RandomBaseCrops(pool, cfg.train.crop_size, cfg.train.steps_per_epoch * cfg.train.batch_size)
        module.unlabeled_loader = DataLoader(crops, batch_size=cfg.semi.batch_size or cfg.train.batch_size)
    crop_weights = None
    self_training: dict[str, Any] = {}
    if semi_method == "self_training":
        pseudo_set, self_training = _self_training(
            cfg, budget, unlabeled, channels, module, out, resume, progress
        )
        if pseudo_set:  # the labelled images keep their share of the crops however many pseudo-labels join
            share = cfg.semi.labelled_share
            crop_weights = [share / len(train_set)] * len(train_set)
            crop_weights += [(1 - share) / len(pseudo_set)] * len(pseudo_set)
            train_set = train_set + pseudo_set
        L.seed_everything(cfg.train.seed, workers=True, verbose=False)  # the student's draws, as without
    train_loader = DataLoader(
        RandomCropDataset(
            train_set,
            cfg.train.crop_size,
            cfg.train.steps_per_epoch * cfg.train.batch_size,
            cfg.train.scale_range,
            task_named(d.task).binary_target_channels(cfg),
            weights=crop_weights,
        ),
        batch_size=cfg.train.batch_size,
        num_workers=0,
    )
    val_loader = DataLoader(ValidationImages(val_set), batch_size=1) if val_set else None
    monitor = "val/score" if val_set else None
    best_cb = ModelCheckpoint(
        dirpath=out / "checkpoints",
        filename="best",
        monitor=monitor,
        mode="max",
        save_top_k=1,
        save_weights_only=True,  # resuming needs only last.ckpt; best is for loading
    )
    last_cb = last_checkpoint(out / "checkpoints")  # every epoch, for --resume
    own: list[L.Callback] = [best_cb, last_cb, RandomStateCheckpoint()]
    if progress:
        own.append(EpochSummary())
    if val_set:
        own.append(EarlyStopping("val/score", mode="max", patience=cfg.train.patience))
    trainer = build_trainer(
        cfg.train,
        out,
        callbacks=[*own, *(callbacks or [])],
        logger=run_loggers(out, resume_fit),
        progress=progress,
        log_every_n_steps=min(10, cfg.train.steps_per_epoch),
    )
    t0 = time.perf_counter()
    inference = ("inference.batch_size", cfg.inference.batch_size)
    with explain_out_of_memory("train.batch_size", cfg.train.batch_size, inference=inference):
        trainer.fit(module, train_loader, val_loader, ckpt_path=str(last) if resume_fit else None)
    # self-training's teacher and pseudo-labelling are fine-tuning work too
    fit_s = time.perf_counter() - t0 + self_training.get("teacher_fit_seconds", 0.0)
    fit_s += self_training.get("pseudo_label_seconds", 0.0)
    if not trainer.is_global_zero:  # under DDP one process picks, tunes and scores the best checkpoint
        return FinetuneResult(out, out / "best.ckpt", {}, {}, main_process=False)

    best_path = Path(best_cb.best_model_path or last_cb.best_model_path)
    stable_best = out / "best.ckpt"
    best_state = save_model_checkpoint(best_path, stable_best)["state_dict"]
    moved = weight_change(initial_weights, best_state, ("net.encoder.", "net.decoder."))
    tuning = {}
    if task_named(d.task).tunes_postprocessing and cfg.postprocess.tune and val_set:
        tuning = tune_checkpoint(stable_best, val_set)
    t1 = time.perf_counter()
    test_mean = _score_test(out, stable_best, test_samples, channels, progress)
    summary = {
        "sslseg_version": sslseg.__version__,
        "torch_version": torch.__version__,
        "host": platform.node(),
        "device": "cuda" if torch.cuda.is_available() and cfg.train.accelerator != "cpu" else "cpu",
        "in_channels": channels,
        # every annotation the run used before testing (validation chooses the epoch and thresholds)
        "validation": d.validation,
        "n_labelled_total": len(labelled) + len(val_set),
        "n_labelled_train": len(labelled),
        "n_unlabeled_used": len(pool) if pool else self_training.get("pseudo_kept", 0),
        "n_val": len(val_set),
        "n_unlabeled": len(budget.unlabeled),  # images of the dataset the run saw no label of, test excluded
        "unlabeled_excluded_as_test_images": n_excluded,  # copies of test images in the unlabeled pool
        "n_test": len(test_samples),
        "checkpoint": "best validation score" if val_set else "last epoch (no validation images)",
        "best_val_score": float(best_cb.best_model_score) if best_cb.best_model_score is not None else None,
        # the last epoch's: what the schedule gives without validation (the best of many epochs is biased up)
        "last_val_score": float(trainer.callback_metrics["val/score"])
        if "val/score" in trainer.callback_metrics
        else None,
        "epochs_run": trainer.current_epoch,
        "fit_seconds": fit_s,
        "test_seconds": time.perf_counter() - t1,
        "postprocess_tuning": tuning,
        "self_training": self_training,
        # relative distance the weights travelled from their initialisation to the best epoch
        "weight_change": {"encoder": moved["net.encoder."], "decoder": moved["net.decoder."]},
        "test": test_mean,
    }
    write_json(out / "result.json", summary)
    return FinetuneResult(out, stable_best, test_mean, summary)


def _load_training(
    cfg: FinetuneConfig, samples: list[Sample], channels: int | None, progress: bool
) -> tuple[list[LoadedSample], int]:
    """Training images with their targets (labels or pseudo-labels), at each one's working scale."""
    d = cfg.data
    return load_samples(
        samples,
        d.task,
        d.num_classes,
        channels,
        d.normalization,
        d.scale,
        progress=progress,
        object_size=d.object_size,
        bright_objects=d.bright_objects,
        instance_head=cfg.model.instance_head,
        object_balance=cfg.loss.balance(),
        object_size_um=d.object_size_um,
        pixel_size=d.pixel_size,
    )


def _unlabeled_samples(
    cfg: FinetuneConfig,
    budget: LabelBudget,
    by_id: dict[str, Sample],
    test_samples: list[Sample],
    progress: bool,
) -> tuple[list[Sample], int]:
    """The images semi-supervised fine-tuning may learn from without labels: the run's unlabeled pool
    (images without labels, and labelled ones outside the budget, whose labels are never read) and
    `semi.unlabeled`; never a validation or test image, nor a copy of a test image (same sample id or
    same pixels, left out with a warning naming both files, as pretraining does). Returns them and how
    many copies of test images were left out."""
    held_out = set(budget.val) | set(budget.test)
    samples = [by_id[i] for i in budget.unlabeled if i not in held_out]
    if cfg.semi.unlabeled is not None:
        samples += find_samples(cfg.semi.unlabeled, layout="unlabeled")
    found = len(samples)
    if samples and test_samples:
        index = HeldoutIndex().add(test_samples, progress)
        samples, _ = drop_heldout(
            samples, None, index, what="unlabeled image", allow_empty=True, progress=progress
        )
    if not samples:
        warnings.warn(
            "semi.enabled but there are no unlabeled images (the budget holds every labelled image, none is "
            "without a label, and semi.unlabeled is not set or holds only copies of test images): "
            "fine-tuning is supervised only",
            stacklevel=2,
        )
    return samples, found - len(samples)


def _self_training(
    cfg: FinetuneConfig,
    budget: LabelBudget,
    samples: list[Sample],
    channels: int,
    student: SegmentationModule,
    out: Path,
    resume: bool,
    progress: bool,
) -> tuple[list[LoadedSample], dict[str, Any]]:
    """Self-training's first half: fine-tune a teacher on the labelled images alone (in `out/teacher`, the
    same budget and schedule), start `student` from its weights, and pseudo-label up to
    `semi.pseudo_images` of the unlabeled `samples` with it (each image's result kept in
    `out/pseudo_labels`). With `resume` a finished teacher is reused and a killed one continued, and
    images already pseudo-labelled are read back. Returns the kept pseudo-labelled images, loaded as
    training images, and what it did (for result.json)."""
    t = cfg.train
    if t.num_nodes > 1 or t.strategy.startswith("ddp") or (isinstance(t.devices, int) and t.devices > 1):
        raise ConfigError(
            "semi.method self_training runs in one process (a teacher run, then the student's): set "
            "train.devices 1 and train.num_nodes 1, or use semi.method mean_teacher"
        )
    folder = out / TEACHER
    t0 = time.perf_counter()
    if resume and (folder / "result.json").is_file():  # the teacher finished before the kill
        teacher_summary = json.loads((folder / "result.json").read_text())
    else:
        teacher_cfg = cfg.model_copy(
            update={"output": folder, "semi": cfg.semi.model_copy(update={"enabled": False})}
        )
        teacher_resume = resume and (folder / "checkpoints" / "last.ckpt").is_file()
        teacher_summary = finetune(teacher_cfg, resume=teacher_resume, progress=progress).summary
    teacher = load_model(folder / "best.ckpt")
    student.load_state_dict(teacher.state_dict())
    if len(samples) > cfg.semi.pseudo_images:
        chosen = np.random.default_rng(t.seed).choice(len(samples), cfg.semi.pseudo_images, replace=False)
        samples = [samples[i] for i in sorted(chosen)]
    t1 = time.perf_counter()
    kept, sureness = pseudo_label(
        teacher,
        samples,
        cfg.data,
        channels,
        cfg.semi.confidence,
        cfg.semi.pseudo_keep,
        progress,
        folder=out / PSEUDO_LABELS,
    )
    pseudo_set, _ = _load_training(cfg, kept, channels, progress) if kept else ([], channels)
    info = {
        "teacher_fit_seconds": float(teacher_summary["fit_seconds"]),
        "teacher_test": teacher_summary.get("test", {}),
        "pseudo_label_seconds": time.perf_counter() - t1,
        "pseudo_labelled": len(samples),
        "pseudo_kept": len(kept),
        "sureness_kept": [min(sureness), max(sureness)] if sureness else [],
        "seconds": time.perf_counter() - t0,
    }
    if progress:
        print(
            f"self-training: the teacher pseudo-labelled {len(samples)} unlabeled images, the student trains "
            f"on the {len(kept)} it is surest of beside the {len(budget.train)} labelled ones",
            file=sys.stderr,
            flush=True,
        )
    return pseudo_set, info


def _unlabeled_pool(
    cfg: FinetuneConfig,
    samples: list[Sample],
    channels: int,
    train_set: list[LoadedSample],
    progress: bool,
) -> list[CompactImage]:
    """The mean teacher's unlabeled `samples` (`_unlabeled_samples`), prepared as training images are and
    held compactly (`CompactImage`: the pool may hold thousands of images). With
    `data.object_size` they are resized by the median factor of the labelled images (unlabeled images have no objects to measure), with
    `data.object_size_um` by their own pixel size."""
    d = cfg.data
    if not samples:
        return []
    scale = d.scale
    if d.measured_object_size is not None:
        scale = float(np.median([s.image.shape[1] / s.native_shape[0] for s in train_set]))
    known = d.object_size_um is not None  # each image's own pixel size gives its scale
    pool, _ = load_samples(
        samples,
        d.task,
        d.num_classes,
        channels,
        d.normalization,
        scale,
        with_labels=False,
        progress=progress,
        bright_objects=d.bright_objects,
        object_size=d.object_size if known else None,
        object_size_um=d.object_size_um,
        pixel_size=d.pixel_size,
        compact=True,
    )
    return [s.image for s in pool]  # type: ignore[misc]  # compact: every image is a CompactImage


def tune_checkpoint(checkpoint: Path, val_set: list) -> dict[str, Any]:
    """Choose post-processing thresholds on the validation images and store them in the checkpoint, so
    evaluation and prediction use them. Returns what was chosen and the validation scores."""
    module = load_model(checkpoint)
    post, tuned, default = tune_postprocess(module, val_set)
    ckpt = torch.load(checkpoint, map_location="cpu", weights_only=False)
    ckpt["hyper_parameters"]["config"]["postprocess"] = post.model_dump(mode="json")
    with atomic_path(checkpoint) as tmp:
        torch.save(ckpt, tmp)
    return {"chosen": post.model_dump(mode="json"), "val_score_tuned": tuned, "val_score_default": default}


def _score_test(
    out: Path, checkpoint: Path, test_samples: list[Sample], channels: int, progress: bool
) -> dict[str, float]:
    """Score the checkpoint on the test samples; per-image rows to `test_per_image.csv`."""
    if not test_samples:
        return {}
    best = load_model(checkpoint)
    rows = evaluate_samples(best, load_heldout(test_samples, best.cfg.data, channels, progress), progress)
    write_rows_csv(out / "test_per_image.csv", rows)
    return summarize(rows)


def tune_run(run_dir: str | Path, progress: bool = True) -> dict[str, Any]:
    """Tune the post-processing of a finished instance run (e.g. one trained before tuning existed) on its
    own validation split, then re-score its test split; updates `best.ckpt` and `result.json`."""
    out = Path(run_dir)
    cfg = load_config(FinetuneConfig, out / "config.yaml")
    d = cfg.data
    if not task_named(d.task).tunes_postprocessing:
        raise ConfigError(f"{out}: post-processing tuning applies to instance runs, this one is {d.task}")
    samples = {s.id: s for s in find_samples(d.train, d.layout, d.mask_suffix, allow_unlabeled=True)}
    split = load_split(out / "split.json", list(samples))
    if not split["val"]:
        raise ConfigError(
            f"{out}: the run has no validation images (a fixed schedule on a small budget): its thresholds "
            "stay the configured ones"
        )
    summary = json.loads((out / "result.json").read_text())
    channels = summary["in_channels"]
    val_set = validation_set(cfg, split, samples, channels, progress)
    summary["postprocess_tuning"] = tune_checkpoint(out / "best.ckpt", val_set)
    summary["test"] = _score_test(
        out, out / "best.ckpt", _test_samples(cfg, split, samples), channels, progress
    )
    write_json(out / "result.json", summary)
    return summary


def validation_set(
    cfg: FinetuneConfig, split: dict[str, list[str]], by_id: dict[str, Sample], channels: int, progress: bool
) -> list[LoadedSample]:
    """The validation images (up to train.val_max_images), loaded like test images: at the working scale,
    never sized by their own labels."""
    ids = split["val"][: cfg.train.val_max_images] if cfg.train.val_max_images else split["val"]
    return load_heldout([by_id[i] for i in ids], cfg.data, channels, progress)


def _test_samples(cfg: FinetuneConfig, split: dict[str, list[str]], by_id: dict[str, Sample]) -> list[Sample]:
    if cfg.data.test is not None:
        samples = find_samples(cfg.data.test, layout=cfg.data.test_layout, mask_suffix=cfg.data.mask_suffix)
        missing = [s.id for s in samples if s.label is None]
        if missing:
            raise DataError(cfg.data.test, f"{len(missing)} test images have no labels, e.g. {missing[:3]}")
        return samples
    return [by_id[i] for i in split["test"]]


sslseg.entry_point(__name__)  # `from sslseg import finetune` is callable (see sslseg.API)
