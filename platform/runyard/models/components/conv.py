"""Convolutional nets: the MNIST-1D paper's 1-D CNN and a small 2-D CNN for images."""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field
from torch import nn

from runyard.models.components.common import Dropout, Init, Width, init_weights

Kernel = Annotated[int, Field(ge=1, le=15)]


class CNN1d(nn.Module):
    """Conv1d stack with stride 2, then one linear layer.

    Defaults are the MNIST-1D paper's ConvBase: 3 conv layers x 25 channels,
    kernels 5/3/3, stride 2, padding 1 (5,210 parameters on length-40 input).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        channels: list[Width] = [25, 25, 25],  # noqa: B006
        kernel_sizes: list[Kernel] = [5, 3, 3],  # noqa: B006
        dropout: Dropout = 0.0,
        batch_norm: bool = False,
        init: Init = "default",
    ):
        super().__init__()
        if len(channels) != len(kernel_sizes):
            raise ValueError("channels and kernel_sizes must have the same length")
        layers: list[nn.Module] = []
        c_in = 1
        for c, k in zip(channels, kernel_sizes, strict=True):
            layers.append(nn.Conv1d(c_in, c, k, stride=2, padding=1))
            if batch_norm:
                layers.append(nn.BatchNorm1d(c))
            layers.append(nn.ReLU())
            if dropout:
                layers.append(nn.Dropout(dropout))
            c_in = c
        self.features = nn.Sequential(*layers)
        with torch.no_grad():
            n = self.features(torch.zeros(1, 1, *input_shape)).numel()
        self.head = nn.Linear(n, num_outputs)
        init_weights(self, init)

    def forward(self, x):
        return self.head(self.features(x.unsqueeze(1)).flatten(1))


class CNN2d(nn.Module):
    """Conv2d blocks [conv3x3 -> (BN) -> ReLU -> maxpool2], global average pool, linear."""

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        channels: list[Width] = [32, 64],  # noqa: B006
        dropout: Dropout = 0.0,
        batch_norm: bool = True,
        init: Init = "he",
    ):
        super().__init__()
        self.features = conv_blocks(input_shape[0], channels, batch_norm)
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels[-1], num_outputs)
        )
        init_weights(self, init)

    def forward(self, x):
        return self.head(self.features(x))


def conv_blocks(c_in: int, channels: list[int], batch_norm: bool) -> nn.Sequential:
    """[conv3x3 -> (BN) -> ReLU -> maxpool2] per entry of ``channels``: CNN2d's feature
    extractor, and the encoder of the conv autoencoder, so one's weights load into the other."""
    layers: list[nn.Module] = []
    for c in channels:
        layers += [nn.Conv2d(c_in, c, 3, padding=1)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(c))
        layers += [nn.ReLU(), nn.MaxPool2d(2)]
        c_in = c
    return nn.Sequential(*layers)
