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

import math
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import mlflow
import torch
from mlflow.entities import Metric

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
    now = int(time.time() * 1000)  # one timestamp for every attempt: a retried batch is stored once
    for row in rows:
        run_id = children.runs.get(row["trial_id"])
        if run_id is not None:
            scores = []
            for key, value in row.items():
                split, _, kind = key.partition("/")
                if kind:
                    name = f"test/{kind}" if split == "test" else f"sweep/{split}_{kind}"
                    scores.append(Metric(name, float(value), now, 0))
            children.client.log_batch(run_id, metrics=scores)
    kind = exp.optimized_metric.partition("/")[2]
    kind = kind if f"test/{kind}" in rows[0] else next(k.partition("/")[2] for k in rows[0] if k.startswith("test/"))
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        write_records(rows, staging / "sweep.csv")
        plot(exp, rows, kind, staging / "sweep.png")
        children.client.log_artifacts(children.parent, str(staging), "sweep")
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


# --------------------------------------------------------------------------- every trial at a glance


def trial_rows(exp: Experiment, grid) -> list[dict[str, Any]]:
    """One row per trial that reported the optimized metric: its id, outcome, searched values
    (as sampled) and its last reported value of the metric."""
    metric, rows = exp.optimized_metric, []
    for result in grid:
        metrics = result.metrics or {}
        value = metrics.get(metric)
        if value is None or not metrics.get("trial_id"):
            continue
        outcome = ("errored" if result.error is not None
                   else "completed" if metrics.get("training_iteration", 0) >= max_epochs(exp) else "pruned")
        config = decode({k: result.config[k] for k in exp.search.space if k in result.config}, exp.search)
        rows.append({"trial_id": metrics["trial_id"], "outcome": outcome, **config, metric: float(value)})
    return rows


def _axis(values: list[Any]) -> tuple[list[float], list[tuple[float, str]], bool]:
    """Values on a [0, 1] axis: numbers (log-spaced when they span 20x or more), anything
    else (a list of widths, a name) as evenly spaced categories. Also the ticks to label
    and whether the axis is logarithmic."""
    if all(_is_number(v) for v in values):
        xs = [float(v) for v in values]
        log = min(xs) > 0 and max(xs) / min(xs) >= 20
        scaled = [math.log10(x) for x in xs] if log else xs
        lo, hi = min(scaled), max(scaled)
        span = (hi - lo) or 1.0
        pos = [(s - lo) / span if hi > lo else 0.5 for s in scaled]
        ticks = [(0.0 if hi > lo else 0.5, f"{min(xs):.3g}")] + ([(1.0, f"{max(xs):.3g}")] if hi > lo else [])
        return pos, ticks, log
    labels = [str(v) for v in values]
    order = sorted(set(labels), key=lambda s: (len(s), s))
    step = 1 / max(1, len(order) - 1)
    where = {s: (i * step if len(order) > 1 else 0.5) for i, s in enumerate(order)}
    return [where[s] for s in labels], [(where[s], s) for s in order], False


def plot_trials(rows: list[dict[str, Any]], keys: list[str], metric: str, mode: str, title: str,
                out: Path) -> list[str]:
    """Parallel coordinates of a search: one vertical axis per searched key and a last one for
    ``metric``, one line per trial coloured by ``metric`` (the best trial drawn thick);
    pruned trials dashed. Saved as PNG at ``out``; returns the axes' names, left to right."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = [*keys, metric]
    columns = [_axis([r[k] for r in rows]) for k in names]
    values = [r[metric] for r in rows]
    best = (max if mode == "max" else min)(range(len(rows)), key=lambda i: values[i])
    lo, hi = min(values), max(values)
    cmap = plt.get_cmap("viridis" if mode == "max" else "viridis_r")
    norm = matplotlib.colors.Normalize(lo, hi if hi > lo else lo + 1e-12)
    fig, ax = plt.subplots(figsize=(max(5.0, 1.8 * len(names) + 1.5), 4.5))
    xs = list(range(len(names)))
    # Worst first, so the better trials are drawn on top.
    for i in sorted(range(len(rows)), key=lambda i: values[i] if mode == "max" else -values[i]):
        ys = [col[0][i] for col in columns]
        ax.plot(xs, ys, color=cmap(norm(values[i])), lw=3.0 if i == best else 1.2, alpha=0.9,
                ls="--" if rows[i].get("outcome") == "pruned" else "-", marker="o", ms=3, zorder=3 if i == best else 2)
    for x, (_, ticks, log) in zip(xs, columns, strict=True):
        ax.axvline(x, color="0.6", lw=0.8, zorder=1)
        for y, label in ticks:
            ax.annotate(label, (x, y), xytext=(4, 0), textcoords="offset points", fontsize=7, va="center")
        if log:
            ax.annotate("log", (x, -0.08), ha="center", fontsize=6, color="0.4", annotation_clip=False)
    ax.set_xticks(xs, names, rotation=15)
    ax.set_yticks([])
    ax.set_xlim(-0.2, len(names) - 0.6)
    ax.set_ylim(-0.05, 1.05)
    for side in ("left", "right", "top"):
        ax.spines[side].set_visible(False)
    ax.set_title(f"{title}: {len(rows)} trials (best thick, pruned dashed)", fontsize=9)
    fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), ax=ax, label=metric, fraction=0.04)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return names


def record_trials(project, exp: Experiment, grid, client=None, run_id: str | None = None) -> Path | None:
    """The search's trials (searched values vs the optimized metric) as ``trials.csv`` and the
    parallel-coordinates ``trials.png``: to the parent run under ``search/`` and to
    plots/tune/<exp>/. None when no trial reported the metric. ``client`` and ``run_id``: the
    driver's (retrying) client and the parent run; without them, the active run."""
    rows = trial_rows(exp, grid)
    if not rows:
        return None
    with tempfile.TemporaryDirectory() as tmp:
        staging = Path(tmp)
        write_records(rows, staging / "trials.csv")
        plot_trials(rows, list(exp.search.space), exp.optimized_metric, exp.optimized_mode, exp.name,
                    staging / "trials.png")
        if client is None:
            mlflow.log_artifacts(str(staging), "search")
        else:
            client.log_artifacts(run_id, str(staging), "search")
        out = project.root / "plots" / "tune" / exp.name
        out.mkdir(parents=True, exist_ok=True)
        for f in staging.iterdir():
            shutil.copy2(f, out / f.name)
    return out / "trials.png"
