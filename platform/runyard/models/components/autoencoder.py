"""A convolutional autoencoder for images: CNN2d's feature extractor as the encoder.

The encoder is ``features``, built exactly as ``cnn2d``'s (``conv_blocks``), so a
classifier can start from a trained autoencoder's encoder
(``init: {from: <autoencoder experiment>, part: features}``).
"""

from __future__ import annotations

from typing import Literal

from torch import nn

from runyard.models.components.common import Init, Width, init_weights
from runyard.models.components.conv import conv_blocks


class ConvAutoencoder(nn.Module):
    """Encoder: [conv3x3 -> (BN) -> ReLU -> maxpool2] per entry of ``channels``; decoder: the
    mirror image, a 2x2 transposed conv (stride 2) -> (BN) -> ReLU per level, then a 3x3 conv
    back to the input's channels. Returns an image of the input's shape (``num_outputs`` is
    unused). ``output: sigmoid`` keeps pixels in [0, 1] (the image datasets' range before noise).

    Height and width must be divisible by 2^len(channels) (8x8 digits: at most 3 levels).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        channels: list[Width] = [32, 64],  # noqa: B006
        batch_norm: bool = True,
        output: Literal["linear", "sigmoid"] = "sigmoid",
        init: Init = "he",
    ):
        super().__init__()
        c_img, h, w = input_shape
        scale = 2 ** len(channels)
        if h % scale or w % scale:
            raise ValueError(f"height and width ({h}x{w}) must be divisible by 2^len(channels) = {scale}")
        self.features = conv_blocks(c_img, channels, batch_norm)
        layers: list[nn.Module] = []
        widths = [*reversed(channels), channels[0]]
        for c_in, c_out in zip(widths, widths[1:], strict=False):
            layers.append(nn.ConvTranspose2d(c_in, c_out, 2, stride=2))
            if batch_norm:
                layers.append(nn.BatchNorm2d(c_out))
            layers.append(nn.ReLU())
        layers.append(nn.Conv2d(channels[0], c_img, 3, padding=1))
        if output == "sigmoid":
            layers.append(nn.Sigmoid())
        self.decoder = nn.Sequential(*layers)
        init_weights(self, init)

    def forward(self, x):
        return self.decoder(self.features(x))
