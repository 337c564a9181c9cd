"""What a recipe changes in the training split: fewer samples, random labels.

``recipe.train_samples`` keeps a random subset of the training split (little data, so
that capacity and regularisation matter); ``recipe.label_noise`` replaces that fraction
of the training labels by classes drawn uniformly at random (1.0: random labels, the
memorisation experiment of Zhang et al. 2017). Validation and test are never touched,
so they measure what the net learnt about the real labels.

Both draws come from the run's seed on a stream of their own: every Ray worker, a
resumed run and the search's sweep evaluation see the very same training split.
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from runyard.config import Recipe
from runyard.data.splits import Splits

STREAM = 0x7EA1  # apart from the loaders' permutations and augmentation draws


def training_split(splits: Splits, recipe: Recipe, seed: int, num_classes: int) -> Splits:
    """``splits`` with its training part as the recipe asks (unchanged if it asks nothing)."""
    if recipe.train_samples is None and not recipe.label_noise:
        return splits
    rng = np.random.default_rng([seed % 2**32, STREAM])
    x, y = splits.x_train, splits.y_train
    if recipe.train_samples is not None:
        keep = np.sort(rng.permutation(len(y))[: recipe.train_samples])
        x, y = x[keep], y[keep]
    if recipe.label_noise:
        y = y.copy()
        noisy = rng.permutation(len(y))[: round(recipe.label_noise * len(y))]
        y[noisy] = rng.integers(0, num_classes, len(noisy)).astype(y.dtype)
    return replace(splits, x_train=x, y_train=y)
