"""The side-by-side table against published references, and the searches map."""

from __future__ import annotations

import json

import yaml

from runyard.commands.report import compare
from tests.conftest import assert_one_line_config_error


def write_metrics(project, name, values, tune=False):
    path = project.root / "metrics" / ("tune" if tune else "") / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"test": values} if tune else values))


def test_paper_table_puts_results_next_to_the_paper(project):
    write_metrics(project, "mnist1d_cnn", {"test/acc": 0.926, "test/f1": 0.925})
    write_metrics(project, "mnist1d_logistic", {"test/acc": 0.328})
    table = compare(project, ["mnist1d_logistic", "mnist1d_mlp", "mnist1d_cnn"], "MNIST-1D")
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines() if line.startswith("| mnist1d")}
    assert "acc 0.926 | 0.940 | -0.014 | MNIST-1D paper" in rows["mnist1d_cnn"]
    assert "acc 0.328 | 0.320 | +0.008" in rows["mnist1d_logistic"]
    assert "not run" in rows["mnist1d_mlp"] and "0.680" in rows["mnist1d_mlp"]
    assert table.startswith("# MNIST-1D\n")


def test_a_search_result_comes_from_its_summary(project):
    write_metrics(project, "mnist1d_tcn_search", {"test/acc": 0.981}, tune=True)
    table = compare(project, ["mnist1d_tcn_search"], "t")
    assert "acc 0.981 | 0.940 | +0.041" in table


def test_searches_must_name_a_pipeline_with_a_search(project):
    params = yaml.safe_load(project.params_file.read_text())
    params["searches"] = {"mnist1d_cnn": "mnist1d"}
    project.params_file.write_text(yaml.safe_dump(params))
    assert_one_line_config_error(lambda: project.experiment("mnist1d_cnn"),
                                 ["params.yaml: searches.mnist1d_cnn", "has no search: section"])


def test_compare_draws_result_next_to_reference_one_panel_per_metric(project):
    from PIL import Image

    from runyard.commands.report import compare_figure

    write_metrics(project, "mnist1d_cnn", {"test/acc": 0.926})
    one = compare_figure(project, ["mnist1d_logistic", "mnist1d_cnn"], "MNIST-1D", project.root / "plots" / "a.png")
    assert one.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    names = [n for n in project.experiment_names() if project.experiment(n).reference]
    metrics = {project.experiment(n).reference.metric for n in names}
    other = next(n for n in names if project.experiment(n).reference.metric != "test/acc")
    two = compare_figure(project, ["mnist1d_cnn", other], "t", project.root / "plots" / "b.png")
    assert len(metrics) > 1
    # accuracy and another metric do not share a scale: a panel each, stacked
    assert Image.open(two).height > Image.open(one).height


def test_cost_reads_the_latest_top_level_run_and_shows_core_time(project):
    from mlflow import MlflowClient

    from runyard.commands.report import format_cost, last_costs
    from runyard.tracking.uri import project_tracking_uri

    assert last_costs(project, ["mnist1d_cnn"]) == {}, "no store yet: nothing, and none created"
    assert not (project.root / "mlruns" / "mlflow.db").exists()
    (project.root / "mlruns").mkdir(exist_ok=True)
    client = MlflowClient(project_tracking_uri(project))
    exp_id = client.create_experiment("mnist1d_cnn")
    parent = client.create_run(exp_id).info.run_id
    client.log_metric(parent, "cost/core_seconds", 300.0)
    client.set_terminated(parent)
    trial = client.create_run(exp_id, tags={"mlflow.parentRunId": parent}).info.run_id
    client.log_metric(trial, "cost/core_seconds", 150.0)
    client.set_terminated(trial)
    assert last_costs(project, ["mnist1d_cnn", "mnist1d_mlp"]) == {"mnist1d_cnn": {"cost/core_seconds": 300.0}}
    assert format_cost({"cost/core_seconds": 300.0}) == "5.0 min core"
    assert format_cost({"cost/core_seconds": 45.0, "cost/gpu_seconds": 9000.0}) == "45 s core, 2.5 h GPU"
    assert format_cost({}) == "-"
