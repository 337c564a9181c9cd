"""The `runyard` command. One function per verb; the work lives in runyard.commands.

Each verb imports its command when it runs: `runyard --help` and a mistyped verb
answer without importing torch, Ray or MLflow.
"""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

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
    from runyard.project import Project

    return Project.find()


@app.command()
def prepare(dataset: str = typer.Argument(..., help="Dataset name, e.g. mnist1d")):
    """Build data/DATASET/ (train/val/test splits). Example: runyard prepare mnist1d"""
    from runyard.commands.prepare import prepare as run

    project = _project()
    out = run(project, dataset)
    typer.echo(f"prepared {project.rel(out)}")


@app.command()
def train(
    experiment: str = typer.Argument(..., help="Name of a pipelines/<experiment>.yaml"),
    resume: bool = typer.Option(False, "--resume", help="Continue the last interrupted run."),
):
    """Train one experiment on Ray and track it in MLflow. Example: runyard train mnist1d_cnn"""
    from runyard.commands.train import train as run

    run_id = run(_project(), experiment, resume=resume)
    typer.echo(f"trained {experiment}: MLflow run {run_id}")


@app.command()
def tune(
    experiment: str = typer.Argument(..., help="Name of a pipelines/<experiment>.yaml with a search: section"),
    resume: bool = typer.Option(False, "--resume", help="Continue the last interrupted search."),
    retry_errored: bool = typer.Option(False, "--retry-errored", help="With --resume: run errored trials again."),
):
    """Search hyperparameters with Ray Tune (Optuna TPE, ASHA, ...); register the best model.

    Example: runyard tune mnist1d_cnn_search   (then: runyard tune mnist1d_cnn_search --resume)
    """
    from runyard.commands.tune import tune as run

    s = run(_project(), experiment, resume=resume, retry_errored=retry_errored)
    test = ", ".join(f"{k}={v:.4f}" for k, v in s["test"].items())
    typer.echo(f"tuned {experiment}: {s['trials']} trials ({s['pruned']} pruned, {s['errored']} errored); "
               f"best {s['metric']}={s['best_value']:.4f} with {s['best_config']}; {test}; "
               f"registered version {s['registered']['version']}"
               + (" as champion" if s["registered"]["promoted"] else ""))


@app.command()
def evaluate(experiment: str = typer.Argument(..., help="Name of a trained experiment")):
    """Test metrics -> metrics/EXPERIMENT.json, plots -> plots/EXPERIMENT/."""
    from runyard.commands.evaluate import evaluate as run

    values = run(_project(), experiment)
    typer.echo(f"evaluated {experiment}: " + ", ".join(f"{k}={v:.4f}" for k, v in values.items()))


@app.command()
def register(experiment: str = typer.Argument(..., help="Name of a trained experiment")):
    """Register the trained model; move alias `champion` only if it beats the current one."""
    from runyard.commands.register import register as run

    reg = run(_project(), experiment)
    moved = "now champion" if reg.promoted else f"champion stays v{reg.champion_version}"
    typer.echo(f"registered {reg.name} v{reg.version} ({reg.metric}={reg.value:.4f}; {moved})")


@app.command()
def reproduce(
    model: str = typer.Argument(..., help="MODEL@ALIAS of a registered model, e.g. mnist1d_cnn@champion"),
    tolerance: float = typer.Option(
        None, "--tolerance", help="Largest absolute difference allowed per metric (default 1e-4); beyond it, exit 1."),
):
    """Rebuild a registered model from its lineage (commit, data version) and compare its metrics.

    The recorded commit is checked out in a temporary worktree and its data pulled with DVC.

    Trains and evaluates there into the same tracking store; nothing is registered, no alias moves.

    Example: runyard reproduce mnist1d_cnn@champion
    """
    from runyard.commands.reproduce import TOLERANCE, report
    from runyard.commands.reproduce import reproduce as run
    from runyard.progress import report_console

    result = run(_project(), model, tolerance=TOLERANCE if tolerance is None else tolerance)
    report(result, report_console())
    if not result.ok:
        raise typer.Exit(1)


@app.command(name="list")
def list_experiments():
    """Every experiment with its dataset, model and last test result."""
    from runyard.commands.report import experiments_table

    experiments_table(_project())


@app.command()
def compare(
    experiments: list[str] = typer.Argument(..., help="Experiments to put side by side"),
    out: Path = typer.Option(None, "--out", help="Write the markdown table here (e.g. metrics/paper.md)"),
    title: str = typer.Option("runyard results against published references", "--title"),
    figure: Path = typer.Option(None, "--figure", help="Also draw it as a bar chart, a PNG (e.g. plots/paper.png)"),
):
    """Test results next to each experiment's published reference, as a markdown table.

    Example: runyard compare mnist1d_logistic mnist1d_mlp mnist1d_cnn mnist1d_gru --out metrics/paper_mnist1d.md
    """
    from runyard.commands.report import compare as run
    from runyard.commands.report import compare_figure

    project = _project()
    if figure is not None and figure.suffix.lower() != ".png":
        raise RunyardError(f"--figure: {figure}: must end in .png")
    table = run(project, experiments, title)
    if out:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(table)
    if figure is not None:
        compare_figure(project, experiments, title, figure)
    typer.echo(table, nl=False)


@app.command()
def summary():
    """Where the results are, and how to open the MLflow UI on them."""
    from runyard.commands.report import summary as show

    show(_project())


@app.command()
def bench(
    workload: list[str] = typer.Option(
        ["reference", "large"], "--workload", "-w",
        help="reference (MNIST-1D CNN, 20 epochs), large (50k samples), tune (32-trial searches), "
             "stream (Ray Data streaming vs in-memory, 200 MB and 2 GB of Parquet), "
             "pipeline (a dvc repro in a fresh copy: the share of its wall time inside fits)"),
    out: str = typer.Option("metrics/bench.json", help="Where to write the results (a DVC metric)."),
    repeat: int = typer.Option(None, "--repeat", min=1,
                               help="Timed runs of each variant (default: 3 for reference, 2 for large)."),
    warmup: bool = typer.Option(True, "--warmup/--no-warmup", help="One untimed 1-epoch run of each variant first."),
    spread_limit: float = typer.Option(0.20, "--spread-limit", min=0.0,
                                       help="Flag a variant whose (max - min) / median exceeds this."),
):
    """Time a plain PyTorch loop, plain Lightning, runyard on 1 and 2 Ray workers and native DDP, side by side.

    Each variant runs --repeat times, interleaved, on the same thread count; the table shows best and median.

    Example: runyard bench -w reference --repeat 3
    """
    from pathlib import Path

    from runyard.bench import WORKLOADS
    from runyard.bench import run as run_bench
    from runyard.bench.search import report
    from runyard.progress import report_console

    unknown = [w for w in workload if w not in (*WORKLOADS, "tune", "stream", "pipeline")]
    if unknown:
        raise RunyardError(f"--workload: unknown {unknown[0]!r}; allowed: {', '.join(WORKLOADS)}, tune, stream, "
                           "pipeline")
    root = _project().root
    path = root / Path(out)
    if "pipeline" in workload:
        from runyard.bench.pipeline import report as pipeline_report

        pipeline_report(root, path.with_name("bench_pipeline.json"), report_console())
    if "tune" in workload:
        report(path.with_name("bench_tune.json"), report_console(), repeat=repeat or 3)
    if "stream" in workload:
        from runyard.bench.stream import report as stream_report

        stream_report(path.with_name("bench_stream.json"), report_console())
    train = [w for w in workload if w not in ("tune", "stream", "pipeline")]
    if train:
        run_bench(train, path, report_console(), repeat=repeat, warmup=warmup, spread_limit=spread_limit)


@app.command()
def serve(
    target: str = typer.Argument(
        ..., metavar="MODEL@ALIAS", help="A registered model and its alias, e.g. mnist1d_cnn@champion"),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to listen on (0.0.0.0: every interface)."),
    port: int = typer.Option(8080, "--port", help="Port to listen on (0: any free port)."),
    poll_s: float = typer.Option(10.0, "--poll-s", help="Seconds between checks of where the alias points."),
    max_body_mb: float = typer.Option(10.0, "--max-body-mb", help="Largest request body in MB; bigger: HTTP 413."),
    max_rows: int = typer.Option(10_000, "--max-rows", help="Most rows (samples) per request; more: HTTP 413."),
    timeout_s: float = typer.Option(30.0, "--timeout-s", help="Longest prediction in seconds; slower: HTTP 503."),
):
    """Serve a registered model over HTTP (MLflow's scoring protocol); reload it when its alias moves.

    Example: runyard serve mnist1d_cnn@champion --port 8080, then
    curl -d '{"inputs": [[0.1, 0.2, ...]]}' -H 'Content-Type: application/json' http://127.0.0.1:8080/invocations
    """
    from runyard.serving.server import serve_until_stopped

    serve_until_stopped(_project(), target, host=host, port=port, poll_s=poll_s, max_body_mb=max_body_mb,
                        max_rows=max_rows, timeout_s=timeout_s)


# --------------------------------------------------------------------------- cluster and jobs

cluster_app = typer.Typer(
    help="A local multi-node Ray cluster on this machine (loopback only, token auth on).\n\n"
    "Example: runyard cluster up --nodes 3; runyard cluster status; runyard cluster down",
    no_args_is_help=True,
)
app.add_typer(cluster_app, name="cluster")

ADDRESS_HELP = "Ray dashboard URL, e.g. http://127.0.0.1:8265. Default: the cluster `runyard cluster up` started."


def _state_dir():
    return _project().root / ".runyard"


@cluster_app.command("up")
def cluster_up(
    nodes: int = typer.Option(2, "--nodes", "-n", help="Number of nodes: one head and NODES-1 workers."),
    cpus_per_node: int = typer.Option(1, "--cpus-per-node", help="CPUs each node offers to Ray."),
):
    """Start a head and NODES-1 workers (separate `ray start`s). Example: runyard cluster up --nodes 3"""
    from runyard.execution import cluster

    state = cluster.up(nodes, cpus_per_node, _state_dir())
    typer.echo(f"cluster up: {nodes} nodes, dashboard {state['dashboard_url']}, GCS {state['gcs_address']}")


@cluster_app.command("status")
def cluster_status():
    """The cluster's nodes, their state and resources."""
    from runyard.execution import cluster

    cluster.status(_state_dir())


@cluster_app.command("down")
def cluster_down():
    """Stop running jobs, then exactly the processes `cluster up` started."""
    from runyard.execution import cluster

    count = cluster.down(_state_dir())
    typer.echo(f"cluster down: stopped {count} processes")


local_app = typer.Typer(
    help="The project's warm local Ray: with ray.address null every stage and command shares one "
    "Ray on 127.0.0.1 (started on demand, stopped after ray.local_idle_s idle seconds); and its "
    "command server, which starts pipeline commands with their imports done (RUNYARD_WARM_CLI=0: off).\n\n"
    "Example: runyard local status; runyard local down",
    no_args_is_help=True,
)
app.add_typer(local_app, name="local")


@local_app.command("status")
def local_status():
    """Whether the project's local Ray is up, its address and processes. Example: runyard local status"""
    from runyard.execution import local_ray

    typer.echo(local_ray.describe(_state_dir()))


@local_app.command("down")
def local_down():
    """Stop the project's local Ray, its warm trainer and its command server now (their processes only).

    Example: runyard local down"""
    from runyard import forkserver
    from runyard.execution import local_ray

    forkserver.stop_warm_up(_project().root)  # first: it could start a head after the next line
    count = local_ray.down(_state_dir())
    typer.echo("local Ray: none was up" if count is None else f"local Ray down: stopped {count} processes")
    servers = forkserver.stop(_project().root)
    if servers:
        typer.echo(f"command server down: stopped {servers}")


@app.command(context_settings={"allow_interspersed_args": False})
def submit(
    entrypoint: list[str] = typer.Argument(..., help="The command the job runs, after `--`."),
    address: str = typer.Option(None, "--address", help=ADDRESS_HELP),
    follow: bool = typer.Option(True, "--follow/--no-follow", help="Stream the job's output until it ends."),
):
    """Run a command as a Ray job with this project as its working dir; exit 0 if it succeeds.

    Example: runyard submit -- dvc repro   (or: runyard submit --address http://127.0.0.1:8265 -- dvc repro)
    """
    from runyard.execution import cluster, jobs

    root = _project().root
    raise typer.Exit(jobs.submit(cluster.resolve_address(address, root), entrypoint, root, follow=follow))


@app.command(name="jobs")
def list_jobs(address: str = typer.Option(None, "--address", help=ADDRESS_HELP)):
    """Every job on the cluster with its status. Example: runyard jobs"""
    from runyard.execution import cluster, jobs

    jobs.list_jobs(cluster.resolve_address(address, _project().root))


@app.command()
def logs(
    job: str = typer.Argument(..., help="Job id, as `runyard jobs` shows it"),
    address: str = typer.Option(None, "--address", help=ADDRESS_HELP),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep streaming until the job ends."),
):
    """A job's output. Example: runyard logs raysubmit_XYZ --follow"""
    from runyard.execution import cluster, jobs

    raise typer.Exit(jobs.logs(cluster.resolve_address(address, _project().root), job, follow=follow))


@app.command()
def stop(
    job: str = typer.Argument(..., help="Job id, as `runyard jobs` shows it"),
    address: str = typer.Option(None, "--address", help=ADDRESS_HELP),
):
    """Stop a running job (SIGTERM: a training ends its MLflow run KILLED). Example: runyard stop raysubmit_XYZ"""
    from runyard.execution import cluster, jobs

    jobs.stop(cluster.resolve_address(address, _project().root), job)


@app.command()
def ui(port: int = typer.Option(5000, "--port", min=1, max=65535, help="Port on 127.0.0.1.")):
    """The MLflow UI on this project's tracking store, on 127.0.0.1 only; prints the address of its runs.

    Example: runyard ui --port 5000
    """
    from runyard.tracking.ui import ENV, command, project_experiments, url

    project = _project()
    argv = command(project, port)
    typer.echo(f"MLflow UI: {url(port, project_experiments(project))}  (Ctrl-C to stop)")
    sys.stdout.flush()  # exec replaces this process: nothing buffered survives it
    # The UI takes over this process: Ctrl-C and signals go to it.
    os.execve(argv[0], argv, {**ENV, **os.environ})


_terminated = False
"""Whether this command got SIGTERM (its exit code is then 143, whatever Ray made of it)."""


def _on_sigterm(*_) -> None:
    global _terminated
    _terminated = True
    sys.exit(143)


def main() -> None:
    # `ray job stop`, DVC and CI send SIGTERM: turn it into an exception so open
    # MLflow runs are ended (KILLED) instead of left RUNNING.
    signal.signal(signal.SIGTERM, _on_sigterm)
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    # OpenMP threads (scikit-learn's gradient boosting) sleep instead of spinning while they
    # wait: on CPUs shared with other work, spinning threads made a 2 s fit take a minute.
    # Read once when the OpenMP runtime loads, so set before anything imports scikit-learn.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    try:
        app()
    except RunyardError as e:
        typer.echo(f"runyard: error: {e}", err=True)
        sys.exit(e.exit_code)
    except SystemExit:
        # Raised inside ray.get or ray.wait, the handler's exit comes back from Ray as SystemExit(1).
        if _terminated:
            sys.exit(143)
        raise
