"""`runyard evaluate EXPERIMENT`: test metrics -> metrics/<exp>.json, plots -> plots/<exp>/, both into MLflow."""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from pathlib import Path

from mlflow.entities import Metric

from runyard import tasks
from runyard.evaluation import adversarial, plots
from runyard.models import saved as saved_model
from runyard.project import Project
from runyard.tracking.client import Tracking
from runyard.tracking.models import read_history_csv


def evaluate(project: Project, name: str) -> dict[str, float]:
    """Score the trained model on the test split with its task's evaluator; publish the results."""
    exp, info, splits = project.load_inputs(name)
    model_dir = project.model_dir(name)
    predict, record = saved_model.load_predictor(model_dir, project.rel(model_dir))
    client = Tracking.of(project).client

    out = predict(splits.x_test)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=project.root))
    try:
        values = tasks.get(info.task).evaluate(name, info, splits, out, staging, predict)
        if not saved_model.is_classical(record):  # a single fit has no curve to draw
            plots.learning_curve(read_history_csv(model_dir / "history.csv"), name, staging / "learning_curve.png")
        if exp.evaluate is not None and exp.evaluate.adversarial is not None:
            net, _ = saved_model.load(model_dir, project.rel(model_dir))
            values.update(adversarial.evaluate(name, net, splits.x_test, splits.y_test, info.num_outputs,
                                               exp.evaluate.adversarial, staging))
        _log(client, record["run_id"], values, staging)
        _publish(project, name, values, staging)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return values


def _log(client, run_id: str, values: dict[str, float], staging: Path) -> None:
    """The test metrics and plots into the training's run, idempotently: an evaluation run
    again (after a tracking server outage failed it) adds no second point of a metric it
    already logged with the same value, and rewrites the same artifact files. One batch, so
    a failure leaves either all of the metrics or none."""
    logged = client.get_run(run_id).data.metrics
    now = int(time.time() * 1000)
    new = [Metric(k, float(v), now, 0) for k, v in values.items() if logged.get(k) != float(v)]
    if new:
        client.log_batch(run_id, metrics=new)
    client.log_artifacts(run_id, str(staging), "evaluation")


def _publish(project: Project, name: str, values: dict, staging: Path) -> None:
    plots_dir = project.plots_dir(name)
    shutil.rmtree(plots_dir, ignore_errors=True)
    plots_dir.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(staging, plots_dir)
    metrics_file = project.metrics_file(name)
    metrics_file.parent.mkdir(parents=True, exist_ok=True)
    metrics_file.write_text(json.dumps(values, indent=2, sort_keys=True) + "\n")
