"""A tiny DETR (Carion et al. 2020): a CNN backbone, a transformer, learned object queries."""

from __future__ import annotations

import torch
from torch import nn

from runyard.models.components.attention import sinusoidal_positions
from runyard.models.components.common import Dropout, Init, Width, init_weights


class DETR(nn.Module):
    """Object detection as set prediction. The backbone (per level of ``channels``: a
    conv3x3 + batch norm + ReLU, then 2x2 max-pooling) turns the image into a grid of
    feature vectors; a 1x1 conv projects them to ``d_model`` and fixed 2-D sine
    positions are added (half the channels encode the row, half the column), so
    attention knows where each feature sits. ``encoder_layers`` transformer layers let
    the grid cells exchange context, then ``queries`` learned object queries attend to
    the grid through ``decoder_layers`` decoder layers. Each query ends as one
    detection: ``num_outputs + 1`` class scores ("no object" last) and a box
    ``(cx, cy, w, h)`` in (0, 1) (a sigmoid), concatenated: per image the output is
    ``(queries, num_outputs + 5)``. ``queries`` must be at least the most objects an
    image holds. Matching and loss: ``runyard.models.detection``.

    Every decoder layer's queries go through the same heads (``forward_layers``): the
    training loss scores each layer, DETR's auxiliary losses, which speed up learning
    a lot; ``forward`` gives the last layer's only. Layers are pre-norm.
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        channels: list[Width] = [16, 32, 64],  # noqa: B006
        d_model: Width = 64,
        heads: Width = 4,
        encoder_layers: int = 1,
        decoder_layers: Width = 2,
        ff: Width = 128,
        queries: Width = 6,
        dropout: Dropout = 0.0,
        init: Init = "default",
    ):
        super().__init__()
        if len(input_shape) != 3:
            raise ValueError(f"needs images (channels, height, width), got input shape {tuple(input_shape)}")
        if d_model % 4 or d_model % heads:
            raise ValueError(f"d_model ({d_model}) must be divisible by 4 and by heads ({heads})")
        if encoder_layers < 0:
            raise ValueError(f"encoder_layers must be 0 or more, got {encoder_layers}")
        scale = 2 ** len(channels)
        height, width = (s // scale for s in input_shape[1:])
        if min(height, width) < 1:
            raise ValueError(f"{len(channels)} levels need images of at least {scale}x{scale} pixels")
        layers: list[nn.Module] = []
        for c_in, c_out in zip([input_shape[0], *channels], channels, strict=False):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU(),
                       nn.MaxPool2d(2)]
        self.backbone = nn.Sequential(*layers)
        self.project = nn.Conv2d(channels[-1], d_model, 1)
        # Not persistent: recomputed from the shape, so saved weights hold only learned tensors.
        self.register_buffer("positions", grid_positions(height, width, d_model), persistent=False)

        def layer(kind):
            return kind(d_model, heads, dim_feedforward=ff, dropout=dropout, batch_first=True, norm_first=True)

        self.encoder = nn.ModuleList(layer(nn.TransformerEncoderLayer) for _ in range(encoder_layers))
        self.encoder_norm = nn.LayerNorm(d_model)
        self.decoder = nn.ModuleList(layer(nn.TransformerDecoderLayer) for _ in range(decoder_layers))
        self.decoder_norm = nn.LayerNorm(d_model)
        self.queries = nn.Parameter(torch.randn(queries, d_model))
        self.classify = nn.Linear(d_model, num_outputs + 1)
        self.box = nn.Sequential(nn.Linear(d_model, d_model), nn.ReLU(), nn.Linear(d_model, d_model), nn.ReLU(),
                                 nn.Linear(d_model, 4))
        init_weights(self, init)

    def forward_layers(self, x: torch.Tensor) -> torch.Tensor:
        """Every decoder layer's detections: (decoder_layers, batch, queries, num_outputs + 5)."""
        grid = self.project(self.backbone(x))  # (B, d_model, h, w)
        memory = grid.flatten(2).transpose(1, 2) + self.positions  # (B, h * w, d_model)
        for block in self.encoder:
            memory = block(memory)
        memory = self.encoder_norm(memory)
        # x.shape[0], not len(x): an int would fix the batch size of the exported model.
        q = self.queries.expand(x.shape[0], -1, -1)
        outs = []
        for block in self.decoder:
            q = block(q, memory)
            h = self.decoder_norm(q)
            outs.append(torch.cat([self.classify(h), torch.sigmoid(self.box(h))], dim=-1))
        return torch.stack(outs)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_layers(x)[-1]


def grid_positions(height: int, width: int, d_model: int) -> torch.Tensor:
    """2-D sine positions of a (height, width) grid, row-major: (height * width, d_model)."""
    rows = sinusoidal_positions(height, d_model // 2)[:, None, :].expand(height, width, -1)
    cols = sinusoidal_positions(width, d_model // 2)[None, :, :].expand(height, width, -1)
    return torch.cat([rows, cols], dim=-1).reshape(height * width, d_model)

