"""What one trial of a search runs, on a Ray Tune trial actor.

A one-worker trial trains Lightning right in the trial actor: no extra processes,
so a small model's trial costs about its training time. A trial with
``workers_per_trial > 1`` runs a data-parallel Ray Train run inside the trial,
whose rank 0 forwards each epoch to Tune.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import ray
from ray import tune
from ray.tune.integration.ray_train import TuneReportCallback

from runyard.config import Experiment, RayParams, Search
from runyard.data import DatasetInfo
from runyard.execution.checkpoints import resume_path
from runyard.execution.trainer import torch_trainer
from runyard.tuning.space import apply, decode

# Lightning is imported inside the functions below, which run on the trial actors: the
# search's driver imports this module too, and never trains.


def run_trial(
    config: dict[str, Any], *, experiment: dict, info: DatasetInfo, splits, seed: int, storage_path: str,
    checkpoint_at: list[int] | None = None,
) -> None:
    """Ray Tune's function trainable; ``config`` holds this trial's sampled values.
    ``checkpoint_at``: the reports a trial checkpoints (``results.checkpointed_reports``)."""
    from runyard.execution.lightning import quiet_lightning

    quiet_lightning()
    exp = Experiment.model_validate(experiment)
    trial = apply(exp, decode(config, exp.search))
    if exp.cv:
        _cross_validated(trial, exp.search, info, splits, seed)
    elif exp.search.workers_per_trial > 1:
        _data_parallel(trial, exp.search, info, splits, seed, storage_path, checkpoint_at)
    else:
        _in_process(trial, exp.search, info, splits, seed, checkpoint_at)


def _in_process(exp: Experiment, search: Search, info: DatasetInfo, splits, seed: int,
                checkpoint_at: list[int] | None) -> None:
    from runyard.execution.lightning import ReportEpochs
    from runyard.execution.local import fit_local

    with resume_path(tune.get_checkpoint()) as ckpt_path:
        fit_local(exp, info, splits, seed=seed, cpus=search.cpus_per_worker,
                  callbacks=[ReportEpochs(tune.report, tune.Checkpoint, checkpoint_at)], ckpt_path=ckpt_path)


def _cross_validated(exp: Experiment, search: Search, info: DatasetInfo, splits, seed: int) -> None:
    """One report per fold: the running mean (and std) of the folds so far."""
    from runyard.execution.cv import fit_fold, folds

    metric, scores = exp.optimized_metric, []
    for i, fold in enumerate(folds(splits, exp.cv.folds, seed, info.task)):
        result = fit_fold(exp, info, fold, seed, search.cpus_per_worker)
        scores.append(result[metric])
        tune.report({metric: float(np.mean(scores)), f"{metric}_std": float(np.std(scores)),
                     f"fold/{metric}": result[metric], "epoch": i})


def _data_parallel(exp: Experiment, search: Search, info: DatasetInfo, splits, seed: int, storage_path: str,
                   checkpoint_at: list[int] | None) -> None:
    ray_params = RayParams(num_workers=search.workers_per_trial, cpus_per_worker=search.cpus_per_worker)
    # Named after the trial: a resumed search restarts this Train run from its checkpoint.
    trainer = torch_trainer(
        exp, info, ray.put(splits), ray_params, seed=seed,
        name=f"trial-{tune.get_context().get_trial_id()}", storage_path=storage_path,
        callbacks=(TuneReportCallback(),), report_epochs=True, checkpoint_at=checkpoint_at,
    )
    result = trainer.fit()
    if result.error is not None:
        raise result.error
