"""What a run cost: wall seconds x the CPUs (and GPUs) it held, logged as cost/* metrics."""

from __future__ import annotations

import pytest
from mlflow import MlflowClient

from runyard.config import RayParams
from runyard.tracking import cost


def test_core_seconds_are_wall_seconds_times_the_cpus_held():
    c = cost.cost(wall_s=30.0, workers=2, cpus_per_worker=1.5)
    assert c == {"cost/wall_seconds": 30.0, "cost/core_seconds": 90.0, "cost/gpu_seconds": 0.0}
    assert cost.cost(10.0, 4, 2, gpus_per_worker=1)["cost/gpu_seconds"] == 40.0
    with pytest.raises(ValueError, match="negative"):
        cost.cost(-1.0, 1, 1)


def test_gpus_come_from_use_gpu_or_an_explicit_resource():
    assert cost.gpus_per_worker(RayParams()) == 0
    assert cost.gpus_per_worker(RayParams(use_gpu=True)) == 1
    assert cost.gpus_per_worker(RayParams(use_gpu=True, resources_per_worker={"GPU": 0.5})) == 0.5


def test_a_training_costs_its_fit_from_the_workers_final_report():
    params = RayParams(num_workers=2, cpus_per_worker=2, use_gpu=True)
    final = {"val/acc": 0.9, "fit_start": 1000.0, "fit_end": 1012.5}
    assert cost.training_cost(final, params) == {
        "cost/wall_seconds": 12.5, "cost/core_seconds": 50.0, "cost/gpu_seconds": 25.0}
    assert cost.training_cost({"val/acc": 0.9}, params) == {}, "no bounds reported: no guess"


def test_totals_sum_only_what_the_runs_have():
    assert cost.total([cost.cost(10, 1, 1), cost.cost(5, 2, 1)]) == {
        "cost/wall_seconds": 15.0, "cost/core_seconds": 20.0, "cost/gpu_seconds": 0.0}
    assert cost.total([{"cost/core_seconds": 3.0}, {}]) == {"cost/core_seconds": 3.0}
    assert cost.total([]) == {}


def test_logged_to_the_run(tmp_path):
    client = MlflowClient(f"sqlite:///{tmp_path / 'mlflow.db'}")
    run_id = client.create_run(client.create_experiment("e")).info.run_id
    cost.log_training_cost(client, run_id, {"fit_start": 1000.0, "fit_end": 1004.0}, RayParams(num_workers=3))
    metrics = client.get_run(run_id).data.metrics
    assert metrics["cost/core_seconds"] == 12.0 and metrics["cost/wall_seconds"] == 4.0
    # Stamped at the fit's end: the history says when the run trained.
    assert cost.fit_interval(client.get_metric_history(run_id, cost.WALL)) == (1000.0, 1004.0)
    assert cost.fit_interval([]) is None


def test_overlapping_fits_count_once():
    # Two concurrent trials (0-10, 5-12), a gap, then a training (20-25) and one inside it.
    assert cost.covered_seconds([(20, 25), (0, 10), (5, 12), (21, 22)]) == 17
    assert cost.covered_seconds([]) == 0
