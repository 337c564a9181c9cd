"""A search as a sweep: every trial's train, validation and test error against what it searched.

After a search, each trial's final model (its last checkpoint) is scored in eval mode
on its own training split (what it fitted: the recipe's subset and labels), on
validation and on test. A grid over ``model.width`` is then the bias-variance lesson
(train and test error against capacity); a random or TPE search gets the same
picture as a scatter of each searched value. The numbers go to each trial's child run
(``sweep/train_*``, ``sweep/val_*``, ``test/*``), the table and the figure to the
parent run (``sweep/``) and to ``plots/tune/<experiment>/``.

Pruned trials (stopped early by ASHA) are in the table but not in the figure: their
errors are from fewer epochs. Cross-validated trials keep no model, so they get none.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import mlflow
import torch

from runyard import tasks
from runyard.config import Experiment
from runyard.data import DatasetInfo
from runyard.data.splits import Splits
from runyard.data.training import training_split
from runyard.evaluation import plots
from runyard.evaluation.tables import write_records
from runyard.models import build_model
from runyard.tuning.results import best_weights, max_epochs
from runyard.tuning.space import apply, decode

HIGHER_IS_BETTER = ("acc", "iou", "dice", "f1", "precision", "recall", "specificity", "pixel_acc")


def error_of(kind: str, value: float) -> float:
    """Lower is better: 1 - accuracy (or IoU, ...), a mean squared error as it is."""
    return 1 - value if kind in HIGHER_IS_BETTER else value


def score_trials(exp: Experiment, info: DatasetInfo, splits: Splits, seed: int, grid) -> list[dict[str, Any]]:
    """One row per trial with a checkpoint: its searched values, outcome, parameter count,
    and its train / val / test scores."""
    task, rows = tasks.get(info.task), []
    for result in grid:
        metrics = result.metrics or {}
        if result.error is not None or not metrics.get("trial_id"):
            continue
        if result.checkpoint is None and "checkpoint_path" not in metrics:
            continue
        config = decode({k: result.config[k] for k in exp.search.space if k in result.config}, exp.search)
        trial = apply(exp, config)
        net = build_model(trial.model, info.input_shape, info.num_outputs)
        net.load_state_dict(best_weights(result))
        net.eval()
        fitted = training_split(splits, trial.recipe, seed, info.num_outputs)
        row: dict[str, Any] = {
            "trial_id": metrics["trial_id"], **config,
            "outcome": "completed" if metrics.get("training_iteration", 0) >= max_epochs(exp) else "pruned",
            "parameters": sum(p.numel() for p in net.parameters()),
        }
        with torch.no_grad():
            for split, x, y in (("train", fitted.x_train, fitted.y_train), ("val", splits.x_val, splits.y_val),
                                ("test", splits.x_test, splits.y_test)):
                for kind, value in task.scores(info, y, net(torch.from_numpy(x)).numpy()).items():
                    row[f"{split}/{kind}"] = value
        rows.append(row)
    return rows


def record_sweep(project, exp: Experiment, info: DatasetInfo, splits: Splits, seed: int, grid, children) -> None:
    """Score every trial; log to the child runs, the parent run (active) and plots/tune/<exp>/."""
    if exp.cv is not None:
        return
    rows = score_trials(exp, info, splits, seed, grid)
    if not rows:
        return
    for row in rows:
        run_id = children.runs.get(row["trial_id"])
        if run_id is not None:
            for key, value in row.items():
                split, _, kind = key.partition("/")
                if kind:
                    name = f"test/{kind}" if split == "test" else f"sweep/{split}_{kind}"
                    children.client.log_metric(run_id, name, value)
    kind = exp.optimized_metric.partition("/")[2]
    kind = kind if f"test/{kind}" in rows[0] else next(k.partition("/")[2] for k in rows[0] if k.startswith("test/"))
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        write_records(rows, staging / "sweep.csv")
        plot(exp, rows, kind, staging / "sweep.png")
        mlflow.log_artifacts(str(staging), "sweep")
        out = project.root / "plots" / "tune" / exp.name
        shutil.rmtree(out, ignore_errors=True)
        shutil.copytree(staging, out)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def axes(exp: Experiment, rows: list[dict[str, Any]]) -> list[str]:
    """What to plot against: each searched key whose values are numbers, else the parameter count."""
    numeric = [k for k in exp.search.space if all(_is_number(r.get(k)) for r in rows)]
    return numeric or ["parameters"]


def plot(exp: Experiment, rows: list[dict[str, Any]], kind: str, out: Path) -> None:
    """Train, validation and test error against each axis: ``sweep.png``, or with several
    axes one ``sweep_<key>.png`` each."""

    done = [r for r in rows if r["outcome"] == "completed"] or rows
    keys = axes(exp, done)
    # A grid over one key is a curve; anything else is a cloud of trials.
    curve = len(exp.search.space) == 1 and exp.search.algorithm == "grid"
    label = f"1 - {kind}" if kind in HIGHER_IS_BETTER else kind
    for key in keys:
        xs = [float(r[key]) for r in done]
        series = {split: [(float(r[key]), error_of(kind, r[f"{split}/{kind}"])) for r in done]
                  for split in ("train", "val", "test")}
        logx = min(xs) > 0 and max(xs) / min(xs) >= 20
        png = out if len(keys) == 1 else out.with_name(f"{out.stem}_{key}.png")
        plots.sweep(series, key, f"error ({label})", f"{exp.name}: error against {key}", png,
                    logx=logx, lines=curve)
