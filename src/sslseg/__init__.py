"""sslseg: annotation-efficient biomedical image segmentation.

The Python API is six steps, each importable from the package and called like a function:

    from sslseg import pretrain, finetune, evaluate, predict, export, select

    pretrain(cfg: PretrainConfig) -> PretrainResult            # sslseg.pretrain.pretrain
    finetune(cfg: FinetuneConfig) -> FinetuneResult            # sslseg.finetune.finetune
    evaluate(checkpoint, data) -> dict[str, float]             # sslseg.evaluate.evaluate_checkpoint
    predict(checkpoint, inputs, out_dir) -> PredictReport      # sslseg.predict.predict_files
    export(checkpoint, out) -> ExportResult                    # sslseg.export.export_model
    select(pool, budget, out) -> Selection                     # sslseg.select.select

Each name is the module of its step (so `sslseg.finetune.tune_run` and the like stay reachable), made
callable: calling it runs the function named above, with that function's signature and arguments. The
modules load on first use, so `import sslseg` (and the command line's start) stays fast.
"""

from __future__ import annotations

import importlib
import inspect
import sys
import types
from typing import Any

__version__ = "0.1.0"

#: The callable step modules and the function that calling each one runs.
API: dict[str, str] = {
    "pretrain": "pretrain",
    "finetune": "finetune",
    "evaluate": "evaluate_checkpoint",
    "predict": "predict_files",
    "export": "export_model",
    "select": "select",
}


class EntryPoint(types.ModuleType):
    """A step module that can be called: `sslseg.finetune(cfg)` runs `sslseg.finetune.finetune(cfg)`."""

    def _entry(self) -> Any:
        return getattr(self, API[self.__name__.rpartition(".")[2]])

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self._entry()(*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self._entry())


def entry_point(module_name: str) -> None:
    """Make a step module of API callable; each calls this on its last line, so it is callable however
    it was first imported."""
    if module_name.rpartition(".")[2] not in API:
        raise ValueError(f"{module_name} is not one of the API's steps: {', '.join(API)}")
    sys.modules[module_name].__class__ = EntryPoint


def __getattr__(name: str) -> Any:
    """Load a step of the API on first use (`sslseg.finetune` before anything imported it)."""
    if name in API:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *API})
