"""The contract of a task module (see ``runyard.tasks``)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np

from runyard.errors import RunyardError

if TYPE_CHECKING:
    import torch
    from torch import nn

    from runyard.data import DatasetInfo
    from runyard.data.splits import Splits

Predict = Callable[[np.ndarray], np.ndarray]
"""The trained model's outputs for a batch of inputs of the dataset's shape."""


class Task:
    name: ClassVar[str]
    metrics: ClassVar[tuple[str, ...]]
    """What a training logs per epoch (``train/...``, ``val/...``): the allowed ``optimized_metric`` values."""
    system: ClassVar[str | None] = None
    """Import path of the task's own LightningModule (``module:Class``) when the generic
    ``runyard.tasks.system.TaskSystem`` does not fit (a GAN's two optimisers)."""

    def output_shape(self, info: DatasetInfo) -> tuple[int | None, ...]:
        """What a model must return per sample (None: any number, at least ``info.max_objects``)."""
        return (info.num_outputs,)

    def fits_output(self, info: DatasetInfo, per_sample: tuple[int, ...]) -> bool:
        want = self.output_shape(info)
        return len(per_sample) == len(want) and all(
            n == w or (w is None and n >= (info.max_objects or 1)) for n, w in zip(per_sample, want, strict=True)
        )

    def loss_and_metrics(self, net: nn.Module, batch) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """A training or validation step: the loss, and the metrics logged as ``train/<k>`` / ``val/<k>``."""
        raise NotImplementedError

    def evaluate(self, name: str, info: DatasetInfo, splits: Splits, out: np.ndarray, staging: Path,
                 predict: Predict) -> dict[str, float]:
        """Test metrics (``test/...``) for the test outputs ``out``; figures and tables into ``staging``.
        ``predict`` gives outputs for any other inputs the task wants to show."""
        raise NotImplementedError

    def scores(self, info: DatasetInfo, y: np.ndarray, out: np.ndarray) -> dict[str, Any]:
        """The test metrics of outputs ``out`` without the ``test/`` prefix: a search's sweep
        scores every trial's train, validation and test splits with them."""
        raise RunyardError(f"a sweep cannot score {self.name} outputs; tasks it can: classification, "
                           "node_classification, regression, reconstruction, segmentation")
