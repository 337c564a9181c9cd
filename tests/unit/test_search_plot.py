"""A search's trials as one picture: parallel coordinates of the searched values against
the optimized metric, from Tune's own Result objects, logged to the parent run and
written under plots/tune/<experiment>/."""

from __future__ import annotations

import csv
import math

import mlflow
import pytest
from PIL import Image
from ray.tune import Result

from runyard.tuning.search import log_trial_costs
from runyard.tuning.sweep import _axis, plot_trials, record_trials, trial_rows

NAME = "mnist1d_cnn_search"  # searches recipe.lr, recipe.weight_decay, model.channels; 20 epochs


def result(trial_id: str, lr: float, wd: float, channels: list[int], acc: float | None, epochs: int,
           seconds: float = 10.0, error: Exception | None = None) -> Result:
    metrics = {"trial_id": trial_id, "training_iteration": epochs, "time_total_s": seconds,
               # Tune's config holds a choice of lists as JSON text (tuning.space)
               "config": {"recipe.lr": lr, "recipe.weight_decay": wd, "model.channels": str(channels)}}
    if acc is not None:
        metrics["val/acc"] = acc
    return Result(metrics=metrics, checkpoint=None, error=error, path="")


def grid() -> list[Result]:
    return [
        result("a", 0.001, 1e-5, [25, 25, 25], 0.61, 20),
        result("b", 0.01, 1e-4, [32, 32, 32], 0.83, 20, seconds=12.5),
        result("c", 0.05, 1e-3, [64, 64, 64], 0.40, 4),  # pruned by ASHA after 4 epochs
        result("d", 0.02, 1e-4, [25, 25, 25], None, 1, seconds=3.0, error=RuntimeError("boom")),
    ]


def png(path) -> Image.Image:
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = Image.open(path)
    image.verify()
    return Image.open(path)


def test_trial_rows_keep_what_was_searched_and_the_metric(project):
    rows = trial_rows(project.experiment(NAME), grid())
    assert [r["trial_id"] for r in rows] == ["a", "b", "c"], "a trial that never reported the metric is left out"
    assert [r["outcome"] for r in rows] == ["completed", "completed", "pruned"]
    assert rows[1]["model.channels"] == [32, 32, 32], "decoded back to the list it searched"
    assert rows[1]["val/acc"] == 0.83


def test_axes_log_scale_wide_numbers_and_space_categories_evenly():
    pos, ticks, log = _axis([0.001, 0.01, 0.1])
    assert log and pos == pytest.approx([0.0, 0.5, 1.0])
    assert [t[1] for t in ticks] == ["0.001", "0.1"]
    pos, _, log = _axis([1.0, 2.0, 3.0])
    assert not log and pos == pytest.approx([0.0, 0.5, 1.0])
    pos, ticks, _ = _axis([[64], [8], [64], [16]])
    assert [t[1] for t in ticks] == ["[8]", "[16]", "[64]"]
    assert pos == pytest.approx([1.0, 0.0, 1.0, 0.5])
    assert _axis([0.3, 0.3])[0] == [0.5, 0.5], "one value: the middle, no division by zero"


def test_plot_has_one_axis_per_searched_key_and_the_metric(tmp_path):
    rows = [{"lr": 10 ** -(1 + i / 3), "width": [16 * (i % 3 + 1)], "outcome": "completed", "val/acc": 0.5 + i / 20}
            for i in range(6)]
    two = plot_trials(rows, ["lr", "width"], "val/acc", "max", "t", tmp_path / "two.png")
    assert two == ["lr", "width", "val/acc"]
    three = plot_trials([{**r, "wd": i} for i, r in enumerate(rows)], ["lr", "width", "wd"], "val/acc", "max", "t",
                        tmp_path / "three.png")
    assert three == ["lr", "width", "wd", "val/acc"]
    small, large = png(tmp_path / "two.png"), png(tmp_path / "three.png")
    assert large.width > small.width, "each searched key adds an axis, and room for it"
    # A single trial (or all equal) still draws.
    plot_trials(rows[:1], ["lr", "width"], "val/acc", "min", "t", tmp_path / "one.png")
    png(tmp_path / "one.png")


def test_record_trials_logs_to_the_parent_run_and_writes_plots(project):
    exp = project.experiment(NAME)
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlruns' / 'test.db'}")
    experiment_id = mlflow.create_experiment(NAME, artifact_location=(project.root / "mlruns" / "a").as_uri())
    with mlflow.start_run(experiment_id=experiment_id) as run:
        out = record_trials(project, exp, grid())
    assert out == project.root / "plots" / "tune" / NAME / "trials.png"
    png(out)
    with (out.parent / "trials.csv").open() as f:
        table = list(csv.DictReader(f))
    assert [r["trial_id"] for r in table] == ["a", "b", "c"]
    assert {"recipe.lr", "recipe.weight_decay", "model.channels", "val/acc"} <= set(table[0])
    logged = {a.path for a in mlflow.MlflowClient().list_artifacts(run.info.run_id, "search")}
    assert logged == {"search/trials.png", "search/trials.csv"}


class Children:
    """What ``log_trial_costs`` needs of tuning.children.ChildRuns: the real MLflow client
    and each trial's child run."""

    def __init__(self, client, runs):
        self.client, self.runs = client, runs


def test_a_search_costs_the_sum_of_its_trials(project):
    mlflow.set_tracking_uri(f"sqlite:///{project.root / 'mlruns' / 'test.db'}")
    client = mlflow.MlflowClient()
    experiment_id = client.create_experiment("costs")
    runs = {t: client.create_run(experiment_id).info.run_id for t in ("a", "b")}
    total = log_trial_costs(project.experiment(NAME), grid(), Children(client, runs))
    # 4 trials, each on 1 worker x 1 CPU (the pipeline's defaults): 10 + 12.5 + 10 + 3 s
    assert total["cost/core_seconds"] == pytest.approx(35.5)
    assert total["cost/gpu_seconds"] == 0
    assert client.get_run(runs["b"]).data.metrics["cost/core_seconds"] == pytest.approx(12.5)
    assert not math.isnan(total["cost/wall_seconds"])
