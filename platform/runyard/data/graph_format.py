"""Graphs packed into fixed-shape float arrays, so they travel as ordinary ``Splits``.

One sample is one padded graph of at most ``N`` nodes with ``F`` features per node,
stored as an ``(N, N + F + 2)`` float32 array whose columns are:

    [0, N)           adjacency row of each node (symmetric, 0/1, no self loops)
    [N, N + F)       the node's features
    N + F            node mask: 1 for a real node, 0 for padding
    N + F + 1        query marker: 1 on the node this sample asks about, else 0

A graph-level sample (graph classification) marks no node; a node-level sample
(node classification) marks exactly one, and its label is that node's. Padding
nodes have all-zero rows and columns.

Why one array and not a graph library's sparse batch: the shared machinery (the .npy
split format, the in-memory loaders, Ray's object store, the classifier system, the
evaluators, MLflow's signature) all move ``(x, y)`` pairs of fixed-shape arrays. A
sample that is its own graph keeps every one of them unchanged, and course-sized
graphs (tens of nodes) are faster as dense batched matmuls than as scatter ops.
"""

from __future__ import annotations

import numpy as np
import torch

EXTRA_COLUMNS = 2  # node mask, query marker


def sample_shape(max_nodes: int, num_features: int) -> tuple[int, int]:
    return (max_nodes, max_nodes + num_features + EXTRA_COLUMNS)


def layout(input_shape: tuple[int, ...]) -> tuple[int, int]:
    """``(max_nodes, num_features)`` of packed samples of this shape; ValueError if none."""
    if len(input_shape) != 2 or input_shape[1] < input_shape[0] + EXTRA_COLUMNS + 1:
        raise ValueError(
            f"needs packed graphs of shape (N, N + F + {EXTRA_COLUMNS}) with F >= 1 "
            f"(runyard.data.graph_format), got {tuple(input_shape)}"
        )
    n = input_shape[0]
    return n, input_shape[1] - n - EXTRA_COLUMNS


def pack(adjacency: np.ndarray, features: np.ndarray, max_nodes: int, query: int | None = None) -> np.ndarray:
    """One sample: an ``(n, n)`` adjacency and ``(n, F)`` features padded to ``max_nodes``."""
    n, f = features.shape
    if adjacency.shape != (n, n) or n > max_nodes:
        raise ValueError(f"adjacency {adjacency.shape} / features {features.shape} / max_nodes {max_nodes}")
    x = np.zeros(sample_shape(max_nodes, f), dtype=np.float32)
    x[:n, :n] = adjacency
    x[:n, max_nodes : max_nodes + f] = features
    x[:n, max_nodes + f] = 1.0
    if query is not None:
        x[query, max_nodes + f + 1] = 1.0
    return x


def unpack(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch ``(B, N, N + F + 2)`` -> adjacency (B, N, N), features (B, N, F),
    node mask (B, N) and query marker (B, N), the last two as 0/1 floats."""
    n = x.shape[1]
    f = x.shape[2] - n - EXTRA_COLUMNS
    mask = (x[..., n + f] > 0.5).to(x.dtype)
    query = (x[..., n + f + 1] > 0.5).to(x.dtype) * mask
    return x[..., :n], x[..., n : n + f], mask, query


def query_nodes(x: np.ndarray) -> np.ndarray:
    """The node each node-level sample of a numpy batch asks about."""
    n, f = layout(x.shape[1:])
    return x[..., n + f + 1].argmax(-1)
