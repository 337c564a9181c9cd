"""`runyard bench -w pipeline`: how much of a `dvc repro` is spent training.

Runs the project's `dvc repro` in a throwaway copy of its files (what git tracks, plus
new files git does not ignore): no DVC cache, a new MLflow store, no warm local Ray, so
every stage runs as on a fresh clone. Then, from that copy's MLflow store, every
training's and search trial's fit interval (``tracking.cost.fit_interval``: its
``cost/wall_seconds`` stamped at the fit's end). Concurrent trials count once.

    efficiency = seconds inside at least one fit / the `dvc repro`'s wall seconds

Each stage's wall is read off DVC's "Running stage" lines, so the table also says where
the time outside fits goes (process start-up and imports, Ray, data, evaluation, logging).

Two variants, one after the other, each in its own fresh copy: ``cold``, every command
in a process of its own (``RUNYARD_WARM_CLI=0``, as before the command server), and
``warm``, the default (``runyard.forkserver``).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

GOAL = 0.75
STAGE_LINE = re.compile(r"^Running stage '([^']+)'")


def copy_project(root: Path, dest: Path) -> None:
    """The project's files as a fresh clone would have them (uncommitted edits included)."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=root, capture_output=True, check=True).stdout.decode()
    for rel in filter(None, listed.split("\0")):
        src = root / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    git = ["git", "-c", "user.name=runyard-bench", "-c", "user.email=bench@runyard.invalid"]
    subprocess.run([*git, "init", "-q"], cwd=dest, check=True)
    subprocess.run([*git, "add", "-A"], cwd=dest, check=True)
    subprocess.run([*git, "commit", "-qm", "bench copy"], cwd=dest, check=True)


VARIANTS = {"cold": {"RUNYARD_WARM_CLI": "0"}, "warm": {"RUNYARD_WARM_CLI": "1"}}


def repro(copy: Path, say, extra_env: dict[str, str]) -> tuple[float, list[tuple[str, float, float]]]:
    """`dvc repro` in ``copy``; its wall seconds and each stage's (name, start, end) in unix seconds."""
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", **extra_env}
    for var in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI", "OPTUNA_STORAGE"):
        env.pop(var, None)
    starts: list[tuple[str, float]] = []
    t0 = time.time()
    proc = subprocess.Popen(["dvc", "repro"], cwd=copy, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, bufsize=1)
    tail: list[str] = []
    for line in proc.stdout:
        tail = (tail + [line])[-40:]
        m = STAGE_LINE.match(line)
        if m:
            starts.append((m.group(1), time.time()))
            say(f"  {time.time() - t0:6.1f} s  {m.group(1)}")
    if proc.wait() != 0:
        raise RuntimeError("bench pipeline: dvc repro failed:\n" + "".join(tail))
    t_end = time.time()
    ends = [s for _, s in starts[1:]] + [t_end]
    return t_end - t0, [(name, start, end) for (name, start), end in zip(starts, ends, strict=True)]


def fit_intervals(copy: Path) -> list[tuple[float, float]]:
    """Every fit (training or trial) the copy's MLflow store recorded, as (start, end)."""
    from mlflow import MlflowClient

    from runyard.tracking.cost import WALL, fit_interval

    client = MlflowClient(f"sqlite:///{copy / 'mlruns' / 'mlflow.db'}")
    out = []
    for exp in client.search_experiments():
        for run in client.search_runs([exp.experiment_id], max_results=5000):
            if WALL in run.data.metrics:
                interval = fit_interval(client.get_metric_history(run.info.run_id, WALL))
                if interval:
                    out.append(interval)
    return out


def breakdown(stages: list[tuple[str, float, float]], fits: list[tuple[float, float]]) -> list[dict[str, Any]]:
    """Per kind of stage (prepare, train, ...): how many ran, their wall and the seconds inside fits."""
    from runyard.tracking.cost import covered_seconds

    kinds: dict[str, dict[str, Any]] = {}
    for name, start, end in stages:
        clipped = [(max(a, start), min(b, end)) for a, b in fits if b > start and a < end]
        k = kinds.setdefault(name.split("@")[0], {"stage": name.split("@")[0], "count": 0, "wall_s": 0.0,
                                                  "fit_s": 0.0})
        k["count"] += 1
        k["wall_s"] += end - start
        k["fit_s"] += covered_seconds(clipped)
    return list(kinds.values())


def run_variant(root: Path, variant: str, say=lambda _: None) -> dict[str, Any]:
    from runyard import forkserver
    from runyard.execution import local_ray
    from runyard.tracking.cost import covered_seconds

    with tempfile.TemporaryDirectory(prefix="runyard-bench-pipeline-") as tmp:
        copy = Path(tmp) / "project"
        copy_project(root, copy)
        try:
            wall, stages = repro(copy, say, VARIANTS[variant])
            fits = fit_intervals(copy)
        finally:
            if (copy / ".runyard" / "local.json").exists():
                local_ray.down(copy / ".runyard")
            forkserver.stop(copy)
    inside = covered_seconds(fits)
    return {"wall_s": wall, "fit_s": inside, "efficiency": inside / wall if wall else 0.0, "fits": len(fits),
            "stages": len(stages), "goal": GOAL, "met": inside / wall >= GOAL if wall else False,
            "by_stage": breakdown(stages, fits), "cpus": os.cpu_count(), "variant": variant}


def report(root: Path, out: Path, console, variants: tuple[str, ...] = tuple(VARIANTS)) -> dict[str, Any]:
    """Run each variant's `dvc repro`, print their tables side by side, write ``out``."""
    from rich.table import Table

    results = {}
    for variant in variants:
        console.print(f"[bold]pipeline[/bold] ({variant}): dvc repro in a fresh copy of the project")
        results[variant] = run_variant(root, variant, console.print)
    table = Table(title="runyard bench: where a dvc repro's time goes (wall s / inside fits s / outside per run s)")
    table.add_column("stage")
    table.add_column("runs", justify="right")
    for variant in results:
        table.add_column(variant, justify="right")
    first = next(iter(results.values()))
    for k in first["by_stage"]:
        cells = []
        for r in results.values():
            s = next((x for x in r["by_stage"] if x["stage"] == k["stage"]), None)
            cells.append("-" if s is None else
                         f"{s['wall_s']:.1f} / {s['fit_s']:.1f} / {(s['wall_s'] - s['fit_s']) / s['count']:.1f}")
        table.add_row(k["stage"], str(k["count"]), *cells)
    console.print(table)
    for variant, r in results.items():
        verdict = "[green]met[/green]" if r["met"] else "[red]missed[/red]"
        console.print(f"{variant}: {r['stages']} stages, {r['fits']} fits: {r['fit_s']:.1f} s inside fits of "
                      f"{r['wall_s']:.1f} s wall = {r['efficiency']:.0%} (goal >= {GOAL:.0%}: {verdict})")
    report = {"variants": results, "goal": GOAL}
    if {"cold", "warm"} <= set(results):
        report["warm_over_cold_wall"] = results["warm"]["wall_s"] / results["cold"]["wall_s"]
        console.print(f"warm / cold wall: {report['warm_over_cold_wall']:.2f}x")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report
