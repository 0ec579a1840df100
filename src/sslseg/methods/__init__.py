"""The SSL methods, by name. An explicit registry: an unknown name is an error listing the valid ones."""

from __future__ import annotations

from sslseg.errors import ConfigError
from sslseg.methods.autoencoder import Autoencoder
from sslseg.methods.barlow import BarlowTwins
from sslseg.methods.base import SSLMethod
from sslseg.methods.byol import BYOL
from sslseg.methods.densecl import DenseCL
from sslseg.methods.detco import DetCo
from sslseg.methods.masked import MaskedImageModelling
from sslseg.methods.moco import MoCo
from sslseg.methods.modeco import MoDeCo
from sslseg.methods.pixpro import PixPro
from sslseg.methods.simclr import SimCLR
from sslseg.methods.vicreg import VICReg
from sslseg.methods.vicregl import VICRegL

METHODS: dict[str, type[SSLMethod]] = {
    "detco": DetCo,
    "modeco": MoDeCo,
    "simclr": SimCLR,
    "moco": MoCo,
    "byol": BYOL,
    "barlow_twins": BarlowTwins,
    "vicreg": VICReg,
    "densecl": DenseCL,
    "pixpro": PixPro,
    "vicregl": VICRegL,
    "autoencoder": Autoencoder,
    "masked": MaskedImageModelling,
}


def get_method(name: str) -> type[SSLMethod]:
    """The method class registered under `name`."""
    try:
        return METHODS[name]
    except KeyError:
        raise ConfigError(
            f"unknown SSL method '{name}'; valid methods: {', '.join(sorted(METHODS))}"
        ) from None
