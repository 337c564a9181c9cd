"""`runyard tune <exp>`: a Ray Tune search, one MLflow parent run with a child per trial.

The driver owns every MLflow write (see children.py), Optuna's study lives in an
RDB (``tune.study_storage``), and Tune's own experiment state lives under the
Ray storage path: ``--resume`` restores all three, so finished trials never run
again and unfinished ones continue from their last epoch's checkpoint.
"""

from __future__ import annotations

import contextlib
import json
import tempfile
from pathlib import Path
from typing import Any

import optuna
import torch
from ray.tune import Callback
from ray.tune.search.optuna import OptunaSearch

from runyard.config import Experiment, Project, RayParams
from runyard.errors import RunyardError
from runyard.progress import console, interactive

KIND_TAG = "runyard.kind"


def tune(project: Project, name: str, resume: bool = False, retry_errored: bool = False) -> dict[str, Any]:
    """Run (or resume) the search declared in pipelines/<name>.yaml; return its summary."""
    from runyard import stages

    exp, info, splits = stages.load_inputs(project, name)
    where = project.rel(project.pipeline_file(name))
    if exp.search is None:
        raise RunyardError(f"{where}: search: missing; `runyard tune` needs a search section "
                           "(see pipelines/mnist1d_cnn_search.yaml)")
    uri = stages.tracking_uri(project)
    params = project.params
    from runyard.execution import ray_session
    from runyard.tracking.lineage import lineage_tags
    from runyard.tracking.runs import ensure_experiment, tracked_run, use_tracking
    from runyard.tracking.uri import artifact_location, resolve
    from runyard.tuning.children import ChildRuns

    client = use_tracking(uri)
    parent_id = _resumable_search(client, name, where) if resume else None
    one_trial = RayParams(num_workers=exp.search.workers_per_trial, cpus_per_worker=exp.search.cpus_per_worker)
    address = ray_session.connect(params.ray, project.rel(project.params_file),
                                  need=one_trial, need_where=f"{where}: search.workers_per_trial")

    exp_id = ensure_experiment(client, name, artifact_location(params.mlflow.artifact_root, project.root, name))
    tags = {**lineage_tags(project.root, exp.dataset, exp.digest(), address), KIND_TAG: "search"}
    run_params = {**exp.model_dump(mode="json", by_alias=True, exclude={"name", "description"}), "seed": params.seed}
    storage = Path(params.ray.storage_path or project.root / ".runyard" / "ray")
    study = resolve(params.study_storage, project.root)
    with tracked_run(exp_id, f"{name}-search", run_params, tags, resume_run_id=parent_id,
                     retry_s=params.mlflow.retry_s) as parent:
        children = ChildRuns(uri, exp_id, parent, max_epochs(exp))
        try:
            grid = _run_tuner(exp, info, splits, params.seed, storage, f"{name}-search-{parent}", study,
                              children, resume=parent_id is not None, retry_errored=retry_errored)
            children.reconcile(grid)
        finally:
            children.close_open()
        summary = _finish(project, client, exp, info, splits, params.seed, grid, parent, children)
    from runyard.tracking import registry

    reg = registry.register(client, name, summary["model_uri"], parent, exp.optimized_metric,
                            exp.optimized_mode, params.mlflow.champion_alias)
    summary["registered"] = reg.as_dict()
    _write_summary(project, name, summary)
    return summary


def _resumable_search(client, name: str, where: str) -> str:
    exp = client.get_experiment_by_name(name)
    runs = exp and client.search_runs(
        [exp.experiment_id], f"tags.`{KIND_TAG}` = 'search' and attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    if not runs:
        raise RunyardError(f"{where}: --resume: no interrupted search of this experiment to resume")
    return runs[0].info.run_id


def _run_tuner(exp: Experiment, info, splits, seed: int, storage: Path, run_name: str, study: str,
               children, *, resume: bool, retry_errored: bool):
    from ray import tune

    from runyard.tuning.space import tune_domains
    from runyard.tuning.trial import run_trial

    search = exp.search
    trainable = tune.with_parameters(
        run_trial, experiment=exp.model_dump(mode="json", by_alias=True), info=info, splits=splits, seed=seed,
        storage_path=str(storage / "trials"),
    )
    # A data-parallel trial's actor only waits for its Ray Train workers, which hold the
    # CPUs. Even 0.01 CPU would leave 2 one-CPU workers unplaceable on 2 cores, and Tune
    # refuses an empty request: so the actor asks for one byte of memory instead.
    one_worker = search.workers_per_trial == 1
    trainable = tune.with_resources(trainable, {"cpu": search.cpus_per_worker} if one_worker else {"memory": 1})
    callbacks = [children, SearchProgress(trial_count(search), exp.optimized_metric, exp.optimized_mode)]
    path = storage / run_name
    if resume and tune.Tuner.can_restore(str(path)):
        _restore_replaced_checkpoints(path)
        tuner = tune.Tuner.restore(str(path), trainable, resume_unfinished=True, resume_errored=retry_errored,
                                   param_space=tune_domains(search))
        # Callbacks are not part of Tune's saved state: give them back.
        tuner._local_tuner._run_config.callbacks = callbacks
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
            ),
        )
    return tuner.fit()


def _restore_replaced_checkpoints(path: Path) -> None:
    """Give each trial's recorded checkpoint back its name before Tune restores the search.

    Tune keeps one checkpoint per trial but saves its own state only now and then:
    a search killed in between records checkpoints that a newer one already replaced,
    and Tune would fail those trials on resume ("does not exist on storage anymore").
    The oldest checkpoint kept takes the recorded name: Tune registered it last (after
    the driver logged its epoch) and deleted every older one; a newer one is a trial's
    write that the driver never saw.
    """
    from ray.tune.experiment.trial import _TrainingRunMetadata  # how Tune reads its own state

    from runyard.execution.worker import CKPT_FILE

    states = sorted(path.glob("experiment_state-*.json"))  # Tune restores the newest
    if not states:
        return
    for trial, run in json.loads(states[-1].read_text())["trial_data"]:
        latest = _TrainingRunMetadata.from_json_state(run).checkpoint_manager.latest_checkpoint_result
        if latest is None:
            continue
        trial_dir = path / json.loads(trial)["relative_logdir"]
        recorded = trial_dir / Path(latest.checkpoint.path).name
        kept = sorted(c for c in trial_dir.glob("checkpoint_*") if (c / CKPT_FILE).exists())
        if kept and not recorded.exists():
            kept[0].rename(recorded)


def trial_count(search) -> int:
    """Trials the search runs: num_samples, times every grid's size (Tune expands grids)."""
    count = search.num_samples
    for d in search.space.values():
        if d.kind == "grid" or (d.kind == "choice" and search.algorithm == "grid"):
            count *= len(d.values)
    return count


def _searcher(exp: Experiment, seed: int, study: str, study_name: str):
    if exp.search.algorithm != "tpe":
        from ray.tune.search.basic_variant import BasicVariantGenerator

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
    from ray.tune.schedulers import ASHAScheduler, FIFOScheduler, HyperBandScheduler, PopulationBasedTraining

    from runyard.tuning.space import tune_domains

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


def max_epochs(exp: Experiment) -> int:
    """A trial's budget in reports: epochs, or folds when it cross-validates."""
    return exp.cv.folds if exp.cv else exp.recipe.epochs  # epochs checked with the space


def _finish(project, client, exp: Experiment, info, splits, seed: int, grid, parent: str, children) -> dict[str, Any]:
    """Best trial -> the parent run: its params, metric, test metrics and model."""
    import mlflow

    from runyard import stages
    from runyard.evaluation.tasks import EVALUATORS
    from runyard.models import build_model, model_inputs
    from runyard.tuning.children import OUTCOME_TAG
    from runyard.tuning.space import apply, decode

    metric, mode = exp.optimized_metric, exp.optimized_mode
    outcomes = [r.data.tags.get(OUTCOME_TAG, "running") for r in children.children()]
    counts = {o: outcomes.count(o) for o in ("completed", "pruned", "errored")}
    try:
        best = grid.get_best_result(metric, mode, scope="last", filter_nan_and_inf=True)
    except RuntimeError:
        best = None
    if best is None or best.metrics.get(metric) is None:
        raise RunyardError(f"{exp.name}: no trial reported {metric}; see the child runs' errors in MLflow")
    config = decode(best.config, exp.search)
    net = build_model(apply(exp, config).model, info.input_shape, info.num_outputs)
    net.load_state_dict(_refit(exp, config, info, splits, seed) if exp.cv else _best_weights(best))
    net.eval()

    def predict(x):
        with torch.no_grad():
            return net(torch.from_numpy(model_inputs(net, x))).numpy()

    with tempfile.TemporaryDirectory() as staging:
        test = EVALUATORS[info.task](exp.name, info, splits, predict(splits.x_test), Path(staging), predict)
        mlflow.log_artifacts(staging, "evaluation")
    from runyard.tuning.sweep import record_sweep

    record_sweep(project, exp, info, splits, seed, grid, children)
    mlflow.log_params({f"best.{k}": json.dumps(v) if isinstance(v, list) else v for k, v in config.items()})
    mlflow.log_metrics({metric: best.metrics[metric], **test, **{f"search/{k}": v for k, v in counts.items()},
                        "search/trials": len(outcomes)})
    mlflow.set_tag("runyard.best_trial", best.metrics.get("trial_id", ""))
    model_uri = stages.log_model(project, net, splits.x_test[:5])
    return {"experiment": exp.name, "parent_run_id": parent, "metric": metric, "best_value": best.metrics[metric],
            "best_config": config, "best_trial": best.metrics.get("trial_id"), "test": test,
            "trials": len(outcomes), **counts, "model_uri": model_uri}


def _refit(exp: Experiment, config: dict[str, Any], info, splits, seed: int) -> dict[str, torch.Tensor]:
    """Cross-validated trials keep no model: train the best config once on the train split."""
    import ray

    from runyard.progress import status
    from runyard.tuning.space import apply

    def refit(trial: Experiment, seed: int):
        from runyard.execution.local import fit_local

        trainer = fit_local(trial, info, splits, seed=seed, cpus=exp.search.cpus_per_worker)
        return {k.removeprefix("net."): v for k, v in trainer.lightning_module.state_dict().items()
                if k.startswith("net.")}

    with status("training the best configuration on the whole train split"):
        task = ray.remote(num_cpus=exp.search.cpus_per_worker)(refit)
        return ray.get(task.remote(apply(exp, config), seed))


def _best_weights(best) -> dict[str, torch.Tensor]:
    """The network's weights from the best trial's last checkpoint (Lightning's format)."""
    from runyard.execution.worker import CKPT_FILE

    if best.checkpoint is not None:
        with best.checkpoint.as_directory() as d:
            state = torch.load(Path(d) / CKPT_FILE, map_location="cpu", weights_only=False)["state_dict"]
    else:  # a data-parallel trial: its Ray Train run kept the checkpoint
        path = Path(best.metrics["checkpoint_path"]) / CKPT_FILE
        state = torch.load(path, map_location="cpu", weights_only=False)["state_dict"]
    return {k.removeprefix("net."): v for k, v in state.items() if k.startswith("net.")}


def _write_summary(project: Project, name: str, summary: dict[str, Any]) -> None:
    out = project.root / "metrics" / "tune" / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    keep = {k: summary[k] for k in ("metric", "best_value", "best_config", "test", "trials", "completed",
                                    "pruned", "errored", "parent_run_id")}
    tmp = out.with_suffix(".tmp")
    tmp.write_text(json.dumps(keep, indent=2, sort_keys=True) + "\n")
    tmp.replace(out)


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
