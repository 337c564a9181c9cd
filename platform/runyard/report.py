"""Human-facing summaries: the experiment table and where to look next."""

from __future__ import annotations

import json

from rich.table import Table

from runyard.config import Project
from runyard.progress import report_console


def _results(project: Project, name: str) -> dict:
    path = project.metrics_file(name)
    return json.loads(path.read_text()) if path.is_file() else {}


def experiments_table(project: Project, only_pipeline: bool = False) -> None:
    table = Table(title="runyard experiments")
    for col in ("experiment", "dataset", "model", "in dvc repro", "test result"):
        table.add_column(col)
    names = list(project.params.experiments) if only_pipeline else project.experiment_names()
    for name in names:
        exp = project.experiment(name)
        res = _results(project, name)
        shown = ", ".join(f"{k.removeprefix('test/')} {v:.4f}" for k, v in res.items()
                          if k in ("test/acc", "test/f1", "test/mse", "test/iou", "test/dice"))
        table.add_row(name, exp.dataset, exp.model_name,
                      "yes" if name in project.params.experiments else "", shown or "-")
    report_console().print(table)


def summary(project: Project) -> None:
    console = report_console()
    experiments_table(project, only_pipeline=True)
    uri = project.params.tracking_uri
    console.print(
        "\n[bold]Results[/bold]\n"
        "  metrics:   metrics/<experiment>.json   (dvc metrics show)\n"
        "  plots:     plots/<experiment>/          (dvc plots show)\n"
        "  models:    models/<experiment>/         and the MLflow Model Registry\n"
        f"  tracking:  {uri}\n"
        "\n[bold]Open the MLflow UI[/bold]\n"
        f"  make ui    (= .venv/bin/mlflow ui --backend-store-uri {uri} --host 127.0.0.1 --port 5000)\n"
        "  then browse http://127.0.0.1:5000"
    )
