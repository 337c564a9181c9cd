"""Zachary's karate club (networkx ``karate_club_graph``): semi-supervised node classification.

34 members, 78 friendships (unweighted here: networkx's interaction counts are
dropped), and the two clubs the members joined after the split: class 0 "Mr. Hi"
(17 members), class 1 "Officer" (17). ``labels_per_class`` members of each club
(drawn with the seed) are the only labelled nodes; the rest is split into validation
(``val_nodes``, stratified) and test.

Representation. Each sample is one node: the whole graph packed as in
``runyard.data.graph_format`` (adjacency, node features, node mask) with that node
marked as the query; its label is the node's club. The GCN propagates over the whole
graph and reads out the marked node. So a batch of the training nodes is exactly
Kipf & Welling's transductive step: every forward pass sees all 34 nodes' features
and edges, and the loss counts only the labelled ones. Nothing in the shared
machinery changes: samples are fixed-shape arrays with one integer label, the
classifier system, loaders and metrics work as for images, a trained model needs
nothing but its input, and Ray's object store holds 34 copies of a 34-node graph
(~320 KB) without noticing.

Node features: ``identity`` (one-hot node id, as in the paper) or ``degree``
(one-hot degree). Both are 34 wide, so the input shape is the same either way.
"""

from __future__ import annotations

from typing import Annotated, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from runyard.data import DatasetInfo
from runyard.data.graph_format import pack, sample_shape
from runyard.data.splits import Splits

NODES = 34
CLASSES = ("Mr. Hi", "Officer")
INFO = DatasetInfo(task="node_classification", input_shape=sample_shape(NODES, NODES), num_classes=2)


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    labels_per_class: Annotated[int, Field(ge=1, le=8)] = 2
    """Labelled (training) nodes per club, drawn with params.yaml's seed."""
    val_nodes: Annotated[int, Field(ge=2, le=16)] = 10
    """Validation nodes (stratified); every other unlabelled node is a test node."""
    features: Literal["identity", "degree"] = "identity"


def graph() -> tuple[np.ndarray, np.ndarray]:
    """Adjacency (34, 34) float32, 0/1, symmetric, no self loops; club labels (34,) int64."""
    import networkx as nx

    g = nx.karate_club_graph()
    adjacency = nx.to_numpy_array(g, nodelist=range(NODES), weight=None, dtype=np.float32)
    labels = np.array([CLASSES.index(g.nodes[i]["club"]) for i in range(NODES)], dtype=np.int64)
    return adjacency, labels


def node_features(adjacency: np.ndarray, kind: str) -> np.ndarray:
    n = len(adjacency)
    if kind == "identity":
        return np.eye(n, dtype=np.float32)
    degree = np.minimum(adjacency.sum(1).astype(np.int64), n - 1)
    return np.eye(n, dtype=np.float32)[degree]


def split_nodes(labels: np.ndarray, args: Args, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Train (``labels_per_class`` per class), val (stratified) and test node ids, each sorted."""
    from sklearn.model_selection import train_test_split

    rng = np.random.default_rng(seed)
    train = np.concatenate([
        rng.permutation(np.flatnonzero(labels == c))[: args.labels_per_class] for c in range(len(CLASSES))
    ])
    rest = np.setdiff1d(np.arange(len(labels)), train)
    val, test = train_test_split(rest, train_size=args.val_nodes, stratify=labels[rest], random_state=seed)
    return np.sort(train), np.sort(val), np.sort(test)


def build(args: Args, seed: int) -> Splits:
    adjacency, labels = graph()
    features = node_features(adjacency, args.features)

    def samples(nodes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        x = np.stack([pack(adjacency, features, NODES, query=int(i)) for i in nodes])
        return x, labels[nodes]

    train, val, test = split_nodes(labels, args, seed)
    return Splits(*samples(train), *samples(val), *samples(test))
