"""Denoising autoencoder (Vincent et al. 2008; the DLIP reference's U-Net `ae_mode`): encoder + U-Net decoder
WITHOUT skip connections reconstruct the clean crop from its augmented view, so everything must pass the
stride-32 bottleneck. Only the encoder is transferred (see `extra_weights`)."""

from __future__ import annotations

from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import Field
from segmentation_models_pytorch.base.heads import SegmentationHead
from segmentation_models_pytorch.decoders.unet.decoder import UnetDecoder
from torch import nn

from sslseg.augment.views import ViewMaker, Views, crop_views, standardize
from sslseg.methods.base import MethodParams, SSLMethod

# The fine-tuning U-Net's decoder (`build_unet` default): one block per stage of the depth-5 SSL encoder.
DecoderChannels = tuple[
    Annotated[int, Field(ge=1)],
    Annotated[int, Field(ge=1)],
    Annotated[int, Field(ge=1)],
    Annotated[int, Field(ge=1)],
    Annotated[int, Field(ge=1)],
]
UNET_DECODER_CHANNELS: DecoderChannels = (256, 128, 64, 32, 16)


def reconstruction_head(decoder_channels: tuple[int, ...], out_channels: int) -> nn.Module:
    """The U-Net's 3×3 output convolution, predicting pixels instead of classes (not transferred)."""
    return SegmentationHead(decoder_channels[-1], out_channels, kernel_size=3)


class DenoisingViews(ViewMaker):
    """Per image: one augmented view and the same crop, flipped alike, without photometric changes."""

    @torch.no_grad()
    def forward(self, base: torch.Tensor, n_views: int = 1) -> Views:
        base = base.float()
        with torch.autocast(base.device.type, enabled=False):  # float32 under mixed precision, as ViewMaker
            noisy, boxes, flips = self.one_view(base)
            clean = standardize(crop_views(base, boxes, flips, self.cfg.size))
        return Views([noisy, clean], [boxes, boxes], [flips, flips])


class AutoencoderParams(MethodParams):
    decoder_channels: DecoderChannels = UNET_DECODER_CHANNELS
    # "clean": denoising autoencoder (Vincent et al. 2008), the target is the crop before colour jitter, blur
    # and noise; "input": plain autoencoder of the augmented view, as the DLIP reference trains it.
    target: Literal["clean", "input"] = "clean"
    loss: Literal["smooth_l1", "mse"] = "smooth_l1"  # SmoothL1 (β = 1) in the DLIP reference configs


class Autoencoder(SSLMethod):
    # reconstruction, like masked modelling, trains best with AdamW (SimMIM settings)
    optim_defaults = {"optimizer": "adamw", "lr": 4e-4, "weight_decay": 0.05}
    Params = AutoencoderParams
    n_views = 1
    description = "reconstruction: (denoising) autoencoder through a skip-less U-Net decoder; encoder only"

    def build(self) -> None:
        p = self.params
        self.view_maker = DenoisingViews(self.cfg.views, self.in_channels)
        # The U-Net decoder with every skip input removed (0 channels): conv shapes differ from the
        # fine-tuning decoder's, so it cannot be transferred by accident.
        dims = self.feature_dims
        self.decoder = UnetDecoder(
            encoder_channels=[dims[0], *[0] * (len(dims) - 2), dims[-1]],
            decoder_channels=p.decoder_channels,
            n_blocks=len(p.decoder_channels),
            add_center_block=self.cfg.encoder.startswith("vgg"),  # as smp.Unet builds it
        )
        self.head = reconstruction_head(p.decoder_channels, self.in_channels)

    def decode(self, features: list[torch.Tensor]) -> torch.Tensor:
        """Pixels from the deepest feature alone; the other features only give the output sizes."""
        skips = [f.new_empty(f.shape[0], 0, *f.shape[2:]) for f in features[:-1]]
        return self.head(self.decoder([*skips, features[-1]]))

    def ssl_loss(self, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
        x = views.images[0]
        target = views.images[1] if self.params.target == "clean" else x
        features = self.encoder(x)
        pred = self.decode(features)
        loss = F.smooth_l1_loss(pred, target) if self.params.loss == "smooth_l1" else F.mse_loss(pred, target)
        return loss, features[-1].mean(dim=(2, 3))

    def extra_weights(self) -> dict[str, nn.Module]:
        """None: this decoder never saw skip features. A skip U-Net's decoder has extra input channels at
        every block whose weights it would lack, and its up-path would have to unlearn synthesising detail
        from the bottleneck once skips supply it, so only the encoder is transferred (as in the reference)."""
        return {}
