"""The `runyard` command. One function per verb; the work lives in runyard.stages."""

from __future__ import annotations

import os
import signal
import sys

import typer

from runyard.errors import RunyardError

app = typer.Typer(
    help="runyard: reproducible experiments trained on Ray, tracked in MLflow, versioned by DVC.\n\n"
    "Run the whole pipeline with `dvc repro`; the verbs below are its stages.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _project():
    from runyard.config import Project

    return Project.find()


@app.command()
def prepare(dataset: str = typer.Argument(..., help="Dataset name, e.g. mnist1d")):
    """Build data/DATASET/ (train/val/test splits). Example: runyard prepare mnist1d"""
    from runyard.stages import prepare as run

    project = _project()
    out = run(project, dataset)
    typer.echo(f"prepared {project.rel(out)}")


@app.command()
def train(
    experiment: str = typer.Argument(..., help="Name of a pipelines/<experiment>.yaml"),
    resume: bool = typer.Option(False, "--resume", help="Continue the last interrupted run."),
):
    """Train one experiment on Ray and track it in MLflow. Example: runyard train mnist1d_cnn"""
    from runyard.stages import train as run

    run_id = run(_project(), experiment, resume=resume)
    typer.echo(f"trained {experiment}: MLflow run {run_id}")


@app.command()
def evaluate(experiment: str = typer.Argument(..., help="Name of a trained experiment")):
    """Test metrics -> metrics/EXPERIMENT.json, plots -> plots/EXPERIMENT/."""
    from runyard.stages import evaluate as run

    values = run(_project(), experiment)
    typer.echo(f"evaluated {experiment}: " + ", ".join(f"{k}={v:.4f}" for k, v in values.items()))


@app.command()
def register(experiment: str = typer.Argument(..., help="Name of a trained experiment")):
    """Register the trained model; move alias `champion` only if it beats the current one."""
    from runyard.stages import register as run

    reg = run(_project(), experiment)
    moved = "now champion" if reg.promoted else f"champion stays v{reg.champion_version}"
    typer.echo(f"registered {reg.name} v{reg.version} ({reg.metric}={reg.value:.4f}; {moved})")


@app.command(name="list")
def list_experiments():
    """Every experiment with its dataset, model and last test result."""
    from runyard.report import experiments_table

    experiments_table(_project())


@app.command()
def summary():
    """Where the results are, and how to open the MLflow UI on them."""
    from runyard.report import summary as show

    show(_project())


@app.command()
def bench(
    workload: list[str] = typer.Option(["reference", "large"], "--workload", "-w",
                                       help="reference (MNIST-1D CNN, 20 epochs) and/or large (50k samples)"),
    out: str = typer.Option("metrics/bench.json", help="Where to write the results (a DVC metric)."),
):
    """Time a plain PyTorch loop, plain Lightning and runyard on 1 and 2 Ray workers, side by side.

    Example: runyard bench -w reference
    """
    from pathlib import Path

    from runyard.bench import WORKLOADS
    from runyard.bench import run as run_bench
    from runyard.progress import report_console

    unknown = [w for w in workload if w not in WORKLOADS]
    if unknown:
        raise RunyardError(f"--workload: unknown {unknown[0]!r}; allowed: {', '.join(WORKLOADS)}")
    run_bench(workload, _project().root / Path(out), report_console())


def main() -> None:
    # `ray job stop`, DVC and CI send SIGTERM: turn it into an exception so open
    # MLflow runs are ended (KILLED) instead of left RUNNING.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    try:
        app()
    except RunyardError as e:
        typer.echo(f"runyard: error: {e}", err=True)
        sys.exit(e.exit_code)
