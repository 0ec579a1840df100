"""Run folders: what a training run may find in its output folder before it starts, and what its checkpoints
must hold so that a run killed and resumed ends exactly where an uninterrupted run would."""

from __future__ import annotations

import importlib.util
import random
import zipfile
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch
from lightning.fabric.plugins import TorchCheckpointIO
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.loggers import CSVLogger, Logger

from sslseg.atomic import atomic_path
from sslseg.errors import ConfigError, DataError


def prepare_run_dir(out: Path, resume: bool) -> Path:
    """Check a run folder before training: --resume needs its last checkpoint, complete and readable; a fresh
    run must not mix with an earlier run's checkpoints. Returns the path of the last checkpoint."""
    last = out / "checkpoints" / "last.ckpt"
    if resume and not last.is_file():
        raise ConfigError(f"--resume: no checkpoint to resume from at {last}")
    if resume:
        check_checkpoint(last, "Resume from a good copy of it, or start a new run in another folder.")
        for stale in (out / "checkpoints").glob(".*.tmp*"):  # a write cut off by a kill (see atomic_path)
            stale.unlink(missing_ok=True)
    if not resume and any((out / "checkpoints").glob("*.ckpt")):
        raise ConfigError(
            f"{out} already holds checkpoints of an earlier run: continue it with --resume, "
            "or choose another output folder (or delete this one)"
        )
    out.mkdir(parents=True, exist_ok=True)
    return last


def check_checkpoint(path: Path, advice: str = "") -> None:
    """Refuse a truncated or corrupt checkpoint with a DataError naming it (and `advice` on what to do),
    before Lightning or torch reads it.

    A checkpoint is a zip archive (torch's format): its index sits at the end, so a cut-off file has none,
    and every part carries a checksum, so damage inside shows too (checking reads about 1 GB per second)."""
    hint = " ".join(["written to a full disk, or copied incompletely?", advice]).strip()
    try:
        with open(path, "rb") as fh:
            head = fh.read(4)
        if not head:
            raise DataError(path, f"checkpoint file is empty (0 bytes); {hint}")
        if head != b"PK\x03\x04":
            raise DataError(path, "not a checkpoint: torch saves checkpoints as zip archives, this is none")
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError):
        raise DataError(path, f"truncated checkpoint (its zip index is missing); {hint}") from None
    except OSError as e:
        raise DataError(path, f"cannot read checkpoint: {e.strerror or e}") from None
    if bad is not None:
        raise DataError(path, f"corrupt checkpoint (part '{bad}' fails its checksum); {hint}")


def csv_log_version(out: Path, resume: bool) -> str:
    """Folder name under `logs/` for this run's CSV log: "" for a fresh run, and a new `resumed-N` on each
    resume, so a resumed run never overwrites the metrics logged before it was interrupted."""
    if not resume:
        return ""
    n = 1
    while (out / "logs" / f"resumed-{n}").exists():
        n += 1
    return f"resumed-{n}"


def run_loggers(out: Path, resume: bool) -> list[Logger]:
    """The loggers of a training run (pretraining and fine-tuning alike): the CSV log under `logs/` always,
    TensorBoard (`tensorboard/`) and MLflow (a file store in `mlruns/`) when they are installed, all inside
    the run folder so that nothing is sent anywhere."""
    loggers: list[Logger] = [CSVLogger(out, name="logs", version=csv_log_version(out, resume))]
    if importlib.util.find_spec("tensorboard"):
        from lightning.pytorch.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(out, name="tensorboard", version=""))
    if importlib.util.find_spec("mlflow"):
        from lightning.pytorch.loggers import MLFlowLogger

        uri = f"file:{(out / 'mlruns').resolve()}"
        loggers.append(MLFlowLogger(experiment_name="sslseg", tracking_uri=uri))
    return loggers


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written beside their target, synced, then renamed into place (`sslseg.atomic`): a kill
    or a full disk never leaves a half-written `last.ckpt` where the previous complete one was.

    Lightning's own writer goes through a temporary file in the system's temp folder and moves it into
    place, which is a copy, not an atomic rename, when that folder is on another file system."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        if storage_options is not None or "://" in str(path):  # remote storage: Lightning's own way
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        with atomic_path(path) as tmp:
            torch.save(checkpoint, tmp)


# what a model checkpoint needs to be loaded and used: weights and config, without the optimiser's state
# (which is twice the weights' size under Adam), loops or callbacks
MODEL_KEYS = ("state_dict", "hyper_parameters", "pytorch-lightning_version", "epoch", "global_step")


def save_model_checkpoint(source: Path, target: Path) -> dict[str, Any]:
    """Write the model part of the Lightning checkpoint `source` to `target`, atomically: a third of the
    size of a full checkpoint and all that loading, evaluating and predicting need. Returns that part."""
    full = torch.load(source, map_location="cpu", weights_only=False)
    model = {k: full[k] for k in MODEL_KEYS if k in full}
    with atomic_path(target) as tmp:
        torch.save(model, tmp)
    return model


HALF_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16}


def half_precision_checkpoint(path: Path, dtype: str = "float16") -> int:
    """Rewrite a model checkpoint (`save_model_checkpoint`'s) with its float32 weights in `dtype`, float16 or
    bfloat16, atomically: half the disk for a finished run that is only loaded again. Loading casts back,
    as `load_state_dict` copies into the module's float32 parameters. A tensor beyond float16's range
    keeps float32. Returns the bytes saved (0 when the checkpoint is already stored so)."""
    target = HALF_DTYPES[dtype]
    before = path.stat().st_size
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    if ckpt.get("weights_dtype") == dtype:
        return 0
    limit = torch.finfo(target).max
    state = ckpt["state_dict"]
    for name, t in state.items():
        if t.dtype in (torch.float32, torch.float64) and (t.numel() == 0 or t.abs().max() <= limit):
            state[name] = t.to(target)
    ckpt["weights_dtype"] = dtype
    with atomic_path(path) as tmp:
        torch.save(ckpt, tmp)
    return before - path.stat().st_size


def last_checkpoint(checkpoints: Path) -> ModelCheckpoint:
    """A checkpoint callback that writes `checkpoints/last.ckpt` at the end of every epoch, for --resume.

    Not `ModelCheckpoint(save_last=True)`: since Lightning 2.6 that writes `last.ckpt` only on epochs that
    also saved a top-k checkpoint, so with `save_top_k=0` only when training ends, and with a monitored
    score only on the epochs that improved it; a killed run then loses every epoch since."""
    return ModelCheckpoint(dirpath=checkpoints, filename="last", save_top_k=1, enable_version_counter=False)


class RandomStateCheckpoint(L.Callback):
    """Save the random number generators' states in every checkpoint and restore them on --resume.

    Lightning checkpoints hold the weights, optimiser, schedule and loop counters, but not the RNGs that
    draw training crops, augmentations and SSL views: without them a resumed run draws other crops than
    the run it continues, and ends with other weights. With them a run killed after an epoch and resumed
    is bit-identical to one never interrupted (same hardware, `train.deterministic`). States are stored
    as tensors and plain numbers, so checkpoints stay loadable with `weights_only=True`.

    With several processes (DDP) every process starts from the same seed, and the crop datasets draw
    from the global RNG whatever index the distributed sampler hands them: each process would train on
    the same crops and views. So with more than one process, each one's RNGs are re-seeded from a draw
    common to all plus its rank, at the start and again after a resume (which restores rank 0's states).
    """

    def __init__(self) -> None:
        self._rank, self._world_size = 0, 1

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        self._rank, self._world_size = trainer.global_rank, trainer.world_size
        self._decorrelate_processes()

    def _decorrelate_processes(self) -> None:
        if self._world_size <= 1:
            return
        seed = int(torch.randint(2**31 - 1, (1,))) + self._rank  # the same draw in every process
        torch.manual_seed(seed)  # CPU and every CUDA device
        np.random.seed(seed)
        random.seed(seed)

    def state_dict(self) -> dict[str, Any]:
        np_state = np.random.get_state()
        py_state = random.getstate()
        state: dict[str, Any] = {
            "torch": torch.get_rng_state(),
            "numpy": {
                "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                "pos": int(np_state[2]),
                "has_gauss": int(np_state[3]),
                "cached_gaussian": float(np_state[4]),
            },
            "python": {
                "version": py_state[0],
                "internal": torch.tensor(py_state[1], dtype=torch.int64),
                "gauss_next": py_state[2],
            },
        }
        if torch.cuda.is_available() and torch.cuda.is_initialized():
            state["cuda"] = torch.cuda.get_rng_state_all()
        return state

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if "torch" in state_dict:
            torch.set_rng_state(state_dict["torch"])
        if "numpy" in state_dict:
            s = state_dict["numpy"]
            keys = s["keys"].numpy().astype(np.uint32)
            np.random.set_state(("MT19937", keys, s["pos"], s["has_gauss"], s["cached_gaussian"]))
        if "python" in state_dict:
            s = state_dict["python"]
            random.setstate((s["version"], tuple(int(v) for v in s["internal"].tolist()), s["gauss_next"]))
        cuda = state_dict.get("cuda")
        if cuda is not None and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)
        self._decorrelate_processes()
