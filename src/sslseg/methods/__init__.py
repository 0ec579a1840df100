"""The SSL methods, by name. An explicit registry: an unknown name is an error listing the valid ones."""

from __future__ import annotations

from sslseg.errors import ConfigError
from sslseg.methods.base import SSLMethod
from sslseg.methods.moco import MoCo
from sslseg.methods.simclr import SimCLR

METHODS: dict[str, type[SSLMethod]] = {
    "simclr": SimCLR,
    "moco": MoCo,
}


def get_method(name: str) -> type[SSLMethod]:
    """The method class registered under `name`."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(
            f"unknown SSL method '{name}'; valid methods: {', '.join(sorted(METHODS))}"
        ) from None
