"""A transformer encoder over a 1-D signal read one value per time step."""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from runyard.models.components.common import Dropout, Init, Width, init_weights


def sinusoidal_positions(length: int, d_model: int) -> torch.Tensor:
    """The fixed sine/cosine encoding of "Attention Is All You Need": (length, d_model)."""
    pos = torch.arange(length, dtype=torch.float32).unsqueeze(1)
    freq = torch.exp(torch.arange(0, d_model, 2, dtype=torch.float32) * (-math.log(10_000.0) / d_model))
    pe = torch.zeros(length, d_model)
    pe[:, 0::2] = torch.sin(pos * freq)
    pe[:, 1::2] = torch.cos(pos * freq[: d_model // 2])
    return pe


class TransformerEncoder(nn.Module):
    """Linear(1, d_model) embedding of each scalar step, + sinusoidal positions,
    ``layers`` pre-norm encoder layers, mean or [CLS] pooling, one linear head.

    Positions are sinusoidal rather than learned: they cost no parameters and need no
    data to be learned, which matters on MNIST-1D's 4000 training samples; and the
    encoding of position p + k is a fixed rotation of that of p, so attention can key on
    relative offsets, which suits digits that the generator shifts along the signal.
    Pre-norm layers (norm_first) train more steadily than post-norm without warm-up.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        d_model: Width = 32,
        heads: Width = 4,
        layers: Width = 2,
        ff: Width = 64,
        dropout: Dropout = 0.1,
        pooling: Literal["mean", "cls"] = "mean",
        init: Init = "default",
    ):
        super().__init__()
        if d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by heads ({heads})")
        if len(input_shape) != 1:
            raise ValueError(f"needs a 1-D signal, got input shape {tuple(input_shape)}")
        self.pooling = pooling
        self.embed = nn.Linear(1, d_model)
        # Not persistent: recomputed from the shape, so saved weights hold only learned tensors.
        self.register_buffer("positions", sinusoidal_positions(input_shape[0], d_model), persistent=False)
        self.cls = nn.Parameter(torch.zeros(1, 1, d_model)) if pooling == "cls" else None
        layer = nn.TransformerEncoderLayer(
            d_model, heads, dim_feedforward=ff, dropout=dropout, activation="gelu",
            batch_first=True, norm_first=True,
        )
        # Nested tensors only help with padding masks, which fixed-length signals never need.
        self.encoder = nn.TransformerEncoder(layer, layers, norm=nn.LayerNorm(d_model), enable_nested_tensor=False)
        self.head = nn.Linear(d_model, num_outputs)
        init_weights(self, init)
        if self.cls is not None:
            nn.init.normal_(self.cls, std=0.02)

    def forward(self, x):
        h = self.embed(x.unsqueeze(-1)) + self.positions  # (batch, length, d_model)
        if self.cls is not None:
            h = torch.cat([self.cls.expand(len(h), -1, -1), h], dim=1)
        h = self.encoder(h)
        return self.head(h[:, 0] if self.cls is not None else h.mean(1))
