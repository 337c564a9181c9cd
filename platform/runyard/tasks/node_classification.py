"""Node classification: classification of a graph's nodes (samples are nodes of one graph,
see ``runyard.data.karate``); the evaluation also draws the graph coloured by prediction."""

from __future__ import annotations

import numpy as np

from runyard.data import graph_format
from runyard.evaluation import plots
from runyard.tasks.classification import Classification


class NodeClassification(Classification):
    name = "node_classification"

    def evaluate(self, name, info, splits, out, staging, predict):
        values = super().evaluate(name, info, splits, out, staging, predict)
        x = np.concatenate([splits.x_train, splits.x_val, splits.x_test])
        roles = np.repeat(["train", "val", "test"], [len(splits.y_train), len(splits.y_val), len(splits.y_test)])
        n, f = graph_format.layout(x.shape[1:])
        real = x[0, :, n + f] > 0.5
        plots.graph_predictions(
            x[0, :, :n][np.ix_(real, real)], graph_format.query_nodes(x), predict(x).argmax(1),
            np.concatenate([splits.y_train, splits.y_val, splits.y_test]), roles,
            f"{name}: predicted class (test acc {values['test/acc']:.2f})", staging / "graph.png",
        )
        return values


TASK = NodeClassification()
