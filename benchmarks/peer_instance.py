"""sslseg beside StarDist and cellpose on DSB2018 nuclei, each trained from scratch for the same wall-clock
budget on the same machine and the same images, scored by sslseg's metrics on stage1_test (issue 27).

Every tool trains with its own training code and its documented defaults on exactly the images sslseg
trains on, and validates on the images sslseg validates on (sslseg's own split: `resolve_splits`):

- `all`: the 664 stage1_train images, split as `dsb2018_instance.py` splits them (protocol `fixed`: 10 %
  validation, split_seed 0, at most 40 validation images used), the rest for training.
- `8`: 8 annotated images, the same 8 for every tool: drawn from `--draw-seed` (sslseg's `train.seed`), or
  the `name` column of a `sslseg select` to_annotate.csv given by `--images-csv`. Validation comes out of
  the 8 (protocol `budget`: 1 image validates, 7 train), so no tool sees a 9th annotation.

The tools, all on the CPU (tensorflow-cpu has no GPU; the others are kept there for an equal footing):

- sslseg: `sslseg.finetune` with the best measured `dsb2018_instance.py` recipe (random init, resnet18,
  contact head, nuclei rescaled to 24 px, dark nuclei inverted), its epochs sized to the budget from a
  timed 2-epoch calibration run;
  the post-processing thresholds are then tuned on the validation images, as sslseg always does.
- StarDist 2D (`stardist` on `tensorflow-cpu`): `Config2D` defaults with one input channel and the
  2x2 grid of StarDist's own 2D training example, labels hole-filled (`fill_label_holes`), images
  normalised to the 1-99.8 percentiles (`csbdeep.utils.normalize`), flips/rot90 augmentation as in that
  example; `model.train` with its default epochs, stopped by a callback when the budget is spent (its
  learning rate follows ReduceLROnPlateau, not a fixed-length schedule, so stopping is faithful), the
  best validation weights reloaded, then `optimize_thresholds` on the validation images.
- cellpose classic (cellpose 3, the CPnet U-Net; cellpose 4 is cellpose-SAM and has no classic model):
  `CellposeModel(pretrained_model=False)` trained by `cellpose.train.train_seg` with its defaults (AdamW,
  learning rate 0.005, 224 px tiles, images rescaled to 30 px objects, channels [0, 0], and
  min_train_masks=5, which leaves out training images with fewer than 5 nuclei). Flows are computed
  once (counted in its training time). `n_epochs`, which sets its learning-rate schedule, is sized from
  two timed calibration runs (1 and 4 epochs) on a throwaway network. It predicts at the mean training
  object diameter the trained model stores (`diam_labels`), as cellpose does for custom models.

The budget is each tool's training run: from its data preparation to a trained network. The timed
calibration runs that size sslseg's and cellpose's schedules train throwaway networks; their seconds are
reported (`calibration_seconds`) but not counted, so every kept network trained for about the budget.
Threshold tuning after training (sslseg's, StarDist's `optimize_thresholds`) is counted in
`train_seconds`, so that figure can pass the budget.

The peers see one gray plane: alpha dropped, colour channels averaged (their docs' single-channel nuclei
setting); sslseg reads the images as it always does. Pretrained peer weights (StarDist's 2D_versatile_fluo,
cellpose's nuclei/cyto models) cannot be downloaded on the project's machines and would not be a
from-scratch comparison anyway: every network here starts from random weights.

Prints one JSON line per tool and setting (mean AJI, AJI+, PQ, AP@0.5, DSB score over the test images,
train and predict seconds, the load average around the run) and one comparison line per setting: the
issue's bar is sslseg >= each peer on AJI and on AP@0.5.

    pip install '.[peers]'                      # stardist, tensorflow-cpu, cellpose 3 (benchmark only)
    python benchmarks/peer_instance.py --setting 8 --minutes 60
    python benchmarks/peer_instance.py --setting all --minutes 60 --tools sslseg,stardist
    python benchmarks/peer_instance.py --setting 8 --images-csv runs/select/to_annotate.csv
    python benchmarks/peer_instance.py --smoke   # tiny synthetic data, about a minute; figures meaningless

Tools can also run apart, at the same time, each pinned to its own core (an equal budget of one core each,
in a third of the time of running them one after another), and be compared afterwards:

    OMP_NUM_THREADS=1 taskset -c 0 python benchmarks/peer_instance.py --setting 8 --tools sslseg > a.jsonl
    OMP_NUM_THREADS=1 taskset -c 1 python benchmarks/peer_instance.py --setting 8 --tools stardist > b.jsonl
    python benchmarks/peer_instance.py --compare a.jsonl b.jsonl
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
from _common import StepTimer, colour_or_gray, emit, hardware, means_by_kind, require

from sslseg.config import FinetuneConfig
from sslseg.data.datasets import load_heldout
from sslseg.data.io import read_image
from sslseg.data.layouts import find_samples
from sslseg.data.layouts.base import Sample
from sslseg.data.splits import LabelBudget
from sslseg.data.synth import write_synthetic_dataset
from sslseg.finetune import finetune, resolve_splits
from sslseg.metrics.instance import instance_scores, mean_scores
from sslseg.segmentation.segmenter import Segmenter

TOOLS = ("sslseg", "stardist", "cellpose")
PEERS = {  # the modules each peer needs, and what to install for them
    "stardist": ("stardist", "csbdeep", "tensorflow"),
    "cellpose": ("cellpose",),
}
METRICS = ("aji", "aji_plus", "pq", "ap@0.5", "dsb_score")
BAR_METRICS = ("aji", "ap@0.5")  # issue 27: sslseg >= each peer on these
CALIBRATION_STEPS = 10  # sslseg: optimiser steps of the timed calibration run
CELLPOSE_CALIBRATION_IMAGES = 8  # cellpose: images of its timed calibration runs (1 and 4 epochs)
CELLPOSE_WHOLE_EPOCHS = 20  # cellpose: whole-set epochs when this many fit (its 10-epoch warm-up is half)
CELLPOSE_SUBSET_EPOCHS = 100  # cellpose: epochs of random subsets when fewer whole ones fit
CELLPOSE_SMOKE_TILE = 112  # cellpose's tile (its default 224) in --smoke only, to keep the smoke run short
SMOKE_SECONDS = 4.0  # training budget per tool in --smoke


@dataclass
class Bench:
    """What every tool of one setting shares: the images, the split, the budget and where to write."""

    setting: str
    train_root: Path
    budget: LabelBudget
    samples: dict[str, Sample]
    test_samples: list[Sample]
    truth: dict[str, np.ndarray]
    kind: dict[str, str]  # each test image's id: gray or colour
    seconds: float
    out: Path
    smoke: bool
    draw_seed: int
    images_csv: Path | None
    peer_train: tuple[list[np.ndarray], list[np.ndarray]] = field(default_factory=lambda: ([], []))
    peer_val: tuple[list[np.ndarray], list[np.ndarray]] = field(default_factory=lambda: ([], []))


@dataclass
class ToolRun:
    """One tool's test predictions and the seconds it took, with anything it wants to report."""

    predictions: dict[str, np.ndarray]
    train_seconds: float
    predict_seconds: float
    info: dict[str, Any]


def missing_peers(tools: list[str]) -> str | None:
    """A one-line message naming what `tools` need but cannot import (None when all import), so the script
    stops before any training instead of failing an hour in."""
    for tool in tools:
        for module in PEERS.get(tool, ()):
            try:
                importlib.import_module(module)
            except ImportError as e:
                return (
                    f"peer_instance.py: --tools {tool} needs the benchmark extra (stardist, tensorflow-cpu, "
                    f"cellpose 3): pip install '.[peers]' ({module}: {e})"
                ).replace("\n", " ")
    return None


def sslseg_config(
    bench: Bench, epochs: int, steps_per_epoch: int, output: Path, tune: bool
) -> FinetuneConfig:
    """sslseg's run of one setting: dsb2018_instance.py's settings at full size (tiny ones in --smoke), the
    setting's protocol and budget, on the CPU, no test set (every tool is scored here alike)."""
    few = bench.setting == "8"
    data: dict[str, Any] = {
        "train": bench.train_root,
        "task": "instance",
        "validation": "budget" if few else "fixed",
        "val_fraction": 0.1,
        "split_seed": 0,
        # the best measured DSB2018 recipe (RESULTS.md, contact head): nuclei rescaled to 24 px, dark
        # nuclei on bright ground inverted; smoke's 64 px synthetic nuclei are left at their size
        "object_size": None if bench.smoke else 24.0,
        "bright_objects": not bench.smoke,
    }
    if few:
        data["labelled_images"] = 8  # with a list, sslseg checks that it names exactly 8 images
        if bench.images_csv is not None:
            data["labelled_list"] = bench.images_csv
    model: dict[str, Any] = {
        "encoder": "resnet18",
        "init": "random",
        "decoder_channels": [16, 16, 8, 8, 8] if bench.smoke else [128, 64, 32, 16, 16],
        "instance_head": "contact",
    }
    train: dict[str, Any] = {
        "epochs": epochs,
        "steps_per_epoch": steps_per_epoch,
        "batch_size": 2 if bench.smoke else 8,
        "crop_size": 48 if bench.smoke else 192,
        "lr": 1e-3,
        "patience": 10,
        "val_max_images": 40,
        "seed": bench.draw_seed,
        "accelerator": "cpu",
    }
    cfg: dict[str, Any] = {
        "data": data,
        "model": model,
        "train": train,
        "postprocess": {"tune": tune},
        "output": output,
    }
    if bench.smoke:
        cfg["inference"] = {"tile_size": 64}
    return FinetuneConfig.model_validate(cfg)


class EpochStamps(L.Callback):
    """The wall-clock time at the end of each training epoch (its validation pass included)."""

    def __init__(self) -> None:
        self.stamps: list[float] = []

    def on_train_epoch_end(self, *args: object) -> None:
        """Record when this epoch ended."""
        self.stamps.append(time.monotonic())


class StopAtDeadline(L.Callback):
    """Ends sslseg's training once the wall clock passes `deadline`: a safety net behind the epochs sized
    from the calibration run (it should not fire)."""

    def __init__(self, deadline: float) -> None:
        self.deadline = deadline
        self.fired = False

    def on_train_batch_end(self, trainer: L.Trainer, *args: object) -> None:
        """Ask the trainer to stop after this batch if the budget is spent."""
        if time.monotonic() > self.deadline:
            trainer.should_stop = True
            self.fired = True


def run_sslseg(bench: Bench) -> ToolRun:
    """Fine-tune sslseg for the budget (epochs sized from a timed calibration run) and segment the test set."""
    steps_per_epoch = 2 if bench.smoke else 50  # dsb2018_instance.py's default
    calibration_steps = min(CALIBRATION_STEPS, steps_per_epoch)
    t0 = time.monotonic()
    steps, epochs_done = StepTimer(), EpochStamps()
    probe_cfg = sslseg_config(bench, 2, calibration_steps, bench.out / "sslseg_calibration", tune=False)
    finetune(probe_cfg, progress=False, callbacks=[steps, epochs_done])
    probe_wall = time.monotonic() - t0
    # the second epoch's cost (its steps and a validation pass) is what every epoch costs; the rest of the
    # probe (loading the images, building the model, starting the trainer) the main run pays once again
    epoch_probe = epochs_done.stamps[1] - epochs_done.stamps[0]
    step_s = float(np.median(np.diff(steps.stamps)))
    val_s = max(0.0, epoch_probe - calibration_steps * step_s)
    setup_s = max(0.0, probe_wall - 2 * epoch_probe)
    epoch_s = steps_per_epoch * step_s + val_s
    epochs = max(1, int((bench.seconds - setup_s) // epoch_s))
    t_run = time.monotonic()
    stop = StopAtDeadline(t_run + bench.seconds)
    cfg = sslseg_config(bench, epochs, steps_per_epoch, bench.out / "sslseg", tune=True)
    res = finetune(cfg, progress=False, callbacks=[stop])
    train_s = time.monotonic() - t_run
    split = json.loads((res.output / "split.json").read_text())  # what finetune trained and validated on
    if split["train"] != bench.budget.train or split["val"] != bench.budget.val:
        raise RuntimeError("sslseg trained on other images than the peers were given")

    t1 = time.monotonic()
    segmenter = Segmenter.from_checkpoint(res.best_checkpoint, engine="torch", device="cpu")
    loaded = load_heldout(bench.test_samples, segmenter.cfg.data, segmenter.in_channels, progress=False)
    predictions = {s.id: segmenter.segment(s.image, s.native_shape) for s in loaded}
    predict_s = time.monotonic() - t1
    info = {
        "calibration_seconds": round(probe_wall, 1),
        "step_seconds": round(step_s, 3),
        "validation_seconds": round(val_s, 2),
        "epochs_planned": epochs,
        "epochs_run": res.summary["epochs_run"],
        "steps_per_epoch": steps_per_epoch,
        "fit_seconds": round(res.summary["fit_seconds"], 1),
        "stopped_at_budget": stop.fired,
        "val_score": res.summary["best_val_score"],
        "output": str(res.output),
    }
    return ToolRun(predictions, train_s, predict_s, info)


def gray(image: np.ndarray) -> np.ndarray:
    """One float32 plane for the peers: alpha dropped, colour channels averaged (an H×W×C image)."""
    if image.shape[2] == 4:
        image = image[:, :, :3]
    return image.astype(np.float32).mean(axis=2)


def peer_data(bench: Bench) -> None:
    """Read the training and validation images once for both peers: gray planes and instance labels."""

    def read(ids: list[str]) -> tuple[list[np.ndarray], list[np.ndarray]]:
        """Gray images and their label maps for `ids`."""
        images, labels = [], []
        for i in ids:
            s = bench.samples[i]
            assert s.label is not None
            images.append(gray(read_image(s.image)))
            labels.append(s.label.load().astype(np.int32))
        return images, labels

    bench.peer_train = read(bench.budget.train)
    bench.peer_val = read(bench.budget.val)


@contextlib.contextmanager
def quiet_stdout() -> Iterator[None]:
    """Send a peer's progress prints (Keras progress bars, cellpose's tqdm) to stderr, keeping stdout for
    the JSON lines."""
    with contextlib.redirect_stdout(sys.stderr):
        yield


def stardist_patch(bench: Bench) -> int:
    """StarDist's training patch: Config2D's default 256 px, or in --smoke the largest multiple of 16 that
    fits every training and validation image (the network divides by 16 with the 2x2 grid)."""
    if not bench.smoke:
        return 256
    smallest = min(min(x.shape) for x in bench.peer_train[0] + bench.peer_val[0])
    return max(16, smallest // 16 * 16)


def stardist_augment(x: np.ndarray, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """StarDist's example augmentation: a random flip/rot90 of image and labels, and a random intensity
    scale and shift of the image."""
    k = np.random.randint(4)
    x, y = np.rot90(x, k), np.rot90(y, k)
    if np.random.rand() < 0.5:
        x, y = x[:, ::-1], y[:, ::-1]
    x = x * np.random.uniform(0.6, 2) + np.random.uniform(-0.2, 0.2)
    return np.ascontiguousarray(x), np.ascontiguousarray(y)


def run_stardist(bench: Bench) -> ToolRun:
    """Train StarDist 2D from scratch until the budget is spent, optimise its thresholds on the validation
    images, and segment the test set."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import keras
    import stardist
    from csbdeep.utils import normalize
    from stardist import fill_label_holes
    from stardist.models import Config2D, StarDist2D

    t0 = time.monotonic()
    deadline = t0 + bench.seconds
    X = [normalize(x, 1, 99.8) for x in bench.peer_train[0]]
    Y = [fill_label_holes(y) for y in bench.peer_train[1]]
    Xv = [normalize(x, 1, 99.8) for x in bench.peer_val[0]]
    Yv = [fill_label_holes(y) for y in bench.peer_val[1]]
    patch = stardist_patch(bench)
    conf = Config2D(
        n_rays=32, grid=(2, 2), n_channel_in=1, train_patch_size=(patch, patch), train_tensorboard=False
    )
    with quiet_stdout():  # it prints its default thresholds
        model = StarDist2D(conf, name="model", basedir=str(bench.out / "stardist"))
        model.prepare_for_training()

    class Stop(keras.callbacks.Callback):
        """Ends training after the batch that passes the deadline (its epoch is still validated)."""

        fired = False

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            """Stop once the wall clock passes the budget."""
            if time.monotonic() > deadline:
                self.model.stop_training = True
                Stop.fired = True

    model.callbacks.append(Stop())
    with quiet_stdout():
        history = model.train(
            X, Y, validation_data=(Xv, Yv), augmenter=stardist_augment, seed=bench.draw_seed
        )
        fit_s = time.monotonic() - t0
        thresholds = model.optimize_thresholds(Xv, Yv)
    train_s = time.monotonic() - t0

    t1 = time.monotonic()
    predictions = {}
    with quiet_stdout():
        for s in bench.test_samples:
            labels, _ = model.predict_instances(normalize(gray(read_image(s.image)), 1, 99.8))
            predictions[s.id] = labels.astype(np.int32)
    predict_s = time.monotonic() - t1
    info = {
        "version": stardist.__version__,
        "epochs_run": len(history.epoch),
        "steps_per_epoch": conf.train_steps_per_epoch,
        "patch": patch,
        "fit_seconds": round(fit_s, 1),
        "stopped_at_budget": Stop.fired,
        "thresholds": {k: round(float(v), 3) for k, v in thresholds.items()},
    }
    return ToolRun(predictions, train_s, predict_s, info)


def run_cellpose(bench: Bench) -> ToolRun:
    """Train cellpose's classic model from scratch with `n_epochs` sized to the budget, and segment the
    test set at the training objects' mean diameter."""
    import logging

    import torch
    from cellpose import dynamics, models, train, version

    logging.getLogger("cellpose").setLevel(logging.WARNING)
    t0 = time.monotonic()
    cpu = torch.device("cpu")
    X, Xv = bench.peer_train[0], bench.peer_val[0]
    with quiet_stdout():
        flows = dynamics.labels_to_flows(bench.peer_train[1], device=cpu)
        flows_v = dynamics.labels_to_flows(bench.peer_val[1], device=cpu)
    flows_s = time.monotonic() - t0
    tile = {"bsize": CELLPOSE_SMOKE_TILE} if bench.smoke else {}  # the default 224 px otherwise
    work = bench.out / "cellpose"
    work.mkdir(parents=True, exist_ok=True)
    n_probe = min(len(X), CELLPOSE_CALIBRATION_IMAGES)

    def probe(n_epochs: int) -> float:
        """Seconds train_seg takes on a throwaway network for `n_epochs` over the first images."""
        net = models.CellposeModel(gpu=False, pretrained_model=False)
        start = time.monotonic()
        with quiet_stdout():
            train.train_seg(
                net.net,
                X[:n_probe],
                flows[:n_probe],
                channels=[0, 0],
                n_epochs=n_epochs,
                save_path=work,
                model_name="probe",
                **tile,
            )
        return time.monotonic() - start

    # two probes, 1 and 4 epochs: their difference is the epochs' cost, the rest is train_seg's own set-up
    # (normalising, diameters, saving), which grows with the number of images
    t_probe = time.monotonic()
    once = probe(1)
    per_image = max(probe(4) - once, 1e-3) / 3 / n_probe
    setup_s = max(once - per_image * n_probe, 0.0) * len(X) / n_probe
    n_epochs, per_epoch = cellpose_schedule(bench.seconds - flows_s - setup_s, per_image, len(X), len(Xv))
    epoch_s = cellpose_epoch_seconds(per_image, per_epoch or len(X), len(Xv))
    t_run = time.monotonic()
    probe_s = t_run - t_probe
    net = models.CellposeModel(gpu=False, pretrained_model=False)
    with quiet_stdout():
        path = train.train_seg(
            net.net,
            X,
            flows,
            test_data=Xv,
            test_labels=flows_v,
            channels=[0, 0],
            n_epochs=n_epochs,
            nimg_per_epoch=per_epoch,
            # uniform, as its default; given, so that train_seg drops the entries of the images it leaves
            # out (min_train_masks) along with them; its own default keeps them, and sampling subsets fails
            train_probs=np.full(len(X), 1.0 / len(X)),
            save_path=work,
            model_name=f"from_scratch_{bench.setting}",
            **tile,
        )
    trained = models.CellposeModel(gpu=False, pretrained_model=str(path))
    train_s = flows_s + time.monotonic() - t_run

    t1 = time.monotonic()
    predictions = {}
    with quiet_stdout():
        for s in bench.test_samples:
            masks = trained.eval(gray(read_image(s.image)), channels=[0, 0], **tile)[0]
            predictions[s.id] = np.asarray(masks).astype(np.int32)
    predict_s = time.monotonic() - t1
    info = {
        "version": version,
        "n_epochs": n_epochs,
        "images_per_epoch": per_epoch or len(X),
        "calibration_seconds": round(probe_s, 1),
        "epoch_seconds_estimated": round(epoch_s, 3),
        "setup_seconds_estimated": round(setup_s, 1),
        "diam_labels": round(float(trained.diam_labels), 2),
    }
    return ToolRun(predictions, train_s, predict_s, info)


def cellpose_schedule(seconds: float, per_image: float, n_train: int, n_val: int) -> tuple[int, int | None]:
    """cellpose's `n_epochs` and `nimg_per_epoch` (None: every training image) for `seconds` of training at
    `per_image` seconds per training image. An epoch trains `nimg_per_epoch` images; every 10th also
    evaluates the validation loss (forward only, taken as a third of a training image's cost). train_seg's
    learning rate warms up from 0 over its first 10 epochs, so a budget that affords fewer than
    CELLPOSE_WHOLE_EPOCHS passes over the whole set gets CELLPOSE_SUBSET_EPOCHS epochs of a random subset
    each (train_seg's own `nimg_per_epoch`), not one epoch at a learning rate of 0. Whole epochs, the
    default's way, are kept whenever the warm-up is at most half of them: subsets lose images to rounding."""
    whole = int(seconds // cellpose_epoch_seconds(per_image, n_train, n_val))
    if whole >= CELLPOSE_WHOLE_EPOCHS:
        return whole, None
    per_epoch = int(seconds // (per_image * CELLPOSE_SUBSET_EPOCHS) - n_val / 30)
    if per_epoch < 1:  # not even one image per epoch: as many one-image epochs as fit
        return max(1, int(seconds // cellpose_epoch_seconds(per_image, 1, n_val))), 1
    return CELLPOSE_SUBSET_EPOCHS, min(per_epoch, n_train)


def cellpose_epoch_seconds(per_image: float, n_images: int, n_val: int) -> float:
    """One train_seg epoch of `n_images` training images: every 10th epoch also evaluates the `n_val`
    validation images, forward only (a third of a training image's cost), so n_val / 30 on average."""
    return per_image * (n_images + n_val / 30)


RUNNERS: dict[str, Callable[[Bench], ToolRun]] = {
    "sslseg": run_sslseg,
    "stardist": run_stardist,
    "cellpose": run_cellpose,
}


def score(bench: Bench, predictions: dict[str, np.ndarray]) -> tuple[dict[str, float], dict[str, Any]]:
    """Mean of each metric over the test images, every image scored by `instance_scores` against the same
    ground truth; and the same over the gray (fluorescence) and the colour (stained) test images apart."""
    rows = []
    for s in bench.test_samples:
        gt, pred = bench.truth[s.id], predictions[s.id]
        if gt.shape != pred.shape:
            raise RuntimeError(f"{s.id}: prediction {pred.shape} is not the image's shape {gt.shape}")
        rows.append(instance_scores(gt, pred))
    means = mean_scores(rows)
    ids = [s.id for s in bench.test_samples]
    by_kind = means_by_kind(zip(ids, rows, strict=True), bench.kind, METRICS)
    return {m: means[m] for m in METRICS}, by_kind


def comparison(setting: str, scores: dict[str, dict[str, float]]) -> dict[str, Any]:
    """The comparison line: sslseg minus each peer on every metric, and whether the issue's bar is met
    (sslseg >= each peer on AJI and AP@0.5)."""
    ours = scores["sslseg"]
    peers = {}
    for tool, theirs in scores.items():
        if tool == "sslseg":
            continue
        peers[tool] = {
            "difference": {m: round(ours[m] - theirs[m], 4) for m in METRICS},
            "meets_bar": all(ours[m] >= theirs[m] for m in BAR_METRICS),
        }
    return {
        "benchmark": f"peer_instance/{setting}/comparison",
        "bar": "sslseg >= each peer on " + " and ".join(BAR_METRICS),
        "peers": peers,
        "meets_bar": all(p["meets_bar"] for p in peers.values()),
    }


AGREE = ("smoke", "budget_seconds", "n_train", "n_val", "n_test", "draw_seed", "images_csv", "cores")


def compare_logs(paths: list[Path]) -> list[dict[str, Any]]:
    """The comparison line of each setting, from the tool lines of separate runs (one tool per process, e.g.
    each on its own core): the runs must agree on everything that makes the budget and the images equal."""
    rows: dict[str, dict[str, dict[str, Any]]] = {}
    for path in paths:
        try:
            lines = path.read_text().splitlines()
        except OSError as e:
            raise SystemExit(f"peer_instance.py --compare: cannot read {path}: {e.strerror}") from None
        for n, line in enumerate(lines, 1):
            if not line.startswith("{"):
                continue  # a log may hold other output
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise SystemExit(f"peer_instance.py --compare: {path}:{n} is not a JSON line ({e})") from None
            if str(row.get("benchmark", "")).startswith("peer_instance/") and "tool" in row:
                rows.setdefault(row["setting"], {})[row["tool"]] = row
    if not rows:
        raise SystemExit(f"peer_instance.py --compare: no tool lines in {', '.join(map(str, paths))}")
    lines_out = []
    for setting, by_tool in rows.items():
        if "sslseg" not in by_tool or len(by_tool) < 2:
            raise SystemExit(
                f"peer_instance.py --compare: setting {setting} needs sslseg and a peer, has {sorted(by_tool)}"
            )
        for key in AGREE:
            values = {tool: row.get(key) for tool, row in by_tool.items()}
            if len({json.dumps(v) for v in values.values()}) > 1:
                raise SystemExit(
                    f"peer_instance.py --compare: setting {setting}: the runs differ in {key}: {values}"
                )
        scores = {tool: {m: row[m] for m in METRICS} for tool, row in by_tool.items()}
        lines_out.append(comparison(setting, scores))
    return lines_out


def smoke_data(root: Path) -> tuple[Path, Path]:
    """Tiny synthetic training (12 images) and test (3 images) sets of 64 px images for --smoke, with small
    nuclei (radius 4 px) so every image holds the 5 objects cellpose needs to train on it."""
    train = write_synthetic_dataset(root / "train", n_images=12, size=64, seed=5, mean_radius=4.0)
    test = write_synthetic_dataset(root / "test", n_images=3, size=64, seed=99, mean_radius=4.0)
    return train, test


def prepare(args: argparse.Namespace, setting: str, train_root: Path, test_root: Path, out: Path) -> Bench:
    """The shared state of one setting: sslseg's split of the training images (the peers get the same),
    the test images and their ground truth, read once."""
    test_layout = "auto" if args.smoke else "dsb"
    test_samples = find_samples(test_root, layout=test_layout)
    truth = {}
    for s in test_samples:
        assert s.label is not None
        truth[s.id] = s.label.load()
    samples = find_samples(train_root, allow_unlabeled=True)
    seconds = args.minutes * 60 if args.minutes is not None else (SMOKE_SECONDS if args.smoke else 3600.0)
    bench = Bench(
        setting=setting,
        train_root=train_root,
        budget=LabelBudget("budget", [], [], [], []),
        samples={s.id: s for s in samples},
        test_samples=test_samples,
        truth=truth,
        seconds=seconds,
        out=out / setting,
        smoke=args.smoke,
        draw_seed=args.draw_seed,
        images_csv=args.images_csv,
        kind=colour_or_gray(test_samples),
    )
    bench.budget = resolve_splits(sslseg_config(bench, 1, 1, bench.out / "unused", tune=False), samples)
    return bench


def main() -> None:
    """Parse the options, check the peers import, then train, predict and score every tool per setting."""
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--setting", choices=["all", "8", "both"], default="both")
    ap.add_argument("--minutes", type=float, help="training budget per tool (default 60; --smoke: 4 s)")
    ap.add_argument("--tools", default=",".join(TOOLS), help="comma-separated, of " + ", ".join(TOOLS))
    ap.add_argument("--draw-seed", type=int, default=0, help="which 8 images (sslseg's train.seed)")
    ap.add_argument(
        "--images-csv",
        type=Path,
        help="setting 8: a `sslseg select` to_annotate.csv naming the 8 images (instead of a draw)",
    )
    ap.add_argument("--out", type=Path, default=Path("runs/bench_peer_instance"))
    ap.add_argument("--smoke", action="store_true", help="tiny synthetic data: checks the wiring only")
    ap.add_argument(
        "--compare",
        type=Path,
        nargs="+",
        metavar="LOG",
        help="print the comparison lines from the JSON lines of runs made apart (one tool each), train nothing",
    )
    args = ap.parse_args()
    if args.compare:
        for line in compare_logs(args.compare):
            emit(**line)
        return
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = [t for t in tools if t not in TOOLS]
    if unknown or not tools:
        ap.error(f"--tools: unknown {unknown}; choose among {', '.join(TOOLS)}")
    if args.minutes is not None and not args.minutes > 0:
        ap.error("--minutes must be positive")
    message = missing_peers(tools)
    if message:
        print(message, file=sys.stderr)
        sys.exit(2)
    out = args.out / time.strftime("%Y%m%d-%H%M%S")
    if args.smoke:
        train_root, test_root = smoke_data(out / "data")
    else:
        train_root, test_root = require("dsb2018", "stage1_train"), require("dsb2018", "stage1_test")
    settings = ["all", "8"] if args.setting == "both" else [args.setting]
    for setting in settings:
        bench = prepare(args, setting, train_root, test_root, out)
        if any(t in PEERS for t in tools):
            peer_data(bench)
        scores = {}
        for tool in tools:
            load_before = os.getloadavg()[0]
            print(f"[{setting}] {tool}: training for {bench.seconds:.0f} s", file=sys.stderr, flush=True)
            run = RUNNERS[tool](bench)
            scores[tool], by_kind = score(bench, run.predictions)
            emit(
                benchmark=f"peer_instance/{setting}/{tool}",
                tool=tool,
                setting=setting,
                smoke=args.smoke,
                **{m: round(v, 4) for m, v in scores[tool].items()},
                by_kind=by_kind,
                budget_seconds=round(bench.seconds, 1),
                train_seconds=round(run.train_seconds, 1),
                predict_seconds=round(run.predict_seconds, 1),
                n_train=len(bench.budget.train),
                n_val=len(bench.budget.val),
                n_test=len(bench.test_samples),
                draw_seed=args.draw_seed,
                images_csv=None if args.images_csv is None else str(args.images_csv),
                cores=len(os.sched_getaffinity(0)),
                load_average_before=round(load_before, 2),
                load_average_after=round(os.getloadavg()[0], 2),
                **run.info,
                hardware=hardware(),
            )
        if "sslseg" in scores and len(scores) > 1:
            emit(**comparison(setting, scores))


if __name__ == "__main__":
    main()
