"""`runyard bench -w tune`: how much of the cores a search spends training, and what ASHA saves.

1. Efficiency: 32 trials of the reference workload (MNIST-1D CNN, 20 epochs of batch
   100 = 800 steps), random search, one CPU per trial, as many at once as there are
   cores. Ideal wall time = the sum of the trials' plain-loop times / cores (one
   plain-loop trial on one thread, timed in this process, times 32). Efficiency =
   ideal / actual: the share of the cores' time spent training.
2. ASHA vs random: the same 32 sampled configurations (same searcher seed) with FIFO
   and with ASHA; compute = epochs trained by all trials until the first trial reaches
   val/acc >= 0.92 (test accuracy is only measured for the best model).
Both searches go through runyard's real path: Tune trials, per-epoch checkpoints and
reports, child runs written to an MLflow sqlite store.
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


def plain_trial_s(splits) -> float:
    """One trial's work as a careful hand-written loop on one thread."""
    import torch

    from runyard.bench import plain_loop

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        exp = search_experiment("fifo")
        return plain_loop("tune", exp, splits).wall_s
    finally:
        torch.set_num_threads(threads)


def run_search(exp, splits, store: Path) -> dict[str, Any]:
    import mlflow

    from runyard.tuning.children import ChildRuns
    from runyard.tuning.search import _run_tuner

    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp_id = client.create_experiment(exp.name, artifact_location=(store / exp.name).as_uri())
    parent = client.create_run(exp_id, run_name=exp.name).info.run_id
    children = ChildRuns(uri, exp_id, parent, exp.recipe.epochs)
    t0 = time.perf_counter()
    from runyard.data import dataset_info

    study = f"sqlite:///{store / 'optuna.db'}"
    grid = _run_tuner(exp, dataset_info("mnist1d"), splits, 0, store / "ray", exp.name, study, children,
                      resume=False, retry_errored=False)
    wall = time.perf_counter() - t0
    client.set_terminated(parent)
    # Every report of every trial, in the order they happened: epochs spent until the target.
    rows = sorted((r["timestamp"], r["val/acc"]) for res in grid for r in res.metrics_dataframe.to_dict("records"))
    reached = next((i + 1 for i, (_, acc) in enumerate(rows) if acc >= TARGET), None)
    return {"wall_s": wall, "epochs_total": len(rows), "epochs_to_target": reached,
            "best_val_acc": max(acc for _, acc in rows)}


def run(console) -> dict[str, Any]:
    from runyard.bench import experiment as reference_data
    from runyard.config import RayParams
    from runyard.execution import ray_session

    _, splits = reference_data("reference")
    ray_session.connect(RayParams(), where="bench")
    cores = os.cpu_count() or 1
    console.print("  one plain-loop trial on one thread")
    single = plain_trial_s(splits)
    results: dict[str, Any] = {"cores": cores, "trials": TRIALS, "plain_trial_s": single,
                               "ideal_wall_s": TRIALS * single / cores}
    with tempfile.TemporaryDirectory() as tmp:
        for scheduler in ("fifo", "asha"):
            console.print(f"  {TRIALS} trials, random search, {scheduler}")
            results[scheduler] = run_search(search_experiment(scheduler), splits, Path(tmp) / scheduler)
    results["efficiency"] = results["ideal_wall_s"] / results["fifo"]["wall_s"]
    fifo, asha = results["fifo"]["epochs_to_target"], results["asha"]["epochs_to_target"]
    results["asha_compute_ratio"] = asha / fifo if fifo and asha else None
    return results


def report(out: Path, console) -> dict[str, Any]:
    import json

    console.print("[bold]tune[/bold]: searches of the reference workload")
    r = run(console)
    console.print(
        f"{r['trials']} trials on {r['cores']} cores: {r['fifo']['wall_s']:.1f} s against an ideal "
        f"{r['ideal_wall_s']:.1f} s (plain-loop trial {r['plain_trial_s']:.2f} s x {r['trials']} / {r['cores']}): "
        f"{r['efficiency']:.0%} of the cores' time spent training"
    )
    for s in ("fifo", "asha"):
        console.print(f"  {s}: {r[s]['epochs_total']} epochs in all, {r[s]['epochs_to_target']} until val/acc "
                      f">= {TARGET}, best {r[s]['best_val_acc']:.3f}, {r[s]['wall_s']:.1f} s")
    if r["asha_compute_ratio"] is not None:
        console.print(f"ASHA needs {r['asha_compute_ratio']:.2f}x the compute of random search to reach {TARGET}")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2) + "\n")
    return r
