"""One function per pipeline stage: prepare, train, evaluate, register.

Each validates everything it reads before it starts work, writes its outputs
atomically, and leaves the MLflow run it touches in a final state.
"""

from __future__ import annotations

import csv
import io
import json
import math
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import numpy as np

from runyard.config import Experiment, Project
from runyard.data import builder, dataset_info
from runyard.data import splits as split_store
from runyard.errors import RunyardError
from runyard.progress import epoch_progress, interactive, status


def prepare(project: Project, dataset: str) -> Path:
    """Build data/<dataset>/ from the builder and its params.yaml arguments."""
    args = project.dataset_args(dataset)
    info = dataset_info(dataset, args)
    with status(f"preparing {dataset}"):
        built = builder(dataset).build(args, project.params.seed)
    out = project.data_dir(dataset)
    meta = {"dataset": dataset, **asdict(info), "args": args.model_dump()}
    split_store.save(built, out, meta)
    return out


# --------------------------------------------------------------------------- train


def tracking_uri(project: Project) -> str:
    """The tracking URI, resolved against the project and checked to be usable."""
    from runyard.tracking.uri import project_tracking_uri

    return project_tracking_uri(project)


def _tracking(project: Project):
    """Checked tracking URI and a client for it."""
    from runyard.tracking.runs import use_tracking

    uri = tracking_uri(project)
    return uri, use_tracking(uri)


def load_inputs(project: Project, name: str):
    """The experiment, and its dataset's info and splits as it sees them (``subset:``, ``task:``)."""
    from runyard.data.view import view_splits

    exp = project.experiment(name)
    info = project.experiment_info(exp)
    data_dir = project.data_dir(exp.dataset)
    splits = split_store.load(data_dir, project.rel(data_dir))
    if tuple(splits.x_train.shape[1:]) != tuple(info.input_shape):
        raise RunyardError(
            f"{project.rel(data_dir)}: inputs have shape {tuple(splits.x_train.shape[1:])} but "
            f"{project.rel(project.params_file)}: datasets.{exp.dataset} makes {tuple(info.input_shape)}; "
            f"run `runyard prepare {exp.dataset}` again"
        )
    splits = view_splits(splits, exp)
    wanted = exp.recipe and exp.recipe.train_samples
    if wanted and wanted > len(splits.y_train):
        raise RunyardError(
            f"{project.rel(project.pipeline_file(name))}: recipe.train_samples: {wanted} is more than "
            f"the {len(splits.y_train)} training samples of {exp.dataset}"
        )
    return exp, info, splits


def train(project: Project, name: str, resume: bool = False) -> str:
    """Train one experiment on Ray (a classical model: fit it here); return the MLflow run id."""
    from runyard.models import is_classical

    params = project.params
    exp, info, splits = load_inputs(project, name)
    init_state, init_tags = None, {}
    if exp.init:  # the source's weights, read (and checked) before anything is written
        from runyard.models import transfer

        init_state, source = transfer.source_state(project, exp)
        init_tags = transfer.lineage_tags(source)
    uri = tracking_uri(project)
    if is_classical(exp.model_name):
        if resume:
            raise RunyardError(
                f"--resume: {name} is a scikit-learn model fitted in one go; nothing to resume, "
                f"run `runyard train {name}` again"
            )
        return _train_classical(project, exp, info, splits, uri)
    # Heavy imports only once the cheap checks have passed: bad input fails in a blink.
    from runyard.execution import ray_session
    from runyard.execution.trainer import discard_storage, fit
    from runyard.models import build_model
    from runyard.models import saved as saved_model
    from runyard.tracking.lineage import lineage_tags
    from runyard.tracking.runs import ensure_experiment, tracked_run, use_tracking
    from runyard.tracking.uri import artifact_location

    where = project.rel(project.params_file)
    client = use_tracking(uri)
    resume_id = _resumable_run(client, name) if resume else None
    with status("connecting to Ray"):
        address = ray_session.connect(params.ray, where)

    exp_id = ensure_experiment(
        client, name, artifact_location(params.mlflow.artifact_root, project.root, name)
    )
    storage = params.ray.storage_path or str(project.root / ".runyard" / "ray")
    run_params = {
        **exp.model_dump(mode="json", exclude={"name", "description"}),
        "seed": params.seed,
        "ray": params.ray.model_dump(mode="json", exclude={"address", "storage_path"}),
    }
    tags = {**lineage_tags(project.root, exp.dataset, exp.digest(), address), **init_tags}
    retry_s = params.mlflow.retry_s
    with tracked_run(exp_id, name, run_params, tags, resume_run_id=resume_id, retry_s=retry_s) as run_id:
        if exp.cv:
            _cross_validate(client, run_id, exp, info, splits, params)
        with epoch_progress(client, run_id, total_epochs(exp, splits), exp.optimized_metric):
            result = fit(
                exp, info, splits, params.ray, seed=params.seed, tracking_uri=uri,
                run_id=run_id, storage_path=storage, flush_every_s=2.0 if interactive() else 5.0,
                retry_s=retry_s,
                init_state=init_state,
            )
        net = build_model(exp.model, info.input_shape, info.num_outputs)
        net.load_state_dict(result.state_dict)
        # Eval mode before logging: MLflow exports the module as it is (torch.export), so a
        # train-mode module would serve with dropout on and batch norm on batch statistics.
        net.eval()
        with status("logging the model"):
            # The training may end while the tracking server is down (rank 0 buffers its
            # epochs): wait for it, as long as mlflow.retry_s allows, before logging the model.
            from runyard.tracking.outage import retry_until

            retry_until(lambda: client.get_run(run_id), time.monotonic() + retry_s,
                        f"logging the model to {uri}: no answer for {retry_s:g} s (params.yaml: mlflow.retry_s)")
            model_uri = log_model(project, net, splits.x_test[:5])
            history = _history(client, run_id, info.task)
            _log_learning_curve(name, history)
        saved_model.save(
            project.model_dir(name), result.state_dict, _record(project, exp, info, run_id, model_uri),
            extra_files={"history.csv": _history_csv(history)},
        )
    discard_storage(storage, name, run_id)
    return run_id


def _cross_validate(client, run_id: str, exp: Experiment, info, splits, params) -> None:
    """k folds as parallel Ray tasks; each fold's metrics (step = fold), their mean and std."""
    from mlflow.entities import Metric

    from runyard.execution.cv import cross_validate, summarise

    with status(f"cross-validating: {exp.cv.folds} folds"):
        results = cross_validate(exp, info, splits, seed=params.seed, cpus=params.ray.cpus_per_worker)
    now = int(time.time() * 1000)
    per_fold = [Metric(f"cv/fold/{k}", v, now, i) for i, r in enumerate(results) for k, v in r.items()]
    summary = [Metric(k, v, now, 0) for k, v in summarise(results).items()]
    client.log_batch(run_id, metrics=per_fold + summary)


def _train_classical(project: Project, exp: Experiment, info, splits, uri: str) -> str:
    """One scikit-learn fit in this process (no Ray), tracked like a deep training:
    one MLflow run with the same params and lineage tags, the model in the sklearn
    flavour, and models/<exp>/ written atomically only once everything else worked."""
    import time

    from mlflow.entities import Metric

    from runyard.execution import classical
    from runyard.models import check_model_spec, metrics_for
    from runyard.models import saved as saved_model
    from runyard.models.classical import flatten
    from runyard.tracking.lineage import lineage_tags
    from runyard.tracking.runs import ensure_experiment, tracked_run, use_tracking
    from runyard.tracking.uri import artifact_location

    name, params = exp.name, project.params
    client = use_tracking(uri)
    exp_id = ensure_experiment(
        client, name, artifact_location(params.mlflow.artifact_root, project.root, name)
    )
    # The model as fitted: every argument of its factory, defaults included.
    model = {"name": exp.model_name, **check_model_spec(exp.model, where="model")}
    run_params = {
        **exp.model_dump(mode="json", exclude={"name", "description", "recipe"}),
        "model": model, "seed": params.seed,
    }
    tags = lineage_tags(project.root, exp.dataset, exp.digest(), classical.RAY_ADDRESS)
    with tracked_run(exp_id, name, run_params, tags, retry_s=params.mlflow.retry_s) as run_id:
        with status(f"fitting {exp.model_name} on {exp.dataset}"):
            result = classical.fit(exp, splits, params.seed)
        now = int(time.time() * 1000)
        values = {**result.metrics, "fit/seconds": result.seconds}
        client.log_batch(run_id, metrics=[Metric(k, v, now, 0) for k, v in values.items()])
        with status("logging the model"):
            model_uri = _log_sklearn_model(result.estimator, flatten(splits.x_test[:5]))
        history = {k: [(0, result.metrics[k])] for k in metrics_for(info.task, exp.model_name)}
        saved_model.save_estimator(
            project.model_dir(name), result.estimator, _record(project, exp, info, run_id, model_uri),
            extra_files={"history.csv": _history_csv(history)},
        )
    return run_id


def _log_sklearn_model(estimator, example: np.ndarray) -> str:
    """MLflow's sklearn flavour in the skops format (loading runs no pickled code).

    The model takes flat features: a digits image is its 64 pixels in a row."""
    import mlflow.sklearn
    import sklearn
    import skops
    from mlflow.models import infer_signature

    from runyard.models.classical import SKOPS_TRUSTED

    info = mlflow.sklearn.log_model(
        estimator,
        name="model",
        signature=infer_signature(example, estimator.predict(example)),
        input_example=example,
        serialization_format="skops",
        skops_trusted_types=SKOPS_TRUSTED,
        pip_requirements=[f"scikit-learn=={sklearn.__version__}", f"skops=={skops.__version__}", "numpy"],
    )
    return info.model_uri


def _record(project: Project, exp: Experiment, info, run_id: str, model_uri: str) -> dict:
    """What models/<exp>/ says about the model: where it was logged and what it takes."""
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


def log_model(project: Project, net, example: np.ndarray) -> str:
    import torch
    from mlflow.models import infer_signature

    from runyard.models import model_inputs
    from runyard.tracking import mlflow_pytorch

    example = model_inputs(net, example)
    with torch.no_grad():
        out = net(torch.from_numpy(example)).numpy()
    info = mlflow_pytorch().log_model(
        net,
        name="model",
        signature=infer_signature(example, out),
        input_example=example,
        # The package travels with the model, so loading it needs no runyard install.
        code_paths=[str(Path(__file__).parent)],
        pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
    )
    return info.model_uri


def _history(client, run_id: str, task: str) -> dict[str, list[tuple[int, float]]]:
    from runyard.models import metrics_for

    keys = [*metrics_for(task), "train/lr"]
    return {
        k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys
    }


def _history_csv(history: dict[str, list[tuple[int, float]]]) -> str:
    epochs = sorted({step for points in history.values() for step, _ in points})
    table = {k: dict(points) for k, points in history.items()}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["epoch", *history])
    for e in epochs:
        writer.writerow([e, *(table[k].get(e, "") for k in history)])
    return buf.getvalue()


def _log_learning_curve(name: str, history) -> None:
    import mlflow

    from runyard.evaluation import plots

    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "learning_curve.png"
        plots.learning_curve(history, name, png)
        mlflow.log_artifact(str(png), "plots")


# --------------------------------------------------------------------------- evaluate


def evaluate(project: Project, name: str) -> dict[str, float]:
    """Test-split metrics -> metrics/<exp>.json, plots -> plots/<exp>/, both into MLflow."""
    from runyard.evaluation import plots
    from runyard.evaluation.tasks import EVALUATORS
    from runyard.models import saved as saved_model

    exp, info, splits = load_inputs(project, name)
    model_dir = project.model_dir(name)
    predict, record = saved_model.load_predictor(model_dir, project.rel(model_dir))
    _, client = _tracking(project)

    out = predict(splits.x_test)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=project.root))
    try:
        values = EVALUATORS[info.task](name, info, splits, out, staging, predict)
        if not saved_model.is_classical(record):  # a single fit has no curve to draw
            plots.learning_curve(_read_history(model_dir), name, staging / "learning_curve.png")
        if exp.evaluate is not None and exp.evaluate.adversarial is not None:
            from runyard.evaluation import adversarial

            net, _ = saved_model.load(model_dir, project.rel(model_dir))
            values.update(adversarial.evaluate(name, net, splits.x_test, splits.y_test, info.num_outputs,
                                               exp.evaluate.adversarial, staging))

        run_id = record["run_id"]
        for key, value in values.items():
            client.log_metric(run_id, key, value)
        client.log_artifacts(run_id, str(staging), "evaluation")
        _publish(project, name, values, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return values


def _publish(project: Project, name: str, values: dict, staging: Path) -> None:
    plots_dir = project.plots_dir(name)
    shutil.rmtree(plots_dir, ignore_errors=True)
    plots_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(staging, plots_dir)
    metrics_file = project.metrics_file(name)
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    metrics_file.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")


def _read_history(model_dir: Path) -> dict[str, list[tuple[int, float]]]:
    with (model_dir / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    keys = [k for k in (rows[0] if rows else {}) if k != "epoch"]
    return {k: [(int(r["epoch"]), float(r[k])) for r in rows if r[k] != ""] for k in keys}


# --------------------------------------------------------------------------- register


def register(project: Project, name: str):
    """Register the trained model; move the champion alias only if it is better."""
    from runyard.models import saved as saved_model
    from runyard.tracking import registry

    exp: Experiment = project.experiment(name)
    model_dir = project.model_dir(name)
    record = saved_model.read_record(model_dir, project.rel(model_dir))
    _, client = _tracking(project)
    return registry.register(
        client, name, record["model_uri"], record["run_id"], exp.optimized_metric,
        exp.optimized_mode, project.params.mlflow.champion_alias,
    )
