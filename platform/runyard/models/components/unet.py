"""A small U-Net (Ronneberger, Fischer & Brox 2015) for per-pixel classification."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from runyard.models.components.common import Dropout, Init, Width, init_weights


def double_conv(c_in: int, c_out: int, batch_norm: bool, dropout: float) -> nn.Sequential:
    """[conv3x3 -> (BN) -> ReLU] x 2, same padding."""
    layers: list[nn.Module] = []
    for c in (c_in, c_out):
        layers.append(nn.Conv2d(c, c_out, 3, padding=1, bias=not batch_norm))
        if batch_norm:
            layers.append(nn.BatchNorm2d(c_out))
        layers.append(nn.ReLU())
    if dropout:
        layers.append(nn.Dropout2d(dropout))
    return nn.Sequential(*layers)


class UNet(nn.Module):
    """Encoder of ``len(channels)`` double-conv levels with 2x2 max-pooling between them;
    decoder of 2x2 transposed convs, each concatenated with the encoder's features at
    that scale (the skip connections) and followed by a double conv; a 1x1 conv gives
    ``num_outputs`` class scores per pixel: (batch, num_outputs, height, width).

    With ``channels: [16, 32, 64]`` (the default: 117,124 parameters for 1 input channel
    and 4 classes) the bottom level works at a quarter of the image's side. Any height and width of at least
    2^(len(channels) - 1) work: odd sizes are floored by the pooling and padded back
    after upsampling.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        channels: list[Width] = [16, 32, 64],  # noqa: B006
        batch_norm: bool = True,
        dropout: Dropout = 0.0,
        init: Init = "he",
    ):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"needs images (channels, height, width), got input shape {tuple(input_shape)}")
        smallest = 2 ** (len(channels) - 1)
        if min(input_shape[1:]) < smallest:
            raise ValueError(f"{len(channels)} levels need images of at least {smallest}x{smallest} pixels")
        widths = [input_shape[0], *channels]
        self.down = nn.ModuleList(
            double_conv(c_in, c_out, batch_norm, dropout) for c_in, c_out in zip(widths, channels, strict=False)
        )
        deep_to_shallow = channels[::-1]
        self.up = nn.ModuleList(
            nn.ConvTranspose2d(c_deep, c, 2, stride=2)
            for c_deep, c in zip(deep_to_shallow, deep_to_shallow[1:], strict=False)
        )
        self.merge = nn.ModuleList(double_conv(2 * c, c, batch_norm, dropout) for c in deep_to_shallow[1:])
        self.head = nn.Conv2d(channels[0], num_outputs, 1)
        init_weights(self, init)

    def forward(self, x):
        skips = []
        for level, block in enumerate(self.down):
            x = block(x if level == 0 else F.max_pool2d(x, 2))
            skips.append(x)
        for up, merge, skip in zip(self.up, self.merge, reversed(skips[:-1]), strict=True):
            x = up(x)
            x = F.pad(x, (0, skip.shape[-1] - x.shape[-1], 0, skip.shape[-2] - x.shape[-2]))
            x = merge(torch.cat([skip, x], dim=1))
        return self.head(x)
