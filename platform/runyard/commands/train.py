"""`runyard train EXPERIMENT`: one MLflow run per training; models/<experiment>/ at its end.

A deep model trains on Ray Train workers (rank 0 logs its epochs); a classical
(scikit-learn) model is fitted here in one go, tracked alike. models/<experiment>/
is written atomically, and only once everything else worked.
"""

from __future__ import annotations

import math
import time

from mlflow.entities import Metric

from runyard import tasks
from runyard.config import Experiment
from runyard.data import DatasetInfo
from runyard.data.splits import StreamedSplits
from runyard.errors import RunyardError
from runyard.execution import classical, ray_session
from runyard.execution.checkpoints import discard_storage
from runyard.execution.cv import cross_validate, summarise
from runyard.execution.trainer import fit
from runyard.models import build_model, check_model_spec, is_classical, transfer, user_code_paths
from runyard.models import saved as saved_model
from runyard.models.classical import flatten
from runyard.progress import epoch_progress, interactive, status
from runyard.project import Project
from runyard.tracking import cost
from runyard.tracking import models as model_logging
from runyard.tracking.client import Tracking
from runyard.tracking.lineage import data_hash
from runyard.tracking.outage import retry_until


def train(project: Project, name: str, resume: bool = False) -> str:
    """Train one experiment on Ray (a classical model: fit it here); return the MLflow run id."""
    exp, info, splits = project.load_inputs(name)
    init_state, init_tags = None, {}
    if exp.init:  # the source's weights, read (and checked) before anything is written
        src_dir = project.model_dir(exp.init.source)
        init_state, source = transfer.source_state(
            exp, info, src_dir, project.rel(src_dir), project.rel(project.pipeline_file(exp.init.source)))
        init_tags = transfer.lineage_tags(source)
    tracking = Tracking.of(project)
    if is_classical(exp.model_name):
        if resume:
            raise RunyardError(
                f"--resume: {name} is a scikit-learn model fitted in one go; nothing to resume, "
                f"run `runyard train {name}` again"
            )
        return _train_classical(project, tracking, exp, info, splits)
    return _train_deep(project, tracking, exp, info, splits, resume, init_state, init_tags)


def _train_deep(project: Project, tracking: Tracking, exp: Experiment, info: DatasetInfo, splits, resume: bool,
                init_state, init_tags: dict[str, str]) -> str:
    params, client, name = project.params, tracking.client, exp.name
    resume_id = _resumable_run(client, name) if resume else None
    code_paths = user_code_paths(exp.model_name)
    with status("connecting to Ray"):
        address = ray_session.connect(params.ray, project.rel(project.params_file), code_paths=code_paths)
    storage = params.ray.storage_path or str(project.root / ".runyard" / "ray")
    run_params = {
        **exp.model_dump(mode="json", exclude={"name", "description"}),
        "seed": params.seed,
        "ray": params.ray.model_dump(mode="json", exclude={"address", "storage_path"}),
    }
    retry_s = tracking.retry_s
    tags = {**init_tags, DETERMINISTIC_TAG: deterministic(params.ray, isinstance(splits, StreamedSplits))}
    with tracking.run(exp, name, run_params, address, tags, resume_run_id=resume_id) as run_id:
        if resume_id is None:
            tracking.retry(lambda: log_dataset_input(project, exp.dataset, splits), "logging the dataset input")
        if exp.cv:
            _cross_validate(client, run_id, exp, info, splits, params)
        with epoch_progress(client, run_id, total_epochs(exp, splits), exp.optimized_metric):
            result = fit(
                exp, info, splits, params.ray, seed=params.seed, tracking_uri=tracking.uri,
                run_id=run_id, storage_path=storage, flush_every_s=2.0 if interactive() else 5.0,
                retry_s=retry_s, init_state=init_state,
            )
        cost.log_training_cost(client, run_id, result.metrics, params.ray)  # cost/*: fit seconds x CPUs held
        net = build_model(exp.model, info.input_shape, info.num_outputs)
        net.load_state_dict(result.state_dict)
        # Eval mode before logging: MLflow exports the module as it is (torch.export), so a
        # train-mode module would serve with dropout on and batch norm on batch statistics.
        net.eval()
        with status("logging the model"):
            # The training may end while the tracking server is down (rank 0 buffers its
            # epochs): wait for it, as long as mlflow.retry_s allows, before logging the model.
            retry_until(lambda: client.get_run(run_id), time.monotonic() + retry_s,
                        f"logging the model to {tracking.uri}: no answer for {retry_s:g} s "
                        "(params.yaml: mlflow.retry_s)")
            model_uri = model_logging.log_pytorch_model(net, splits.x_test[:5], code_paths=code_paths,
                                                        tracking=tracking)
            history = model_logging.history(client, run_id, info.task)
            model_logging.log_learning_curve(name, history, tracking=tracking)
        saved_model.save(
            project.model_dir(name), result.state_dict, model_record(project, exp, info, run_id, model_uri),
            extra_files={"history.csv": model_logging.history_csv(history)},
        )
    discard_storage(storage, name, run_id)
    return run_id


DETERMINISTIC_TAG = "runyard.deterministic"
"""Whether a rerun with the same seed on this machine gives bit-identical weights and
metrics (tests/integration/test_determinism.py checks it on CPU): ``true``, or
``false (why)``."""


def deterministic(ray_params, streamed: bool = False) -> str:
    """The ``runyard.deterministic`` tag of a deep training with these Ray settings."""
    if streamed:
        return "false (streamed data: Ray Data's block order is not fixed across runs)"
    if not ray_params.use_gpu:
        return "true"  # CPU kernels, seeded data order, dropout and augmentation
    # Ray Train workers leave cuDNN autotuning and torch's nondeterministic CUDA kernels
    # (atomic adds in scatter/index_add and many backward passes) on.
    return "false (GPU: cuDNN and CUDA kernels without torch.use_deterministic_algorithms)"


def _cross_validate(client, run_id: str, exp: Experiment, info, splits, params) -> None:
    """k folds as parallel Ray tasks; each fold's metrics (step = fold), their mean and std."""
    with status(f"cross-validating: {exp.cv.folds} folds"):
        results = cross_validate(exp, info, splits, seed=params.seed, cpus=params.ray.cpus_per_worker)
    now = int(time.time() * 1000)
    per_fold = [Metric(f"cv/fold/{k}", v, now, i) for i, r in enumerate(results) for k, v in r.items()]
    summary = [Metric(k, v, now, 0) for k, v in summarise(results).items()]
    client.log_batch(run_id, metrics=per_fold + summary)


def _train_classical(project: Project, tracking: Tracking, exp: Experiment, info, splits) -> str:
    """One scikit-learn fit in this process (no Ray), tracked like a deep training:
    one MLflow run with the same params and lineage tags, the model in the sklearn
    flavour, and models/<exp>/ written atomically only once everything else worked."""
    name, params = exp.name, project.params
    # The model as fitted: every argument of its factory, defaults included.
    model = {"name": exp.model_name, **check_model_spec(exp.model, where="model")}
    run_params = {
        **exp.model_dump(mode="json", exclude={"name", "description", "recipe"}),
        "model": model, "seed": params.seed,
    }
    with tracking.run(exp, name, run_params, classical.RAY_ADDRESS) as run_id:
        tracking.retry(lambda: log_dataset_input(project, exp.dataset, splits), "logging the dataset input")
        with status(f"fitting {exp.model_name} on {exp.dataset}"):
            result = classical.fit(exp, splits, params.seed)
        now = int(time.time() * 1000)
        values = {**result.metrics, "fit/seconds": result.seconds}
        tracking.client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in values.items()])
        with status("logging the model"):
            model_uri = model_logging.log_sklearn_model(result.estimator, flatten(splits.x_test[:5]), tracking=tracking)
        history = {k: [(0, result.metrics[k])] for k in tasks.metrics_for(info.task, classical=True)}
        saved_model.save_estimator(
            project.model_dir(name), result.estimator, model_record(project, exp, info, run_id, model_uri),
            extra_files={"history.csv": model_logging.history_csv(history)},
        )
    return run_id


def log_dataset_input(project: Project, dataset: str, splits) -> None:
    """The training data as the active run's MLflow dataset input: name, source (the raw
    files' path, or runyard:<name> for a generator), digest (data/<dataset>'s DVC hash in
    dvc.lock) and schema (from the arrays' dtypes and shapes; no data is logged)."""
    import warnings

    import mlflow
    from mlflow.data.code_dataset_source import CodeDatasetSource
    from mlflow.data.dataset_source_registry import resolve_dataset_source
    from mlflow.data.meta_dataset import MetaDataset
    from mlflow.types.schema import Schema, TensorSpec

    where = project.dataset_source(dataset)
    if where.startswith(("runyard:", "python:")):
        source = CodeDatasetSource({"source": where})
    else:
        with warnings.catch_warnings():  # a path reads as more than one kind of local source
            warnings.simplefilter("ignore")
            source = resolve_dataset_source(where)
    x, y = splits.x_train, splits.y_train
    schema = Schema([TensorSpec(x.dtype, (-1, *x.shape[1:]), "features"),
                     TensorSpec(y.dtype, (-1, *y.shape[1:]), "targets")])
    mlflow.log_input(MetaDataset(source, name=dataset, digest=data_hash(project.root, dataset), schema=schema),
                     context="training")


def model_record(project: Project, exp: Experiment, info, run_id: str, model_uri: str) -> dict:
    """What models/<exp>/ says about the model: where it was logged and what it takes
    (a training's, or a search's best trial's with its configuration applied)."""
    return {
        "experiment": exp.name, "run_id": run_id, "model_uri": model_uri,
        "model": exp.model, "input_shape": list(info.input_shape),
        "num_outputs": info.num_outputs, "task": info.task,
        "tracking_uri": project.params.tracking_uri,
    }


def total_epochs(exp: Experiment, splits) -> int:
    if exp.recipe.epochs:
        return exp.recipe.epochs
    samples = exp.recipe.train_samples or len(splits.y_train)
    return math.ceil(exp.recipe.steps / math.ceil(samples / exp.recipe.batch_size))


def _resumable_run(client, name: str) -> str:
    """The latest run of this experiment that did not finish."""
    exp = client.get_experiment_by_name(name)
    runs = exp and client.search_runs(
        [exp.experiment_id], "attributes.status != 'FINISHED'",
        order_by=["attributes.start_time DESC"], max_results=1,
    )
    if not runs:
        raise RunyardError("--resume: no interrupted run to resume for this experiment")
    return runs[0].info.run_id
