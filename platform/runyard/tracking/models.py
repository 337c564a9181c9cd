"""Logging a trained model to MLflow (the PyTorch and scikit-learn flavours) and reading
a training's metric history back for its learning curve."""

from __future__ import annotations

import csv
import io
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TypeVar

import mlflow
import numpy as np
import torch
from mlflow.exceptions import MlflowException
from mlflow.models import infer_signature

from runyard import tasks
from runyard.errors import RunyardError, first_line
from runyard.evaluation import plots
from runyard.models import model_inputs
from runyard.models.classical import SKOPS_TRUSTED
from runyard.tracking import mlflow_pytorch
from runyard.tracking.outage import is_transient

T = TypeVar("T")

PACKAGE_DIR = Path(__file__).resolve().parents[1]
"""runyard's package: it travels with every logged model, so loading one needs no runyard install."""


def _call(tracking, fn: Callable[[], T], what: str) -> T:
    """``fn()`` through ``tracking.retry`` (an outage is ridden out), or once without it."""
    return fn() if tracking is None else tracking.retry(fn, what, upload=True)


@contextmanager
def artifact_store(what: str) -> Iterator[None]:
    """An artifact store that refuses a write (read-only, full, a path under a file) fails the
    stage in one line naming where the artifacts go; the run then ends FAILED. MLflow marks
    the half-logged model FAILED itself, so nothing of it can be registered."""
    try:
        yield
    except (OSError, MlflowException) as e:
        if is_transient(e):
            raise
        run = mlflow.active_run()
        where = run.info.artifact_uri if run is not None else mlflow.get_tracking_uri()
        raise RunyardError(f"{what} to {where}: {first_line(e)} (params.yaml: mlflow.artifact_root, "
                           "or the tracking server's artifact store)") from e


def log_pytorch_model(net: torch.nn.Module, example: np.ndarray, code_paths: list[str] = (),
                      tracking=None) -> str:
    """Log ``net`` (in eval mode) to the active run; its model URI. ``code_paths``: the
    user's own model code, shipped with it like runyard's package. ``tracking`` (a
    ``Tracking``): ride out a tracking server outage."""
    example = model_inputs(net, example)
    with torch.no_grad():
        out = net(torch.from_numpy(example)).numpy()

    def log():
        return mlflow_pytorch().log_model(
            net,
            name="model",
            signature=infer_signature(example, out),
            input_example=example,
            code_paths=[str(PACKAGE_DIR), *code_paths],
            pip_requirements=[f"torch=={torch.__version__.split('+')[0]}", "numpy"],
        )

    with artifact_store("logging the model"):
        return _call(tracking, log, "logging the model").model_uri


def log_sklearn_model(estimator, example: np.ndarray, tracking=None) -> str:
    """MLflow's sklearn flavour in the skops format (loading runs no pickled code).

    The model takes flat features: a digits image is its 64 pixels in a row."""
    import mlflow.sklearn  # its own import: the flavour pulls in scikit-learn's model code
    import sklearn
    import skops

    signature = infer_signature(example, estimator.predict(example))

    def log():
        return mlflow.sklearn.log_model(
            estimator,
            name="model",
            signature=signature,
            input_example=example,
            serialization_format="skops",
            skops_trusted_types=SKOPS_TRUSTED,
            pip_requirements=[f"scikit-learn=={sklearn.__version__}", f"skops=={skops.__version__}", "numpy"],
        )

    with artifact_store("logging the model"):
        return _call(tracking, log, "logging the model").model_uri


# --------------------------------------------------------------------------- history

History = dict[str, list[tuple[int, float]]]
"""Metric name -> (epoch, value) points."""


def history(client, run_id: str, task: str) -> History:
    keys = [*tasks.metrics_for(task), "train/lr"]
    return {k: sorted((m.step, m.value) for m in client.get_metric_history(run_id, k)) for k in keys}


def history_csv(points: History) -> str:
    epochs = sorted({step for series in points.values() for step, _ in series})
    table = {k: dict(series) for k, series in points.items()}
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(["epoch", *points])
    for e in epochs:
        writer.writerow([e, *(table[k].get(e, "") for k in points)])
    return buf.getvalue()


def read_history_csv(path: Path) -> History:
    with path.open() as f:
        rows = list(csv.DictReader(f))
    keys = [k for k in (rows[0] if rows else {}) if k != "epoch"]
    return {k: [(int(r["epoch"]), float(r[k])) for r in rows if r[k] != ""] for k in keys}


def log_learning_curve(name: str, points: History, tracking=None) -> None:
    """The learning curve's figure, into the active run's ``plots/``."""
    with tempfile.TemporaryDirectory() as tmp:
        png = Path(tmp) / "learning_curve.png"
        plots.learning_curve(points, name, png)
        with artifact_store("logging the learning curve"):
            _call(tracking, lambda: mlflow.log_artifact(str(png), "plots"), "logging the learning curve")
