"""Settings in and out of YAML: reading a settings file, `--set section.key=value` overrides, merging them
and validating into a config model with errors that name the key (and suggest a misspelt one's fix) — apart
from the schemas, as it works for any pydantic model and knows none of them."""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from sslseg.errors import ConfigError

M = TypeVar("M", bound=BaseModel)


def _suggest(loc: tuple[Any, ...], model: type[BaseModel]) -> str:
    """Name the closest valid key for a misspelt one."""
    cls: type[BaseModel] | None = model
    for part in loc[:-1]:
        field = cls.model_fields.get(str(part)) if cls else None
        ann = field.annotation if field else None
        cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
    if cls is None:
        return ""
    close = difflib.get_close_matches(str(loc[-1]), list(cls.model_fields), n=1, cutoff=0.6)
    prefix = ".".join(str(p) for p in loc[:-1])
    return f" (did you mean '{prefix + '.' if prefix else ''}{close[0]}'?)" if close else ""


def _format_errors(err: ValidationError, model: type[BaseModel], source: str) -> str:
    lines = [f"invalid settings in {source}:"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"])
        if e["type"] == "extra_forbidden":
            lines.append(f"  unknown key '{key}'{_suggest(e['loc'], model)}")
        else:
            lines.append(f"  {key}: {e['msg']} (got {e.get('input')!r})")
    return "\n".join(lines)


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for p in parts[:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise ConfigError(f"cannot set '{dotted}': '{p}' is not a section")
    node[parts[-1]] = value


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
    """Turn ['train.epochs=5', 'model.frozen=true'] into a nested dict (values parsed as YAML scalars)."""
    tree: dict[str, Any] = {}
    for pair in pairs:
        if "=" not in pair:
            raise ConfigError(f"override '{pair}' must look like section.key=value")
        key, raw = pair.split("=", 1)
        _set_dotted(tree, key.strip(), yaml.safe_load(raw) if raw.strip() else None)
    return tree


def deep_merge(base: dict[str, Any], update: dict[str, Any]) -> dict[str, Any]:
    """Recursively merge `update` into a copy of `base` (update wins)."""
    out = dict(base)
    for k, v in update.items():
        out[k] = deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def read_yaml_mapping(path: str | Path, what: str = "config file") -> dict[str, Any]:
    """A YAML file whose top level is a mapping; a missing file or bad YAML is a ConfigError naming it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: {what} not found")
    try:
        loaded = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if not isinstance(loaded, dict):
        raise ConfigError(f"{path}: expected a mapping of settings at the top level")
    return loaded


def load_config(
    model: type[M],
    path: str | Path | None = None,
    overrides: dict[str, Any] | None = None,
    source: str = "command-line settings",
) -> M:
    """Build a config from an optional YAML file plus overrides; errors name the key and the file."""
    data: dict[str, Any] = {}
    if path is not None:
        data = read_yaml_mapping(path)
        source = str(path)
    data = deep_merge(data, overrides or {})
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(e, model, source)) from None


def to_yaml(config: BaseModel) -> str:
    """The resolved config as YAML, for saving beside results."""
    return yaml.safe_dump(config.model_dump(mode="json"), sort_keys=False)
