"""The course's 1-D regression target on [-1, 1]:

    f(x) = 0.2 + 0.4 x^3 + 0.3 x sin(15 x) + 0.05 cos(20 x)

Train and validation x are uniform random; the test x is an even grid, so the
fit plot shows the whole curve.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from runyard.data import DatasetInfo
from runyard.data.splits import Splits

INFO = DatasetInfo(task="regression", input_shape=(1,))


class Args(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    train_samples: Annotated[int, Field(ge=2)] = 1000
    val_samples: Annotated[int, Field(ge=2)] = 200
    test_samples: Annotated[int, Field(ge=2)] = 500
    noise: Annotated[float, Field(ge=0)] = 0.0
    """Std of Gaussian noise added to train/val targets (the test targets stay clean)."""


def target(x: np.ndarray) -> np.ndarray:
    return 0.2 + 0.4 * x**3 + 0.3 * x * np.sin(15 * x) + 0.05 * np.cos(20 * x)


def build(args: Args, seed: int) -> Splits:
    rng = np.random.default_rng(seed)

    def sample(n: int) -> tuple[np.ndarray, np.ndarray]:
        x = rng.uniform(-1, 1, size=(n, 1))
        return x, target(x) + args.noise * rng.standard_normal((n, 1))

    x_train, y_train = sample(args.train_samples)
    x_val, y_val = sample(args.val_samples)
    x_test = np.linspace(-1, 1, args.test_samples).reshape(-1, 1)
    f32 = np.float32
    return Splits(
        x_train.astype(f32), y_train.astype(f32), x_val.astype(f32), y_val.astype(f32),
        x_test.astype(f32), target(x_test).astype(f32),
    )
