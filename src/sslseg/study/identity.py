"""What makes two study cells the same: the settings that shape their result and their data by content.

A job's *identity* is its resolved config made independent of where things lie — paths inside the study
folder become relative to it, other existing folders and files become a fingerprint of their content
(names and sizes of a folder's files, the bytes of a file), the output folder is left out — flattened to
dotted settings, together with the list of settings that hold their field's default value in the version
of sslseg that made it. Two identities are *equivalent* when every setting they share has the same value
and every setting only one of them has holds its default there: an option that a newer sslseg added with a
default, or one it removed, changes nothing; a default whose value changed does (the value differs). So an
upgrade, a moved study folder or a new data root keeps every finished cell, and a real change names the
settings it changed.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel
from pydantic_core import PydanticUndefined, to_jsonable_python

STUDY_PREFIX = "study:"  # a path inside the study folder, relative to it
DIGEST_BYTES = 1 << 20  # files are read in chunks of this size when fingerprinted


@dataclass(frozen=True)
class Identity:
    """A job's settings as dotted keys (paths made location-free) and those that hold their default."""

    settings: dict[str, Any]
    at_default: frozenset[str]

    @property
    def hash(self) -> str:
        """A short, stable hash of the settings (equal hashes: the same cell; unequal: see `differences`)."""
        text = json.dumps(self.settings, sort_keys=True, default=str)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def settings_hash(self) -> str:
        """A short hash of the settings not at their default: it stays when a later version adds a setting
        at its default, so it can name what is derived from a job (e.g. a folder of proposals)."""
        chosen = {k: v for k, v in self.settings.items() if k not in self.at_default}
        return hashlib.sha256(json.dumps(chosen, sort_keys=True, default=str).encode()).hexdigest()[:8]

    def to_json(self) -> dict[str, Any]:
        return {"settings": self.settings, "at_default": sorted(self.at_default)}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Identity:
        return cls(dict(data["settings"]), frozenset(data.get("at_default", ())))


def differences(old: Identity, new: Identity) -> list[str]:
    """The settings whose value differs between two identities; empty when they are equivalent (a setting
    that only one side has counts only if it is not at its default there)."""
    changed = []
    for key in sorted(old.settings.keys() | new.settings.keys()):
        if key in old.settings and key in new.settings:
            if old.settings[key] != new.settings[key]:
                changed.append(key)
        elif key in new.settings:
            if key not in new.at_default:
                changed.append(key)
        elif key not in old.at_default:
            changed.append(key)
    return changed


def flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts as {dotted.key: leaf}; lists and scalars are leaves (an empty dict is one leaf too)."""
    if isinstance(tree, dict) and tree:
        out: dict[str, Any] = {}
        for key, value in tree.items():
            out.update(flatten(value, f"{prefix}{key}."))
        return out
    return {prefix[:-1]: tree}


def default_settings(model: type[BaseModel], prefix: str = "") -> dict[str, Any]:
    """The default of every setting of a config class that has one, as dotted keys and JSON values."""
    out: dict[str, Any] = {}
    for name, field in model.model_fields.items():
        value = field.get_default(call_default_factory=True)
        if value is PydanticUndefined:
            continue
        if isinstance(value, BaseModel):
            out.update(flatten(value.model_dump(mode="json"), f"{prefix}{name}."))
        else:
            out.update(flatten(to_jsonable_python(value), f"{prefix}{name}."))
    return out


def fingerprint(path: Path) -> str:
    """A digest of a folder's content (every file's relative name and size, hidden files left out) or of a
    file's bytes: the same data moved elsewhere has the same fingerprint."""
    h = hashlib.sha256()
    if path.is_file():
        with path.open("rb") as fh:
            while chunk := fh.read(DIGEST_BYTES):
                h.update(chunk)
        return f"file:{h.hexdigest()[:16]}"
    entries = []
    for folder, dirs, files in os.walk(path):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        rel = os.path.relpath(folder, path)
        for name in files:
            if not name.startswith("."):
                entries.append((os.path.join(rel, name), os.path.getsize(os.path.join(folder, name))))
    for name, size in sorted(entries):
        h.update(f"{name}\0{size}\n".encode())
    return f"folder:{h.hexdigest()[:16]}"


class PathNormaliser:
    """Makes the path values of a config location-free: inside the study folder, relative to it; an existing
    folder or file elsewhere, its fingerprint (computed once per path); anything else unchanged."""

    def __init__(self, study_root: Path) -> None:
        self.study_root = os.path.abspath(study_root)
        self._seen: dict[str, str] = {}

    def __call__(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self(v) for v in value]
        if not isinstance(value, str) or ("/" not in value and os.sep not in value):
            return value  # not a path: a name such as 'random' or 'imagenet'
        path = os.path.abspath(os.path.expanduser(value))
        if path == self.study_root or path.startswith(self.study_root + os.sep):
            return STUDY_PREFIX + Path(os.path.relpath(path, self.study_root)).as_posix()
        if path not in self._seen:
            self._seen[path] = fingerprint(Path(path)) if os.path.exists(path) else value
        return self._seen[path]


def identity_of(
    config: dict[str, Any],
    defaults: dict[str, Any],
    normalise: PathNormaliser,
    upstream: Identity | None = None,
) -> Identity:
    """The identity of a resolved config (its `output` left out) against its class's `defaults`; a cell that
    starts from a pretraining of the study carries that pretraining's identity under `pretraining.`."""
    settings = flatten(normalise({k: v for k, v in config.items() if k != "output"}))
    at_default = {k for k, v in settings.items() if k in defaults and to_jsonable_python(defaults[k]) == v}
    if upstream is not None:
        settings.update({f"pretraining.{k}": v for k, v in upstream.settings.items()})
        at_default |= {f"pretraining.{k}" for k in upstream.at_default}
    return Identity(settings, frozenset(at_default))


def study_root_of(config: dict[str, Any], key: str, kind: str) -> Path:
    """The study folder a stored job config was made in, from its output folder (`<study>/cells/<key>` or
    `<study>/pretrain/<dataset>/<name>`): an older store's rows hold absolute paths of that folder."""
    out = Path(config["output"])
    depth = len(Path(key).parts) + 1 if kind == "finetune" else 3
    return out.parents[depth - 1]
