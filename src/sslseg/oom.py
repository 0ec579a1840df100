"""Out-of-memory errors a user can act on: instead of a stack trace, one line naming the batch size setting
and a value expected to fit."""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator

import torch

from sslseg.errors import OutOfMemory

# torch.OutOfMemoryError from torch 2.5 on; torch.cuda.OutOfMemoryError (the same class) before
_TORCH_OOM: type[BaseException] = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)
_UNITS = {"B": 1, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30, "TiB": 2**40, "PiB": 2**50}
_SIZE = r"([\d.]+) (B|KiB|MiB|GiB|TiB|PiB)"
# PyTorch's caching allocator says: "CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total
# capacity of 79.10 GiB of which 10.81 MiB is free. Including non-PyTorch memory, this process has
# 79.08 GiB memory in use. ..."; the CPU allocator: "... you tried to allocate 123456 bytes".
_TRIED = re.compile(r"[Tt]ried to allocate " + _SIZE)
_CAPACITY = re.compile(r"total capacity of " + _SIZE)
_IN_USE = re.compile(r"this process has " + _SIZE + " memory in use")
_CPU_TRIED = re.compile(r"you tried to allocate (\d+) bytes")
# functions whose batch is `inference.batch_size` tiles, not training crops
_INFERENCE_FUNCTIONS = frozenset({"validation_step", "test_step", "predict_step", "predict_probabilities"})


def _bytes(match: re.Match[str] | None) -> int | None:
    return int(float(match.group(1)) * _UNITS[match.group(2)]) if match else None


def is_out_of_memory(error: BaseException) -> bool:
    """True for a CUDA out-of-memory error, and for the CPU and MPS allocators' equivalents."""
    if isinstance(error, _TORCH_OOM):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and (
        "can't allocate memory" in text or "MPS backend out of memory" in text
    )


def memory_need(error: BaseException) -> tuple[int | None, int | None]:
    """(bytes needed, bytes available) read from an out-of-memory message: what the process held plus what
    the failing allocation asked for, and the device's capacity; None where the message does not say."""
    text = str(error)
    in_use, tried, capacity = (_bytes(p.search(text)) for p in (_IN_USE, _TRIED, _CAPACITY))
    if tried is None and (m := _CPU_TRIED.search(text)):
        tried = int(m.group(1))
    if in_use is None or tried is None:
        return None, capacity
    return in_use + tried, capacity


def suggest_batch_size(
    current: int, needed: int | None = None, available: int | None = None, minimum: int = 1
) -> int | None:
    """A batch size expected to fit in memory, or None when `current` is already at `minimum`.

    At least halved: an out-of-memory error stops a step part-way, so the memory it would have needed is
    more than the error reports. When the error does say how much was needed and how much there is,
    the batch is also scaled by available / needed (with a 10 % margin), counting all memory as growing
    with the batch, which errs small. Rounded down to a power of two."""
    if current <= minimum:
        return None
    size = current // 2
    if needed and available and needed > available:
        size = min(size, int(current * 0.9 * available / needed))
    size = max(size, 1)
    size = 1 << (size.bit_length() - 1)  # power of two, not above the estimate
    return max(size, minimum)


def _format_size(n: int) -> str:
    for unit in ("GiB", "MiB", "KiB"):
        if n >= _UNITS[unit]:
            return f"{n / _UNITS[unit]:.1f} {unit}"
    return f"{n} B"


def out_of_memory_message(error: BaseException, setting: str, batch_size: int, minimum: int = 1) -> str:
    """One line for the user: which setting ran out of memory at which value, and what to try instead."""
    memory = "GPU memory" if isinstance(error, _TORCH_OOM) or "CUDA" in str(error) else "memory"
    needed, available = memory_need(error)
    size = suggest_batch_size(batch_size, needed, available, minimum)
    need = ""
    if needed and available:
        need = f" (needed more than {_format_size(needed)} of {_format_size(available)})"
    where = f"out of {memory} at {setting}={batch_size}{need}"
    if size is None:
        return (
            f"{where}, the smallest batch this setting allows: use a smaller crop or view size, "
            "precision=bf16-mixed, a smaller encoder, or a device with more memory"
        )
    return (
        f"{where}: try --set {setting}={size} (smaller crops or views and precision=bf16-mixed "
        "also save memory)"
    )


def _in_inference(error: BaseException) -> bool:
    """Whether the error was raised inside validation or inference code (by the functions it passed)."""
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_name in _INFERENCE_FUNCTIONS:
            return True
        tb = tb.tb_next
    return False


@contextlib.contextmanager
def explain_out_of_memory(
    setting: str, batch_size: int, minimum: int = 1, inference: tuple[str, int] | None = None
) -> Iterator[None]:
    """Turn an out-of-memory error inside the block into an `OutOfMemory` error (one line in the CLI) that
    names `setting` and suggests a value expected to fit; other errors pass through unchanged.

    `inference` (setting, value) is named instead when the error came from validation or sliding-window
    inference inside the block (e.g. the validation epochs of `trainer.fit`)."""
    try:
        yield
    except (_TORCH_OOM, RuntimeError) as e:
        if not is_out_of_memory(e):
            raise
        if torch.cuda.is_available():
            torch.cuda.empty_cache()  # give the memory back to a caller that catches this and goes on
        if inference is not None and _in_inference(e):
            setting, batch_size, minimum = inference[0], inference[1], 1
        raise OutOfMemory(out_of_memory_message(e, setting, batch_size, minimum)) from e
