"""Human-facing summaries: the experiment table and where to look next."""

from __future__ import annotations

import json

from rich.table import Table

from runyard.progress import report_console
from runyard.project import Project

RESULT_KEYS = ("test/acc", "test/f1", "test/mse", "test/iou", "test/dice", "test/map50", "test/inception_score")


def _results(project: Project, name: str) -> dict:
    """The experiment's test metrics: from its evaluation, or else from its search."""
    for path in (project.metrics_file(name), project.root / "metrics" / "tune" / f"{name}.json"):
        if path.is_file():
            data = json.loads(path.read_text())
            return data.get("test", data)
    return {}


def _reference(exp) -> str:
    ref = exp.reference
    return f"{ref.metric.removeprefix('test/')} {ref.value:g} ({ref.source})" if ref else ""


def experiments_table(project: Project, only_pipeline: bool = False) -> None:
    table = Table(title="runyard experiments")
    for col in ("experiment", "dataset", "model", "in dvc repro", "test result", "reference"):
        table.add_column(col)
    params = project.params
    names = [*params.experiments, *params.searches] if only_pipeline else project.experiment_names()
    for name in names:
        exp = project.experiment(name)
        res = _results(project, name)
        shown = ", ".join(f"{k.removeprefix('test/')} {v:.4f}" for k, v in res.items() if k in RESULT_KEYS)
        in_repro = "train" if name in params.experiments else "tune" if name in params.searches else ""
        table.add_row(name, exp.dataset, exp.model_name, in_repro, shown or "-", _reference(exp))
    report_console().print(table)


def compare(project: Project, names: list[str], title: str) -> str:
    """A markdown table of test results next to each experiment's published reference."""
    lines = [f"# {title}", "", "| experiment | model | result | reference | difference | source |",
             "|---|---|---|---|---|---|"]
    for name in names:
        exp = project.experiment(name)
        ref, res = exp.reference, _results(project, name)
        metric = ref.metric if ref else next((k for k in RESULT_KEYS if k in res), "test/acc")
        value = res.get(metric)
        shown = "not run" if value is None else f"{value:.3f}"
        diff = f"{value - ref.value:+.3f}" if ref and value is not None else ""
        lines.append(f"| {name} | {exp.model_name} | {metric.removeprefix('test/')} {shown} | "
                     f"{f'{ref.value:.3f}' if ref else ''} | {diff} | {ref.source if ref else ''} |")
    return "\n".join(lines) + "\n"


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
        "  make ui    (= .venv/bin/runyard ui: the store above, on 127.0.0.1 only)\n"
        "  then browse http://127.0.0.1:5000 and pick \"Model training\" at the top left"
    )
