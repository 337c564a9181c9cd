"""MNIST-1D (Greydanus 2020): the `mnist1d` package's generator, default arguments.

Train and test are exactly the paper's default 4000/1000 split (seed 42). The
validation split is an independent draw from the same generator with another
seed, so the paper's training set is kept whole.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from runyard.data import DatasetInfo
from runyard.data.splits import Splits

INFO = DatasetInfo(task="classification", input_shape=(40,), num_classes=10)


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    num_samples: Annotated[int, Field(ge=100)] = 5000
    """Train + test samples, as in the mnist1d package."""
    train_split: Annotated[float, Field(gt=0, lt=1)] = 0.8
    val_samples: Annotated[int, Field(ge=10)] = 1000
    seed: int = 42
    """The generator's seed; 42 is the paper's dataset."""
    val_seed: int = 4242


def _generate(num_samples: int, train_split: float, seed: int) -> dict:
    from mnist1d.data import get_dataset_args, make_dataset

    args = get_dataset_args()
    args.num_samples, args.train_split, args.seed = num_samples, train_split, seed
    return make_dataset(args)


def build(args: Args, seed: int) -> Splits:
    # `seed` (params.yaml's global seed) is deliberately unused: the data's identity is
    # the generator seed in Args, so the reference numbers keep meaning.
    main = _generate(args.num_samples, args.train_split, args.seed)
    # mnist1d makes num_samples // 10 per class: round up to a multiple of 10.
    val = _generate(-(-args.val_samples // 10) * 10, 1.0, args.val_seed)
    f32 = np.float32
    return Splits(
        x_train=main["x"].astype(f32), y_train=main["y"].astype(np.int64),
        x_val=val["x"][: args.val_samples].astype(f32),
        y_val=val["y"][: args.val_samples].astype(np.int64),
        x_test=main["x_test"].astype(f32), y_test=main["y_test"].astype(np.int64),
    )
