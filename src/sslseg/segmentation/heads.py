"""Instance representations: what an instance U-Net predicts, how it learns it and how objects come out.

Each head is one entry of `INSTANCE_HEADS`, chosen by `model.instance_head`. Its target maps are made from
instance labels by `sslseg.data.targets.INSTANCE_TARGETS` under the same name; the head adds the loss, the
post-processing and the threshold grid that tuning searches on the validation split.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from sslseg.config import PostprocessConfig
from sslseg.data.targets import TargetLayout, instance_target_layout
from sslseg.segmentation.postprocess import distance_to_instances

# Weight of the distance-map regression relative to the foreground BCE + Dice terms: the seeds come from
# the distance map, so it must be accurate around the seed threshold, where squared errors are small.
DISTANCE_LOSS_WEIGHT = 5.0
# Extra weight of contact pixels in the foreground BCE: the few pixels that separate two nuclei decide
# whether they come out as one object or two (U-Net's border weighting, Ronneberger et al. 2015).
CONTACT_PIXEL_WEIGHT = 5.0

_DICE = smp.losses.DiceLoss("binary", from_logits=True)


@dataclass(frozen=True)
class InstanceHead:
    """One instance representation: its name, what it is, and its post-processing threshold grid."""

    name: str
    description: str
    tuning_grid: dict[str, tuple[float, ...]]

    @property
    def targets(self) -> TargetLayout:
        return instance_target_layout(self.name)

    @property
    def channels(self) -> int:
        return len(self.targets.channels)

    def loss(
        self, logits: torch.Tensor, target: torch.Tensor, pixel_weight: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Foreground BCE + Dice and distance MSE; heads with a contact map add its BCE + Dice and weight
        the foreground BCE up on contact pixels. `pixel_weight` (B×1×H×W, e.g. object balancing's, see
        `sslseg.data.targets.object_balance_weights`) multiplies the foreground BCE's pixel weights too.

        The Dice term stays unweighted: it is one overlap over the whole batch, whose gradient is the same on
        every foreground pixel whatever its error or its object (a missed small nucleus is pulled no harder
        than a confident large one), so a per-pixel weight acts through the BCE, whose gradient grows with
        each pixel's error."""
        fg_logit, dist_logit = logits[:, :1], logits[:, 1:2]
        fg, dist = target[:, :1], target[:, 1:2]
        weight = pixel_weight
        extra = logits.new_zeros(())
        if self.channels > 2:
            contact_logit, contact = logits[:, 2:3], target[:, 2:3]
            weight = 1.0 + CONTACT_PIXEL_WEIGHT * contact
            if pixel_weight is not None:
                weight = weight * pixel_weight
            extra = F.binary_cross_entropy_with_logits(contact_logit, contact) + _DICE(contact_logit, contact)
        return (
            F.binary_cross_entropy_with_logits(fg_logit, fg, weight=weight)
            + _DICE(fg_logit, fg)
            + DISTANCE_LOSS_WEIGHT * F.mse_loss(dist_logit.sigmoid(), dist)
            + extra
        )

    def to_labels(self, probs: np.ndarray, post: PostprocessConfig | None = None) -> np.ndarray:
        """Probabilities (channels × H × W, as `targets.channels`) → instance label map."""
        if probs.shape[0] != self.channels:
            raise ValueError(
                f"instance head '{self.name}' expects {self.channels} channels "
                f"({', '.join(self.targets.channels)}), got {probs.shape[0]}"
            )
        contact = probs[2] if self.channels > 2 else None
        return distance_to_instances(probs[0], probs[1], post, contact=contact)


_BASE_GRID = {
    "fg_threshold": (0.4, 0.5, 0.6),
    "seed_threshold": (0.3, 0.4, 0.5, 0.6, 0.7),
    "min_size_fraction": (0.0, 0.1, 0.25),
}

INSTANCE_HEADS: dict[str, InstanceHead] = {
    "distance": InstanceHead(
        "distance",
        "foreground and each object's distance to its border, normalised to 1 at its centre; seeds are the "
        "high-distance cores, grown by watershed (the reference's distance-map regression)",
        _BASE_GRID,
    ),
    "contact": InstanceHead(
        "contact",
        'foreground, normalised distance and the borders where objects touch or nearly touch ("touching '
        'borders", as the DSB2018 winners predicted them); seeds are distance cores cut at contacts, and '
        "objects meet on the predicted border",
        {**_BASE_GRID, "fg_threshold": (0.3, 0.4, 0.5, 0.6), "contact_threshold": (0.3, 0.5, 0.7)},
    ),
}


def instance_head(name: str) -> InstanceHead:
    """The head registered under `name`; an unknown name is an error listing the valid ones."""
    instance_target_layout(name)  # one list of valid names, with its error message
    return INSTANCE_HEADS[name]
