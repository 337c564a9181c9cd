"""Classical classifiers (scikit-learn): one typed factory per model name.

A factory's keyword-only arguments are the keys allowed under ``model:``. Their
types, ranges and defaults are validated by ``config.kwargs_model``, exactly like
a deep component's constructor. ``seed`` comes from params.yaml and may not be
set in a pipeline. Numbers are strict: ``max_depth: true`` or ``n_estimators: 2.5``
is an error, not a silent cast.

Each factory returns a plain scikit-learn estimator (or a Pipeline of them), so
the model saves and loads in the skops format and needs nothing from runyard.
Inputs are flattened: a digits image (1, 8, 8) is 64 features.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

import numpy as np
from pydantic import Field, PlainValidator

# Arguments runyard fills in; a pipeline may not set them.
INJECTED = {"seed"}

# Types in these factories' fitted estimators that skops does not trust by default
# (Cython trees and neighbour indexes, all scikit-learn's own). Loading trusts these
# and nothing else, and so does MLflow's sklearn flavour, which is given this list.
SKOPS_TRUSTED = [
    "sklearn.tree._tree.Tree",
    "sklearn.ensemble._hist_gradient_boosting.predictor.TreePredictor",
    "sklearn.neighbors._kd_tree.KDTree",
    "sklearn.neighbors._ball_tree.BallTree",
    "sklearn.metrics._dist_metrics.EuclideanDistance64",
    "sklearn.metrics._dist_metrics.ManhattanDistance64",
]

PosInt = Annotated[int, Field(gt=0, strict=True)]
SplitInt = Annotated[int, Field(ge=2, strict=True)]
PosFloat = Annotated[float, Field(gt=0, strict=True)]
NonNegFloat = Annotated[float, Field(ge=0, strict=True)]
Criterion = Literal["gini", "entropy", "log_loss"]


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _max_features(v: Any) -> Any:
    if v is None or v in ("sqrt", "log2") or (_is_number(v) and 0 < v <= 1):
        return v
    raise ValueError("must be 'sqrt', 'log2', a fraction in (0, 1] or null (all features)")


def _gamma(v: Any) -> Any:
    if v in ("scale", "auto") or (_is_number(v) and v > 0):
        return v
    raise ValueError("must be 'scale', 'auto' or a number > 0")


# One validator each, so a bad value is one plain message (not one per union member).
MaxFeatures = Annotated[Any, PlainValidator(_max_features)]
Gamma = Annotated[Any, PlainValidator(_gamma)]


def decision_tree(
    seed: int,
    *,
    criterion: Criterion = "gini",
    max_depth: PosInt | None = None,
    min_samples_split: SplitInt = 2,
    min_samples_leaf: PosInt = 1,
    max_features: MaxFeatures = None,
    ccp_alpha: NonNegFloat = 0.0,
):
    """One CART tree (``DecisionTreeClassifier``); ``max_depth: null`` grows it until leaves are pure."""
    from sklearn.tree import DecisionTreeClassifier

    return DecisionTreeClassifier(
        criterion=criterion, max_depth=max_depth, min_samples_split=min_samples_split,
        min_samples_leaf=min_samples_leaf, max_features=max_features, ccp_alpha=ccp_alpha,
        random_state=seed,
    )


def random_forest(
    seed: int,
    *,
    n_estimators: PosInt = 100,
    criterion: Criterion = "gini",
    max_depth: PosInt | None = None,
    min_samples_split: SplitInt = 2,
    min_samples_leaf: PosInt = 1,
    max_features: MaxFeatures = "sqrt",
    bootstrap: bool = True,
):
    """Bagged trees (``RandomForestClassifier``), grown on every CPU of the machine."""
    from sklearn.ensemble import RandomForestClassifier

    return RandomForestClassifier(
        n_estimators=n_estimators, criterion=criterion, max_depth=max_depth,
        min_samples_split=min_samples_split, min_samples_leaf=min_samples_leaf,
        max_features=max_features, bootstrap=bootstrap, n_jobs=-1, random_state=seed,
    )


def gradient_boosting(
    seed: int,
    *,
    learning_rate: PosFloat = 0.1,
    max_iter: PosInt = 100,
    max_leaf_nodes: SplitInt | None = 31,
    max_depth: PosInt | None = None,
    min_samples_leaf: PosInt = 20,
    l2_regularization: NonNegFloat = 0.0,
    max_features: Annotated[float, Field(gt=0, le=1, strict=True)] = 1.0,
):
    """Histogram gradient boosting (``HistGradientBoostingClassifier``), no early stopping:
    exactly ``max_iter`` rounds per class."""
    from sklearn.ensemble import HistGradientBoostingClassifier

    return HistGradientBoostingClassifier(
        learning_rate=learning_rate, max_iter=max_iter, max_leaf_nodes=max_leaf_nodes,
        max_depth=max_depth, min_samples_leaf=min_samples_leaf,
        l2_regularization=l2_regularization, max_features=max_features, early_stopping=False,
        random_state=seed,
    )


def svm(
    seed: int,
    *,
    kernel: Literal["rbf", "linear", "poly", "sigmoid"] = "rbf",
    C: PosFloat = 1.0,  # noqa: N803 (scikit-learn's name)
    gamma: Gamma = "scale",
    degree: PosInt = 3,
    standardize: bool = False,
):
    """Support vector classifier (``SVC``, one-vs-one); ``gamma`` and ``degree`` apply to
    the non-linear kernels. ``standardize: true`` puts a StandardScaler in front."""
    from sklearn.svm import SVC

    return _scaled(SVC(kernel=kernel, C=C, gamma=gamma, degree=degree, random_state=seed), standardize)


def knn(
    seed: int,
    *,
    n_neighbors: PosInt = 5,
    weights: Literal["uniform", "distance"] = "uniform",
    metric: Literal["euclidean", "manhattan", "cosine"] = "euclidean",
    standardize: bool = False,
):
    """k-nearest neighbours (``KNeighborsClassifier``; ``seed`` is unused: it is deterministic)."""
    from sklearn.neighbors import KNeighborsClassifier

    return _scaled(KNeighborsClassifier(n_neighbors=n_neighbors, weights=weights, metric=metric), standardize)


def _scaled(estimator, standardize: bool):
    if not standardize:
        return estimator
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), estimator)


def flatten(x: np.ndarray) -> np.ndarray:
    """Samples x features: what every scikit-learn estimator takes."""
    return x.reshape(len(x), -1)


def one_hot(pred: np.ndarray, num_classes: int) -> np.ndarray:
    """Predicted labels as one-hot scores: the evaluators' argmax gives back exactly ``predict``."""
    return np.eye(num_classes, dtype=np.float32)[pred]
