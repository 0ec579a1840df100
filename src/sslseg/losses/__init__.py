"""Self-supervised losses as plain functions of embeddings, each testable against a hand-computed value.

`contrastive`: NT-Xent, InfoNCE. `noncontrastive`: BYOL, Barlow Twins, VICReg. `dense`: pixel/region-level.
"""

from sslseg.losses.contrastive import info_nce, nt_xent
from sslseg.losses.dense import densecl_dense_loss, pixel_consistency, vicregl_local_loss
from sslseg.losses.noncontrastive import barlow_twins_loss, byol_loss, vicreg_loss, vicreg_terms

__all__ = [
    "barlow_twins_loss",
    "byol_loss",
    "densecl_dense_loss",
    "info_nce",
    "nt_xent",
    "pixel_consistency",
    "vicreg_loss",
    "vicreg_terms",
    "vicregl_local_loss",
]
