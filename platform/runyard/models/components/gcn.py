"""Graph convolutional network (Kipf & Welling, ICLR 2017) on packed dense graphs.

Inputs are batches of padded graphs in the layout of ``runyard.data.graph_format``:
adjacency, node features, node mask and query marker in one ``(B, N, N + F + 2)``
array. One layer computes

    H' = Â H W + b,    Â = D̃^-1/2 (A + I) D̃^-1/2,    D̃ = diag(row sums of A + I)

with self loops on real nodes only, so padding nodes stay isolated and never mix
into real ones. The readout is per sample: the marked node's embedding when the
sample marks one (node classification: every sample carries the whole graph and
asks about one node), otherwise mean / sum / max pooling over the real nodes
(graph classification). A linear head maps the readout to the classes.

``GraphMLP`` is the same network with Â replaced by the identity: each node sees only
its own features, so comparing the two shows what the edges add.
"""

from __future__ import annotations

from typing import Annotated, Literal

import torch
from pydantic import Field
from torch import nn

from runyard.data.graph_format import layout, unpack
from runyard.models.components.common import ACTIVATIONS, Activation, Dropout, Init, Width, init_weights

Pooling = Literal["mean", "sum", "max"]
Widths = Annotated[list[Width], Field(min_length=1)]


def normalized_adjacency(adjacency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """D̃^-1/2 (A + I) D̃^-1/2 for a batch (B, N, N) with node mask (B, N).

    Self loops go on real nodes only; a node of degree 0 (padding) gets an all-zero
    row and column instead of a division by zero.
    """
    a = adjacency + torch.diag_embed(mask)
    deg = a.sum(-1)
    inv_sqrt = torch.where(deg > 0, deg.clamp(min=1e-12).rsqrt(), torch.zeros_like(deg))
    return inv_sqrt.unsqueeze(-1) * a * inv_sqrt.unsqueeze(-2)


class GCNLayer(nn.Module):
    """H' = Â (H W) + b: the bias is added after propagation, as in Kipf & Welling."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.linear = nn.Linear(in_features, out_features, bias=False)
        self.bias = nn.Parameter(torch.zeros(out_features))

    def forward(self, h: torch.Tensor, a_hat: torch.Tensor) -> torch.Tensor:
        return a_hat @ self.linear(h) + self.bias


def readout(h: torch.Tensor, mask: torch.Tensor, query: torch.Tensor, pooling: Pooling) -> torch.Tensor:
    """(B, N, D) node embeddings -> (B, D): the queried node's where a sample marks one,
    else ``pooling`` over real nodes. Padding never counts; an empty graph reads 0."""
    m = mask.unsqueeze(-1)
    if pooling == "max":
        pooled = h.masked_fill(m == 0, float("-inf")).amax(1)
        pooled = torch.where(mask.sum(1, keepdim=True) > 0, pooled, torch.zeros_like(pooled))
    else:
        pooled = (h * m).sum(1)
        if pooling == "mean":
            pooled = pooled / mask.sum(1, keepdim=True).clamp(min=1)
    node = (h * query.unsqueeze(-1)).sum(1)
    return torch.where(query.sum(1, keepdim=True) > 0, node, pooled)


class MaskedBatchNorm(nn.BatchNorm1d):
    """Batch norm of (B, N, D) node features over the batch's real nodes: padding neither
    counts in the statistics nor comes out non-zero. Masked sums rather than boolean
    indexing, so shapes never depend on the data (MLflow exports the model with
    torch.export, which refuses data-dependent shapes)."""

    def forward(self, h: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = mask.unsqueeze(-1)
        if self.training:
            count = mask.sum().clamp(min=1)
            mean = (h * m).sum((0, 1)) / count
            var = (((h - mean) * m) ** 2).sum((0, 1)) / count
            with torch.no_grad():  # running stats as nn.BatchNorm1d keeps them (unbiased variance)
                self.running_mean.lerp_(mean, self.momentum)
                self.running_var.lerp_(var * count / (count - 1).clamp(min=1), self.momentum)
                self.num_batches_tracked += 1
        else:
            mean, var = self.running_mean, self.running_var
        return ((h - mean) * torch.rsqrt(var + self.eps) * self.weight + self.bias) * m


class GCN(nn.Module):
    """``len(hidden)`` GCN layers (activation after each, dropout before each, input
    included, as in the paper), a readout, and a linear head.

    Kipf & Welling's karate/citation model is one hidden layer of 16 and a second
    propagation to the classes; ``hidden: [16, 16]`` here is the same two
    propagations followed by a linear head. ``batch_norm`` (not in the paper)
    normalises each layer's output over the batch's real nodes before the
    activation; it matters when node features carry little (see pipelines/graphs_gcn.yaml).
    """

    def __init__(
        self,
        input_shape: tuple[int, ...],
        num_outputs: int,
        hidden: Widths = [16, 16],  # noqa: B006 (read-only; pydantic validates it)
        activation: Activation = "relu",
        dropout: Dropout = 0.5,
        pooling: Pooling = "mean",
        batch_norm: bool = False,
        init: Init = "xavier",
    ):
        super().__init__()
        _, num_features = layout(tuple(input_shape))
        widths = [num_features, *hidden]
        self.layers = nn.ModuleList(GCNLayer(a, b) for a, b in zip(widths, widths[1:], strict=False))
        self.norms = nn.ModuleList(MaskedBatchNorm(w) if batch_norm else nn.Identity() for w in hidden)
        self.act = ACTIVATIONS[activation]()
        self.drop = nn.Dropout(dropout)
        self.pooling = pooling
        self.head = nn.Linear(widths[-1], num_outputs)
        init_weights(self, init)

    def propagation(self, adjacency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return normalized_adjacency(adjacency, mask)

    def embed(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Node embeddings after the last layer (B, N, hidden[-1]), node mask, query marker."""
        adjacency, h, mask, query = unpack(x)
        a_hat = self.propagation(adjacency, mask)
        m = mask.unsqueeze(-1)
        for layer, norm in zip(self.layers, self.norms, strict=True):
            h = layer(self.drop(h), a_hat)
            if isinstance(norm, MaskedBatchNorm):
                h = norm(h, mask)
            # Zero padding nodes after each layer: the bias would otherwise switch them on.
            h = self.act(h) * m
        return h, mask, query

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h, mask, query = self.embed(x)
        return self.head(self.drop(readout(h, mask, query, self.pooling)))


class GraphMLP(GCN):
    """The GCN with Â = I: a per-node MLP and the same readout, blind to the edges
    (a "deep sets" baseline). Same parameters as the GCN of the same widths."""

    def propagation(self, adjacency: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return torch.diag_embed(mask)
