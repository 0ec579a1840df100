"""Masked image modelling for CNN encoders, in the SimMIM form (Xie et al. 2022) with MAE's targets (He et al.
2022): random patches of the view are blanked, the full U-Net (encoder, decoder with skips) predicts their
per-patch normalised pixels, and the loss counts masked pixels only.

Dense, not sparse: the CNN sees blanked patches as zeros (the per-image mean, the views being standardised),
as SimMIM's mask token is seen. SparK (Tian et al. 2023) skips them with sparse convolutions instead, to
keep the zeros out of BatchNorm statistics and the mask edges from bleeding; that is not implemented. It is
still masked image modelling: the pixels to predict are absent from the input and are the only ones scored.
The decoder is pretrained in place and transferred with the encoder.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from sslseg.augment.views import ViewMaker, Views
from sslseg.errors import ConfigError
from sslseg.losses.reconstruction import masked_mse, patch_normalise
from sslseg.methods.autoencoder import UNET_DECODER_CHANNELS, DecoderChannels, reconstruction_head
from sslseg.methods.base import MethodParams, SSLMethod
from sslseg.nn.unet import build_unet
from sslseg.weights import describe_unet_decoder


def patch_mask(
    n: int, height: int, width: int, patch: int, ratio: float, device: torch.device
) -> torch.Tensor:
    """n×1×H×W bool masks, each blanking round(ratio · patches) randomly chosen patch×patch squares
    (at least one, and at least one left visible), as MAE draws exactly that many per image."""
    gh, gw = height // patch, width // patch
    cells = gh * gw
    k = min(max(round(ratio * cells), 1), cells - 1)
    order = torch.rand(n, cells, device=device).argsort(dim=1)
    grid = torch.zeros(n, cells, dtype=torch.bool, device=device)
    grid.scatter_(1, order[:, :k], True)
    return grid.view(n, 1, gh, gw).repeat_interleave(patch, 2).repeat_interleave(patch, 3)


class MaskedParams(MethodParams):
    decoder_channels: DecoderChannels = UNET_DECODER_CHANNELS  # the fine-tuning U-Net's decoder
    patch_size: int = Field(16, ge=2)  # MAE's patch
    mask_ratio: float = Field(0.6, gt=0, lt=1)  # SimMIM's and SparK's ratio for convolutional networks
    norm_pix: bool = True  # MAE: each patch's target normalised by its own mean and variance
    # MAE adds 1e-6 to the patch variance; here views are standardised per image and microscopy has broad,
    # nearly flat backgrounds whose noise a tiny eps would inflate to unit-variance targets.
    norm_eps: float = Field(1e-2, gt=0)
    # MAE/SparK pretrain on random-resized crops and flips only; True keeps the views' colour jitter,
    # blur and noise too.
    photometric: bool = False


class MaskedImageModelling(SSLMethod):
    # SimMIM (Xie et al. 2022): AdamW, base lr 8e-4 per 512 images = 4e-4 per 256, weight decay 0.05
    optim_defaults = {"optimizer": "adamw", "lr": 4e-4, "weight_decay": 0.05}
    Params = MaskedParams
    n_views = 1
    description = "reconstruction: masked patches predicted through the full U-Net; encoder and decoder"

    def build(self) -> None:
        p = self.params
        size = self.cfg.views.size
        if size % p.patch_size or (size // p.patch_size) ** 2 < 2:
            raise ConfigError(
                f"params of masked: views.size {size} must be a multiple of patch_size {p.patch_size}, with "
                "at least two patches"
            )
        if not p.photometric:
            geometric = {"jitter_p": 0.0, "gray_p": 0.0, "blur_p": 0.0, "solarize_p": 0.0, "noise_std": 0.0}
            self.view_maker = ViewMaker(self.cfg.views.model_copy(update=geometric), self.in_channels)
        # the decoder exactly as the fine-tuning U-Net builds it; its throwaway encoder is dropped
        unet = build_unet(self.cfg.encoder, self.in_channels, self.in_channels, p.decoder_channels)
        self.decoder = describe_unet_decoder(
            unet.decoder, self.cfg.encoder, self.in_channels, p.decoder_channels
        )
        self.head = reconstruction_head(p.decoder_channels, self.in_channels)

    def ssl_loss(self, views: Views) -> tuple[torch.Tensor, torch.Tensor]:
        p = self.params
        x = views.images[0]
        mask = patch_mask(x.shape[0], x.shape[2], x.shape[3], p.patch_size, p.mask_ratio, x.device)
        features = self.encoder(x.masked_fill(mask, 0.0))
        pred = self.head(self.decoder(features))
        target = patch_normalise(x, p.patch_size, p.norm_eps) if p.norm_pix else x
        return masked_mse(pred, target, mask), features[-1].mean(dim=(2, 3))

    def extra_weights(self) -> dict[str, nn.Module]:
        """The decoder, trained with skips exactly as fine-tuning uses it (`decoder.safetensors`)."""
        return {"decoder": self.decoder}
