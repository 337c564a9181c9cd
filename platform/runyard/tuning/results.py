"""What a search's trials leave behind: their budget in reports and their weights."""

from __future__ import annotations

from pathlib import Path

import torch

from runyard.config import Experiment
from runyard.execution.checkpoints import CKPT_FILE, net_weights


def trial_count(search) -> int:
    """Trials the search runs: num_samples, times every grid's size (Tune expands grids)."""
    count = search.num_samples
    for d in search.space.values():
        if d.kind == "grid" or (d.kind == "choice" and search.algorithm == "grid"):
            count *= len(d.values)
    return count


def max_epochs(exp: Experiment) -> int:
    """A trial's budget in reports: epochs, or folds when it cross-validates."""
    return exp.cv.folds if exp.cv else exp.recipe.epochs  # epochs checked with the space


def best_weights(best) -> dict[str, torch.Tensor]:
    """The network's weights from the best trial's last checkpoint (Lightning's format)."""
    if best.checkpoint is not None:
        with best.checkpoint.as_directory() as d:
            return net_weights(Path(d) / CKPT_FILE)
    # A data-parallel trial: its Ray Train run kept the checkpoint.
    return net_weights(Path(best.metrics["checkpoint_path"]) / CKPT_FILE)
