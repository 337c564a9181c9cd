"""`runyard bench`: what orchestration costs, measured side by side in one process.

Four ways to train the same model on the same data:
  (a) a plain PyTorch loop (the baseline every ratio is against),
  (b) plain Lightning, same system and data module, no Ray,
  (c) runyard through Ray Train with 1 worker holding every CPU,
  (d) runyard through Ray Train with 2 workers (DDP over gloo),
  (e) native DDP: the plain loop in 2 processes (torch.distributed, gloo), no Ray:
      the baseline for (d), as Ray's own gate compares Ray Train with native DDP.
Every variant validates once per epoch, like runyard does. Wall time is split into
start-up (everything before the first training step: process and Ray start,
imports, data shipping) and per-epoch time.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from runyard.config import Experiment, RayParams, Recipe
from runyard.data import dataset_info
from runyard.data.mnist1d import Args as Mnist1dArgs
from runyard.data.mnist1d import build as build_mnist1d

WORKLOADS = {
    # The MNIST-1D paper's CNN on its default data: 20 epochs of batch 100 = 800 steps.
    "reference": (Mnist1dArgs(), {"name": "cnn1d"}, 20),
    # 50,000 training samples and a wider CNN: enough work per step for DDP to pay.
    "large": (Mnist1dArgs(num_samples=62_500, train_split=0.8), {"name": "cnn1d", "channels": [64, 64, 64]}, 3),
}


@dataclass
class Timing:
    workload: str
    variant: str
    wall_s: float
    startup_s: float
    per_epoch_s: float
    epochs: int
    samples: int
    val_acc: float

    @property
    def throughput(self) -> float:
        return self.samples * self.epochs / (self.per_epoch_s * self.epochs)


def experiment(workload: str) -> tuple[Experiment, object]:
    args, model, epochs = WORKLOADS[workload]
    exp = Experiment(
        name=f"bench_{workload}", dataset="mnist1d", model=model,
        recipe=Recipe(optimizer="adam", lr=0.01, batch_size=100, epochs=epochs),
    )
    return exp, build_mnist1d(args, seed=0)


def plain_loop(workload: str, exp: Experiment, splits) -> Timing:
    """The baseline: what a careful person writes by hand, no framework."""
    from runyard.models import build_model

    t0 = time.perf_counter()
    info = dataset_info("mnist1d")
    torch.manual_seed(0)
    net = build_model(exp.model, info.input_shape, info.num_outputs)
    bs = exp.recipe.batch_size
    t1 = time.perf_counter()
    acc = _hand_loop(net, net, exp, splits, lambda _, n: torch.randperm(n).split(bs))
    t2 = time.perf_counter()
    return Timing(workload, "a plain loop", t2 - t0, t1 - t0, (t2 - t1) / exp.recipe.epochs,
                  exp.recipe.epochs, len(splits.y_train), acc)


def _hand_loop(net, plain_net, exp: Experiment, splits, batches) -> float:
    """The hand-written training of (a) and (e): Adam over the index batches that
    ``batches(epoch, n)`` gives, validating ``plain_net`` after each epoch; the last val acc."""
    opt = torch.optim.Adam(net.parameters(), lr=exp.recipe.lr)
    x, y = torch.tensor(splits.x_train), torch.tensor(splits.y_train)
    xv, yv = torch.tensor(splits.x_val), torch.tensor(splits.y_val)
    for epoch in range(exp.recipe.epochs):
        net.train()
        for idx in batches(epoch, len(y)):
            loss = torch.nn.functional.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
        plain_net.eval()
        with torch.no_grad():
            acc = (plain_net(xv).argmax(1) == yv).float().mean().item()
    return acc


def plain_lightning(workload: str, exp: Experiment, splits) -> Timing:
    import lightning.pytorch as pl

    from runyard.data.loaders import SplitsDataModule
    from runyard.execution.worker import _quiet_lightning, build_system, build_trainer

    t0 = time.perf_counter()
    _quiet_lightning()
    info = dataset_info("mnist1d")
    pl.seed_everything(0, verbose=False)
    system = build_system(exp, {"task": info.task, "input_shape": info.input_shape,
                                "num_outputs": info.num_outputs})
    data = SplitsDataModule(splits, exp.recipe.batch_size, seed=0)
    trainer = build_trainer(exp, [], accelerator="cpu", devices=1)
    t1 = time.perf_counter()
    trainer.fit(system, datamodule=data)
    t2 = time.perf_counter()
    return Timing(workload, "b plain Lightning", t2 - t0, t1 - t0, (t2 - t1) / exp.recipe.epochs,
                  exp.recipe.epochs, len(splits.y_train), float(trainer.callback_metrics["val/acc"]))


def native_ddp(workload: str, exp: Experiment, splits, workers: int = 2) -> Timing:
    """The plain loop data-parallel by hand: ``workers`` processes, one thread each, each
    taking its share of every global batch; gradients all-reduced by DDP over gloo."""
    import multiprocessing

    from runyard.execution.cluster import free_ports

    (port,) = free_ports(1, "127.0.0.1")
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    t0 = time.perf_counter()
    procs = [ctx.Process(target=_ddp_rank, args=(rank, workers, port, exp, splits, results))
             for rank in range(workers)]
    for p in procs:
        p.start()
    train_s, acc = results.get(timeout=3600)
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"native DDP rank exited with {p.exitcode}")
    wall = time.perf_counter() - t0
    return Timing(workload, f"e native DDP {workers} processes", wall, wall - train_s,
                  train_s / exp.recipe.epochs, exp.recipe.epochs, len(splits.y_train), acc)


def _ddp_rank(rank: int, world: int, port: int, exp: Experiment, splits, results) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from runyard.models import build_model

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    info = dataset_info("mnist1d")
    torch.manual_seed(0)
    net = DistributedDataParallel(build_model(exp.model, info.input_shape, info.num_outputs))
    bs, share = exp.recipe.batch_size, exp.recipe.batch_size // world

    def batches(epoch: int, n: int):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))  # same on every rank
        return [perm[i + rank * share : i + (rank + 1) * share] for i in range(0, n - bs + 1, bs)]

    dist.barrier()
    t1 = time.perf_counter()
    acc = _hand_loop(net, net.module, exp, splits, batches)
    dist.barrier()
    if rank == 0:
        results.put((time.perf_counter() - t1, acc))
    dist.destroy_process_group()


def runyard_ray(workload: str, exp: Experiment, splits, workers: int, store: Path) -> Timing:
    """The real runyard path: Ray Train workers, rank-0 MLflow logging, final checkpoint."""
    import mlflow

    from runyard.execution import ray_session
    from runyard.execution.trainer import fit

    cpus = int(ray_session.local_resources()["CPU"])  # as Ray counts them (a CPU quota too)
    ray_params = RayParams(num_workers=workers, cpus_per_worker=max(1, cpus // workers))
    t0 = time.time()
    ray_session.connect(ray_params, where="bench")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp_obj = client.get_experiment_by_name(exp.name)
    exp_id = exp_obj.experiment_id if exp_obj else client.create_experiment(
        exp.name, artifact_location=(store / "artifacts").as_uri())
    run = client.create_run(exp_id, run_name=f"{workers}w")
    result = fit(exp, dataset_info("mnist1d"), splits, ray_params, seed=0, tracking_uri=uri,
                 run_id=run.info.run_id, storage_path=store / "ray")
    client.set_terminated(run.info.run_id)
    t1 = time.time()
    m = result.metrics
    train_s = m["fit_end"] - m["fit_start"]
    return Timing(workload, f"{'c' if workers == 1 else 'd'} runyard {workers} worker(s)", t1 - t0,
                  (t1 - t0) - train_s, train_s / exp.recipe.epochs, exp.recipe.epochs,
                  len(splits.y_train), float(m["val/acc"]))


def run(workloads: list[str], out: Path, console) -> list[Timing]:
    from rich.table import Table

    timings: list[Timing] = []
    with tempfile.TemporaryDirectory() as tmp:
        for workload in workloads:
            console.print(f"[bold]{workload}[/bold]: generating data")
            exp, splits = experiment(workload)
            for variant in (plain_loop, plain_lightning):
                console.print(f"  {variant.__name__}")
                timings.append(variant(workload, exp, splits))
            for workers in (1, 2):
                console.print(f"  runyard, {workers} worker(s)")
                timings.append(runyard_ray(workload, exp, splits, workers, Path(tmp)))
            console.print("  native DDP, 2 processes")
            timings.append(native_ddp(workload, exp, splits))

    table = Table(title="runyard bench (ratios against the plain loop of the same workload)")
    for col in ("workload", "variant", "wall s", "start-up s", "s/epoch", "x wall", "x s/epoch",
                "samples/s", "val acc"):
        table.add_column(col, justify="left" if col in ("workload", "variant") else "right")
    rows = []
    for t in timings:
        base = next(b for b in timings if b.workload == t.workload and b.variant.startswith("a "))
        row = {**asdict(t), "throughput": t.throughput, "wall_ratio": t.wall_s / base.wall_s,
               "per_epoch_ratio": t.per_epoch_s / base.per_epoch_s}
        rows.append(row)
        table.add_row(t.workload, t.variant, f"{t.wall_s:.1f}", f"{t.startup_s:.1f}",
                      f"{t.per_epoch_s:.3f}", f"{row['wall_ratio']:.2f}", f"{row['per_epoch_ratio']:.2f}",
                      f"{t.throughput:,.0f}", f"{t.val_acc:.3f}")
    console.print(table)
    for workload in workloads:
        one, two = (next(r for r in rows if r["workload"] == workload and r["variant"].startswith(v))
                    for v in ("c ", "d "))
        native = next(r for r in rows if r["workload"] == workload and r["variant"].startswith("e "))
        console.print(f"{workload}: 2 workers deliver {two['throughput'] / one['throughput']:.2f}x "
                      f"the training throughput of 1; runyard's 2-worker epoch takes "
                      f"{two['per_epoch_s'] / native['per_epoch_s']:.2f}x native DDP's")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"cpus": os.cpu_count(), "results": rows}, indent=2) + "\n")
    return timings
