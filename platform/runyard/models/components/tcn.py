"""A temporal convolutional network (Bai, Kolter & Koltun 2018) for 1-D signals."""

from __future__ import annotations

from typing import Annotated

from pydantic import Field
from torch import nn

from runyard.models.components.common import Dropout, Init, Width, init_weights

Kernel = Annotated[int, Field(ge=2, le=7)]


class TemporalBlock(nn.Module):
    """Two dilated Conv1d -> ReLU (-> Dropout), added to the input (1x1 conv if widths differ)."""

    def __init__(self, c_in: int, c_out: int, kernel_size: int, dilation: int, dropout: float):
        super().__init__()
        # "Same" padding by hand: Conv1d(padding="same") copies the input for even kernels.
        total = dilation * (kernel_size - 1)
        layers: list[nn.Module] = []
        for c in (c_in, c_out):
            layers += [
                nn.ZeroPad1d((total // 2, total - total // 2)),
                nn.Conv1d(c, c_out, kernel_size, dilation=dilation),
                nn.ReLU(),
            ]
            if dropout:
                layers.append(nn.Dropout(dropout))
        self.net = nn.Sequential(*layers)
        self.skip = nn.Conv1d(c_in, c_out, 1) if c_in != c_out else nn.Identity()
        self.out = nn.ReLU()

    def forward(self, x):
        return self.out(self.net(x) + self.skip(x))


class TCN(nn.Module):
    """``levels`` residual blocks with dilation 1, 2, 4, ..., global average pool, linear head.

    The convolutions are same-padded (centred), not causal: a classifier sees the whole
    signal at once, so nothing is gained by hiding the future from a step, and centred
    kernels let every position, the first ones included, see context on both sides
    before the average pool. Stride is 1 throughout, so the length stays 40. With the
    defaults (kernel 3, 4 levels) the receptive field is 1 + 2*(3-1)*(1+2+4+8) = 61
    steps, more than the whole MNIST-1D signal.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        channels: Width = 32,
        levels: Width = 4,
        kernel_size: Kernel = 3,
        dropout: Dropout = 0.0,
        init: Init = "he",
    ):
        super().__init__()
        if len(input_shape) != 1:
            raise ValueError(f"needs a 1-D signal, got input shape {tuple(input_shape)}")
        self.blocks = nn.Sequential(
            *(TemporalBlock(1 if i == 0 else channels, channels, kernel_size, 2**i, dropout) for i in range(levels))
        )
        self.head = nn.Linear(channels, num_outputs)
        init_weights(self, init)

    def forward(self, x):
        return self.head(self.blocks(x.unsqueeze(1)).mean(-1))
