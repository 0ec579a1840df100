"""Self-supervised losses as plain functions of embeddings, each testable against a hand-computed value.

`contrastive`: NT-Xent, InfoNCE. `noncontrastive`: BYOL, Barlow Twins, VICReg. `dense`: pixel/region-level.
"""

from sslseg.losses.contrastive import info_nce, nt_xent

__all__ = ["info_nce", "nt_xent"]
