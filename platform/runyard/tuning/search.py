"""A Ray Tune search (Optuna TPE or random/grid, ASHA/HyperBand/PBT), driven from one process.

The driver owns every MLflow write (see children.py), Optuna's study lives in an
RDB (``tune.study_storage``), and Tune's own experiment state lives under the
Ray storage path: ``--resume`` restores all three, so finished trials never run
again and unfinished ones continue from their last epoch's checkpoint.
``runyard.commands.tune`` opens the parent run and registers the best model.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import optuna
import ray
import torch
from mlflow.entities import Metric, Param, RunTag
from ray import tune
from ray.tune import Callback
from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, PopulationBasedTraining
from ray.tune.search.basic_variant import BasicVariantGenerator
from ray.tune.search.optuna import OptunaSearch

from runyard import tasks
from runyard.config import Experiment
from runyard.errors import RunyardError
from runyard.models import build_model, is_lightning_model, model_inputs
from runyard.progress import console, interactive, status
from runyard.tracking import cost
from runyard.tracking.client import RetryingClient
from runyard.tracking.models import log_pytorch_model
from runyard.tuning import adapter
from runyard.tuning.children import OUTCOME_TAG
from runyard.tuning.results import best_weights, checkpointed_reports, max_epochs, trial_count
from runyard.tuning.space import apply, decode, tune_domains
from runyard.tuning.sweep import record_sweep, record_trials
from runyard.tuning.trial import run_trial


def run_search(exp: Experiment, info, splits, seed: int, storage: Path, run_name: str, study: str,
               children, *, resume: bool, retry_errored: bool, checkpoint_every: int = 0):
    """Run (or resume) the Tune search of ``exp``; ``children`` logs its trials. Tune's ResultGrid.
    ``checkpoint_every``: epochs between a trial's checkpoints besides those its scheduler needs."""
    search = exp.search
    trainable = tune.with_parameters(
        run_trial, experiment=exp.model_dump(mode="json", by_alias=True), info=info, splits=splits, seed=seed,
        storage_path=str(storage / "trials"), checkpoint_at=checkpointed_reports(exp, checkpoint_every),
    )
    # A data-parallel trial's actor only waits for its Ray Train workers, which hold the
    # CPUs. Even 0.01 CPU would leave 2 one-CPU workers unplaceable on 2 cores, and Tune
    # refuses an empty request: so the actor asks for one byte of memory instead.
    one_worker = search.workers_per_trial == 1
    trainable = tune.with_resources(trainable, {"cpu": search.cpus_per_worker} if one_worker else {"memory": 1})
    callbacks = [children, SearchProgress(trial_count(search), exp.optimized_metric, exp.optimized_mode)]
    path = storage / run_name
    if resume and tune.Tuner.can_restore(str(path)):
        adapter.restore_replaced_checkpoints(path)
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=retry_errored,
                                   param_space=tune_domains(search))
        adapter.set_callbacks(tuner, callbacks)
    else:
        tuner = tune.Tuner(
            trainable,
            param_space=tune_domains(search),
            tune_config=tune.TuneConfig(
                metric=exp.optimized_metric, mode=exp.optimized_mode,
                search_alg=_searcher(exp, seed, study, run_name), scheduler=_scheduler(exp),
                num_samples=search.num_samples, max_concurrent_trials=search.max_concurrent,
                time_budget_s=search.time_budget_s, reuse_actors=True,
            ),
            run_config=tune.RunConfig(
                name=run_name, storage_path=str(storage), callbacks=callbacks, verbose=0,
                checkpoint_config=tune.CheckpointConfig(num_to_keep=1),
                # A trial whose actor or node died continues from its last epoch on another node.
                failure_config=tune.FailureConfig(max_failures=search.max_failures),
            ),
        )
    return tuner.fit()


def _searcher(exp: Experiment, seed: int, study: str, study_name: str):
    if exp.search.algorithm != "tpe":
        return BasicVariantGenerator(random_state=seed)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    return DurableOptunaSearch(sampler=optuna.samplers.TPESampler(seed=seed), study_name=study_name,
                               storage=optuna.storages.RDBStorage(study))


class DurableOptunaSearch(OptunaSearch):
    """Optuna's study lives in an RDB, which can be ahead of Tune's saved state: a search
    killed after Optuna recorded a trial's end, but before Tune saved it, resumes that
    trial, and Optuna refuses its further reports. They are already in the study."""

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        with contextlib.suppress(optuna.exceptions.UpdateFinishedTrialError):
            super().on_trial_result(trial_id, result)


def _scheduler(exp: Experiment):
    search, max_t = exp.search, max_epochs(exp)
    if search.scheduler == "asha":
        return ASHAScheduler(time_attr="training_iteration", max_t=max_t, grace_period=search.grace_period,
                             reduction_factor=search.reduction_factor)
    if search.scheduler == "hyperband":
        return HyperBandScheduler(time_attr="training_iteration", max_t=max_t,
                                  reduction_factor=search.reduction_factor)
    if search.scheduler == "pbt":
        return PopulationBasedTraining(time_attr="training_iteration",
                                       perturbation_interval=search.perturbation_interval,
                                       hyperparam_mutations=tune_domains(search), seed=0)
    return FIFOScheduler()


def finish(project, exp: Experiment, info, splits, seed: int, grid, parent: str, children) -> dict[str, Any]:
    """Best trial -> the parent run (active): its params, metric, test metrics and model."""
    metric, mode = exp.optimized_metric, exp.optimized_mode
    outcomes = [r.data.tags.get(OUTCOME_TAG, "running") for r in children.children()]
    counts = {o: outcomes.count(o) for o in ("completed", "pruned", "errored")}
    try:
        best = grid.get_best_result(metric, mode, scope="last", filter_nan_and_inf=True)
    except RuntimeError:
        best = None
    if best is None or best.metrics.get(metric) is None:
        own = f" ({exp.model_name} must log it itself)" if is_lightning_model(exp.model_name) else ""
        raise RunyardError(f"{exp.name}: no trial reported {metric}{own}; see the child runs' errors in MLflow")
    config = decode(best.config, exp.search)
    net = build_model(apply(exp, config).model, info.input_shape, info.num_outputs)
    net.load_state_dict(_refit(exp, config, info, splits, seed) if exp.cv else best_weights(best))
    net.eval()

    def predict(x):
        with torch.no_grad():
            return net(torch.from_numpy(model_inputs(net, x))).numpy()

    # Through the children's client: the driver's, retried through a tracking server outage.
    client = children.client
    with tempfile.TemporaryDirectory() as staging:
        test = tasks.get(info.task).evaluate(exp.name, info, splits, predict(splits.x_test), Path(staging), predict)
        client.log_artifacts(parent, staging, "evaluation")
    record_sweep(project, exp, info, splits, seed, grid, children)
    record_trials(project, exp, grid, client=client, run_id=parent)
    spent = log_trial_costs(exp, grid, children)
    best_params = {f"best.{k}": json.dumps(v) if isinstance(v, list) else v for k, v in config.items()}
    values = {metric: best.metrics[metric], **test, **{f"search/{k}": v for k, v in counts.items()},
              "search/trials": len(outcomes), **spent}
    now = int(time.time() * 1000)  # one timestamp for every attempt: a retried batch is stored once
    client.log_batch(parent, metrics=[Metric(k, float(v), now, 0) for k, v in values.items()],
                     params=[Param(k, str(v)) for k, v in best_params.items()],
                     tags=[RunTag("runyard.best_trial", str(best.metrics.get("trial_id", "")))])
    retried = client if isinstance(client, RetryingClient) else None
    model_uri = log_pytorch_model(net, splits.x_test[:5], tracking=retried)
    return {"experiment": exp.name, "parent_run_id": parent, "metric": metric, "best_value": best.metrics[metric],
            "best_config": config, "best_trial": best.metrics.get("trial_id"), "test": test,
            "trials": len(outcomes), **counts, "model_uri": model_uri, "state_dict": net.state_dict()}


def log_trial_costs(exp: Experiment, grid, children) -> dict[str, float]:
    """Each trial's cost (Tune's ``time_total_s`` x the CPUs its workers held) on its child
    run; their sum, for the parent run. A resumed trial's time counts every attempt."""
    search, spent = exp.search, []
    for result in grid:
        metrics = result.metrics or {}
        if metrics.get("time_total_s") is None:
            continue
        trial = cost.cost(float(metrics["time_total_s"]), search.workers_per_trial, search.cpus_per_worker)
        spent.append(trial)
        run_id = children.runs.get(metrics.get("trial_id"))
        if run_id is not None:
            # Stamped at the trial's last result, as a training's cost is at its fit's end.
            end = int(float(metrics.get("timestamp") or time.time()) * 1000)
            children.client.log_batch(run_id, metrics=[Metric(k, float(v), end, 0) for k, v in trial.items()])
    return cost.total(spent)


def _refit(exp: Experiment, config: dict[str, Any], info, splits, seed: int) -> dict[str, torch.Tensor]:
    """Cross-validated trials keep no model: train the best config once on the train split."""

    def refit(trial: Experiment, seed: int):
        # Runs on a Ray worker: the driver never imports Lightning.
        from runyard.execution.lightning import network_of
        from runyard.execution.local import fit_local

        trainer = fit_local(trial, info, splits, seed=seed, cpus=exp.search.cpus_per_worker)
        return network_of(trainer.lightning_module).state_dict()

    with status("training the best configuration on the whole train split"):
        task = ray.remote(num_cpus=exp.search.cpus_per_worker)(refit)
        return ray.get(task.remote(apply(exp, config), seed))


class SearchProgress(Callback):
    """Trials done and running and the best value so far: a live line on a terminal,
    one line per finished trial in logs (DVC, Ray jobs, CI)."""

    def __init__(self, total: int, metric: str, mode: str):
        self.total, self.metric, self.mode = total, metric, mode
        self.best: float | None = None
        self.done = self.running = 0
        self.live = console.status("") if interactive() else None

    def line(self) -> str:
        best = "-" if self.best is None else f"{self.best:.4f}"
        return f"search: {self.done}/{self.total} trials done, {self.running} running, best {self.metric} {best}"

    def setup(self, **info):
        if self.live is not None:
            self.live.start()

    def on_trial_start(self, iteration, trials, trial, **info):
        self.running += 1
        if self.live is not None:
            self.live.update(self.line())

    def on_trial_result(self, iteration, trials, trial, result, **info):
        value = result.get(self.metric)
        if value is not None and (self.best is None or (value > self.best) == (self.mode == "max")):
            self.best = value
        if self.live is not None:
            self.live.update(self.line())

    def on_trial_complete(self, iteration, trials, trial, **info):
        self._ended()

    def on_trial_error(self, iteration, trials, trial, **info):
        self._ended()

    def _ended(self) -> None:
        self.running, self.done = max(0, self.running - 1), self.done + 1
        if self.live is not None:
            self.live.update(self.line())
        else:
            console.print(self.line(), highlight=False)

    def on_experiment_end(self, trials, **info):
        if self.live is not None:
            self.live.stop()
