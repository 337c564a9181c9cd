"""scikit-learn's bundled 8x8 handwritten digits (1,797 images), stratified splits."""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from runyard.data import DatasetInfo
from runyard.data.splits import Splits

INFO = DatasetInfo(task="classification", input_shape=(1, 8, 8), num_classes=10)


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    val_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.15
    test_fraction: Annotated[float, Field(gt=0, lt=0.5)] = 0.2


def build(args: Args, seed: int) -> Splits:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    x, y = load_digits(return_X_y=True)
    x = (x / 16.0).astype(np.float32).reshape(-1, 1, 8, 8)  # pixel values are 0..16
    y = y.astype(np.int64)
    x_rest, x_test, y_rest, y_test = train_test_split(
        x, y, test_size=args.test_fraction, stratify=y, random_state=seed
    )
    val_of_rest = args.val_fraction / (1 - args.test_fraction)
    x_train, x_val, y_train, y_val = train_test_split(
        x_rest, y_rest, test_size=val_of_rest, stratify=y_rest, random_state=seed
    )
    return Splits(x_train, y_train, x_val, y_val, x_test, y_test)
