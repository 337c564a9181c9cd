"""`runyard bench -w tune`: how much of the cores a search spends training, and what ASHA saves.

1. Efficiency: 32 trials of the reference workload (MNIST-1D CNN, 20 epochs of batch
   100 = 800 steps), random search, one CPU per trial, as many at once as there are
   cores. Ideal wall time = the sum of the trials' plain-loop times / cores (one
   plain-loop trial on one thread, timed in this process after a warm-up: the median of
   a few runs, times 32). Efficiency =
   ideal / actual: the share of the cores' time spent training. Where the rest goes:
   the trials' own seconds (Tune's ``time_total_s``) against the cores' seconds, and a
   one-worker Lightning trial alone (``fit_local``, timed like the plain loop) against
   the plain loop: Lightning's share, the search's share, the driver's share.
2. ASHA vs random: the same 32 sampled configurations (same searcher seed) with FIFO
   and with ASHA; compute = epochs trained by all trials until the first trial reaches
   val/acc >= 0.92 (test accuracy is only measured for the best model).
Both searches go through runyard's real path: Tune trials, per-epoch reports, the
checkpoints a trial saves (``tuning.results.checkpointed_reports``), child runs written
to an MLflow sqlite store.
"""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path
from typing import Any

TRIALS = 32
TARGET = 0.92


def search_experiment(scheduler: str):
    from runyard.config import Experiment, Recipe, Search

    return Experiment(
        name=f"bench_tune_{scheduler}", dataset="mnist1d", model={"name": "cnn1d"},
        recipe=Recipe(optimizer="adam", lr=0.01, batch_size=100, epochs=20),
        search=Search.model_validate({
            "algorithm": "random", "scheduler": scheduler, "num_samples": TRIALS,
            "max_concurrent": os.cpu_count() or 1, "grace_period": 2, "reduction_factor": 4,
            "space": {"recipe.lr": {"loguniform": [0.0005, 0.05]},
                      "model.channels": {"choice": [[16, 16, 16], [25, 25, 25], [32, 32, 32]]}},
        }),
    )


def plain_trial(splits, repeat: int = 3) -> dict[str, Any]:
    """One trial's work as a careful hand-written loop on one thread (a trial holds one CPU):
    one untimed 1-epoch warm-up, then ``repeat`` timed runs; their walls and statistics."""
    from dataclasses import asdict

    from runyard.bench import noisy, plain_loop, stats, with_epochs

    exp = search_experiment("fifo")
    plain_loop("tune", with_epochs(exp, 1), splits, threads=1)
    walls = [plain_loop("tune", exp, splits, threads=1).wall_s for _ in range(max(1, repeat))]
    s = stats(walls)
    return {"repeats": walls, **asdict(s), "noisy": noisy(s)}


def lightning_trial(splits, repeat: int = 3) -> dict[str, Any]:
    """The same trial as ``plain_trial`` through runyard's in-process Lightning fit (what a
    one-worker trial runs), on one thread, alone: Lightning's own cost per trial."""
    from dataclasses import asdict

    from runyard.bench import noisy, pinned_threads, stats, with_epochs
    from runyard.data import dataset_info
    from runyard.execution.local import fit_local

    exp, info = search_experiment("fifo"), dataset_info("mnist1d")

    def once(e) -> float:
        with pinned_threads(1):
            t0 = time.perf_counter()
            fit_local(e, info, splits, seed=0, cpus=1)
            return time.perf_counter() - t0

    once(with_epochs(exp, 1))
    s = stats(once(exp) for _ in range(max(1, repeat)))
    return {**asdict(s), "noisy": noisy(s)}


def run_search(exp, splits, store: Path) -> dict[str, Any]:
    import mlflow

    from runyard.tuning.children import ChildRuns
    from runyard.tuning.search import run_search as tune_search

    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp_id = client.create_experiment(exp.name, artifact_location=(store / exp.name).as_uri())
    parent = client.create_run(exp_id, run_name=exp.name).info.run_id
    children = ChildRuns(uri, exp_id, parent, exp.recipe.epochs)
    t0 = time.perf_counter()
    from runyard.data import dataset_info

    study = f"sqlite:///{store / 'optuna.db'}"
    grid = tune_search(exp, dataset_info("mnist1d"), splits, 0, store / "ray", exp.name, study, children,
                       resume=False, retry_errored=False)
    wall = time.perf_counter() - t0
    client.set_terminated(parent)
    # Every report of every trial, in the order they happened: epochs spent until the target.
    rows = sorted((r["timestamp"], r["val/acc"]) for res in grid for r in res.metrics_dataframe.to_dict("records"))
    reached = next((i + 1 for i, (_, acc) in enumerate(rows) if acc >= TARGET), None)
    trial_s = [res.metrics["time_total_s"] for res in grid]  # each trial's start to its last report
    return {"wall_s": wall, "epochs_total": len(rows), "epochs_to_target": reached,
            "best_val_acc": max(acc for _, acc in rows), "trials_s": sum(trial_s)}


def run(console, repeat: int = 3) -> dict[str, Any]:
    from runyard.bench import experiment as reference_data
    from runyard.config import RayParams
    from runyard.execution import ray_session

    _, splits = reference_data("reference")
    ray_session.connect(RayParams(), where="bench")
    cores = os.cpu_count() or 1
    console.print(f"  one plain-loop trial on one thread, {repeat} time(s) after a warm-up")
    plain = plain_trial(splits, repeat)
    console.print(f"  one Lightning trial (runyard's in-process fit) on one thread, {repeat} time(s)")
    lightning = lightning_trial(splits, repeat)
    single = plain["median"]  # the search is run once: compare it with the trial's typical time
    results: dict[str, Any] = {"cores": cores, "trials": TRIALS, "plain_trial_s": single, "plain_trial": plain,
                               "lightning_trial": lightning, "ideal_wall_s": TRIALS * single / cores}
    with tempfile.TemporaryDirectory() as tmp:
        for scheduler in ("fifo", "asha"):
            console.print(f"  {TRIALS} trials, random search, {scheduler}")
            results[scheduler] = run_search(search_experiment(scheduler), splits, Path(tmp) / scheduler)
    fifo = results["fifo"]
    results["efficiency"] = results["ideal_wall_s"] / fifo["wall_s"]
    # The efficiency's three factors: Lightning's cost alone, what running inside the search
    # adds to a trial (the driver, Tune and the other trials on the same cores), and the
    # cores' time outside any trial (start-up, the last trials' tail).
    results["lightning_vs_plain"] = lightning["median"] / single
    results["trial_vs_lightning"] = fifo["trials_s"] / TRIALS / lightning["median"]
    results["in_trials"] = fifo["trials_s"] / (cores * fifo["wall_s"])
    to_target = fifo["epochs_to_target"], results["asha"]["epochs_to_target"]
    results["asha_compute_ratio"] = to_target[1] / to_target[0] if all(to_target) else None
    return results


def report(out: Path, console, repeat: int = 3) -> dict[str, Any]:
    """Run the searches, print what they cost, write ``out``. ``repeat``: timed runs of the
    plain-loop trial the ideal is computed from."""
    import json

    console.print("[bold]tune[/bold]: searches of the reference workload")
    r = run(console, repeat)
    console.print(
        f"{r['trials']} trials on {r['cores']} cores: {r['fifo']['wall_s']:.1f} s against an ideal "
        f"{r['ideal_wall_s']:.1f} s (plain-loop trial {r['plain_trial_s']:.2f} s x {r['trials']} / {r['cores']}): "
        f"{r['efficiency']:.0%} of the cores' time spent training"
    )
    console.print(
        f"  where the rest goes: a Lightning trial alone is {r['lightning_vs_plain']:.2f}x the plain loop, "
        f"inside the search {r['trial_vs_lightning']:.2f}x that; the trials fill {r['in_trials']:.0%} "
        f"of the cores' time"
    )
    p = r["plain_trial"]
    spread = "-" if p["spread"] is None else f"{p['spread']:.0%}"
    console.print(f"  plain-loop trial: best {p['best']:.2f} s, median {p['median']:.2f} s, spread {spread} "
                  f"over {p['n']} run(s){' [red]noisy[/red]' if p['noisy'] else ''}")
    for s in ("fifo", "asha"):
        console.print(f"  {s}: {r[s]['epochs_total']} epochs in all, {r[s]['epochs_to_target']} until val/acc "
                      f">= {TARGET}, best {r[s]['best_val_acc']:.3f}, {r[s]['wall_s']:.1f} s")
    if r["asha_compute_ratio"] is not None:
        console.print(f"ASHA needs {r['asha_compute_ratio']:.2f}x the compute of random search to reach {TARGET}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2) + "\n")
    return r
