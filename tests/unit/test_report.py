"""The side-by-side table against published references, and the searches map."""

from __future__ import annotations

import json

import yaml

from runyard.report import compare
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
