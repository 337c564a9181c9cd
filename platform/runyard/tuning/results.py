"""What a search's trials leave behind: their budget in reports and their weights."""

from __future__ import annotations

import math
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


def checkpointed_reports(exp: Experiment, every: int = 0) -> list[int] | None:
    """The reports (epochs, from 1) with which a trial saves a checkpoint, its
    last among them; None: every report.

    A checkpoint is what the best trial's weights are read from and what a resumed or
    retried trial continues from; saving one every epoch cost 15% of a 32-trial search
    (``runyard bench -w tune``). A trial therefore saves one where a scheduler may stop it
    (its weights must be those of its last report), at its last epoch, and every ``every``
    epochs (``ray.checkpoint_every``: how much a resumed trial re-runs). ASHA stops trials
    only at its rungs; HyperBand's brackets, PBT (which copies a trial's latest checkpoint
    into another) and a time budget (which stops trials anywhere) keep one every epoch.
    """
    search, last = exp.search, max_epochs(exp)
    if search.scheduler in ("hyperband", "pbt") or search.time_budget_s is not None:
        return None
    at = set(range(every, last, every)) if every else set()
    if search.scheduler == "asha":  # rungs at grace_period * reduction_factor ** k (Ray's ASHAScheduler)
        rung = float(search.grace_period)
        while rung < last:
            at |= {math.floor(rung), math.ceil(rung)}
            rung *= search.reduction_factor
    return sorted(at | {last})


def best_weights(best) -> dict[str, torch.Tensor]:
    """The network's weights from the best trial's last checkpoint (Lightning's format)."""
    if best.checkpoint is not None:
        with best.checkpoint.as_directory() as d:
            return net_weights(Path(d) / CKPT_FILE)
    # A data-parallel trial: its Ray Train run kept the checkpoint.
    return net_weights(Path(best.metrics["checkpoint_path"]) / CKPT_FILE)
