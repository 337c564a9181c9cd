"""Human-facing summaries: the experiment table and where to look next."""

from __future__ import annotations

import json
from pathlib import Path

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


def last_costs(project: Project, names: list[str]) -> dict[str, dict[str, float]]:
    """Each experiment's cost metrics (tracking.cost) from its latest finished training or
    search run in the project's tracking store; {} where the store does not exist yet."""
    from runyard.errors import RunyardError
    from runyard.tracking.cost import CORE
    from runyard.tracking.uri import check_reachable, project_tracking_uri

    uri = project_tracking_uri(project)
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return {}  # nothing tracked yet; and a look must not create the store
    try:
        check_reachable(uri, "mlflow.tracking_uri")
    except RunyardError:
        return {}
    from mlflow import MlflowClient

    client, out = MlflowClient(uri), {}
    for name in names:
        exp = client.get_experiment_by_name(name)
        if exp is None:
            continue
        runs = client.search_runs([exp.experiment_id], f"attributes.status = 'FINISHED' and metrics.`{CORE}` >= 0",
                                  order_by=["attributes.start_time DESC"], max_results=50)
        top = next((r for r in runs if "mlflow.parentRunId" not in r.data.tags), None)  # not a trial
        if top is not None:
            out[name] = {k: v for k, v in top.data.metrics.items() if k.startswith("cost/")}
    return out


def format_cost(values: dict[str, float]) -> str:
    """``core_seconds`` (and GPU seconds, if any) as people read them: s, min or h."""
    from runyard.tracking.cost import CORE, GPU

    def human(seconds: float) -> str:
        if seconds < 120:
            return f"{seconds:.0f} s"
        return f"{seconds / 60:.1f} min" if seconds < 7200 else f"{seconds / 3600:.1f} h"

    if CORE not in values:
        return "-"
    gpu = values.get(GPU, 0.0)
    return f"{human(values[CORE])} core" + (f", {human(gpu)} GPU" if gpu else "")


def experiments_table(project: Project, only_pipeline: bool = False) -> None:
    table = Table(title="runyard experiments")
    for col in ("experiment", "dataset", "model", "in dvc repro", "test result", "reference", "cost"):
        table.add_column(col)
    params = project.params
    names = [*params.experiments, *params.searches] if only_pipeline else project.experiment_names()
    costs = last_costs(project, names)
    for name in names:
        exp = project.experiment(name)
        res = _results(project, name)
        shown = ", ".join(f"{k.removeprefix('test/')} {v:.4f}" for k, v in res.items() if k in RESULT_KEYS)
        in_repro = "train" if name in params.experiments else "tune" if name in params.searches else ""
        table.add_row(name, exp.dataset, exp.model_name, in_repro, shown or "-", _reference(exp),
                      format_cost(costs.get(name, {})))
    report_console().print(table)


def _compared(project: Project, names: list[str]) -> list[dict]:
    """Per experiment: its model, the metric compared, its result (None: not run) and reference."""
    rows = []
    for name in names:
        exp = project.experiment(name)
        ref, res = exp.reference, _results(project, name)
        metric = ref.metric if ref else next((k for k in RESULT_KEYS if k in res), "test/acc")
        rows.append({"name": name, "model": exp.model_name, "metric": metric, "value": res.get(metric),
                     "reference": ref.value if ref else None, "source": ref.source if ref else ""})
    return rows


def compare_figure(project: Project, names: list[str], title: str, out: Path) -> Path:
    """``compare``'s table as a bar chart: each experiment's result next to its reference,
    one panel per metric compared (accuracy and an MSE do not share a scale). PNG at ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = _compared(project, names)
    metrics = list(dict.fromkeys(r["metric"] for r in rows))
    fig, axes = plt.subplots(len(metrics), 1, figsize=(max(5.0, 1.1 * len(rows) + 2), 3.2 * len(metrics)),
                             squeeze=False)
    for ax, metric in zip(axes[:, 0], metrics, strict=True):
        group = [r for r in rows if r["metric"] == metric]
        xs = range(len(group))
        result = [r["value"] if r["value"] is not None else 0.0 for r in group]
        ref = [r["reference"] if r["reference"] is not None else 0.0 for r in group]
        bars = ax.bar([x - 0.2 for x in xs], result, 0.4, label="runyard", color="tab:blue")
        ax.bar([x + 0.2 for x in xs], ref, 0.4, label="reference", color="0.7")
        for bar, r in zip(bars, group, strict=True):
            label = "not run" if r["value"] is None else f"{r['value']:.3f}"
            ax.annotate(label, (bar.get_x() + bar.get_width() / 2, bar.get_height()), xytext=(0, 2),
                        textcoords="offset points", ha="center", fontsize=7)
        ax.set_xticks(list(xs), [r["name"] for r in group], rotation=20, ha="right", fontsize=8)
        ax.set_ylabel(metric.removeprefix("test/"))
        ax.legend(fontsize=7, loc="lower right")
    axes[0, 0].set_title(title, fontsize=10)
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=120)
    plt.close(fig)
    return out


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
        "  then open the address it prints: the experiments, each on its runs"
    )
