"""Errors a user can act on: the CLI prints them as one clear line, never as a traceback."""

from __future__ import annotations

from pathlib import Path


class SslsegError(Exception):
    """Base class for problems with the user's input, data or configuration."""


class DataError(SslsegError):
    """A data file or folder is unusable; the message names the path and the problem."""

    def __init__(self, path: str | Path, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{path}: {problem}")


class ConfigError(SslsegError):
    """A setting is missing, misspelt or out of range."""


class TrainingDiverged(SslsegError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class OutOfMemory(SslsegError):
    """Training or inference ran out of (GPU) memory; the message names the setting and a value to try."""


class ExportCheckFailed(SslsegError):
    """An exported model does not reproduce PyTorch, or its bioimage.io package does not validate."""
