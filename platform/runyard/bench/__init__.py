"""`runyard bench`: what orchestration costs, measured side by side in one process.

Six ways to train the same model on the same data:
  (a) a plain PyTorch loop (the baseline every ratio is against),
  (b) plain Lightning, same system and data module, no Ray,
  (c) runyard through Ray Train with 1 worker holding every CPU,
  (d) runyard through Ray Train with 2 workers (DDP over gloo),
  (e) native DDP: the plain loop in 2 processes (torch.distributed, gloo), no Ray:
      the baseline for (d), as Ray's own gate compares Ray Train with native DDP,
  (w) runyard with 1 worker on the project's warm local Ray and warm trainer
      (``execution.warm``: no Ray Train processes, torch and Lightning imported once).
Every variant validates once per epoch, like runyard does.

One run of a variant on a small shared machine can be off by 3x, so a single number
means little. The bench therefore
  - pins torch's threads: (a) and (b) run on as many threads as (c)'s single worker
    holds CPUs; (d)'s workers and (e)'s processes each on that count / 2;
  - warms up: one untimed 1-epoch run of every variant first (imports, Ray's start,
    the page cache), and the time per epoch leaves out each run's first epoch;
  - repeats every variant, interleaved (a b c d e w a b c d e w ...), so that no variant
    always runs first or right after the same neighbour;
  - reports the best and the median of the repeats and their spread,
    (max - min) / median; a variant whose spread exceeds ``SPREAD_LIMIT`` is flagged.
Wall time is split into start-up (everything before the training's first step:
process and Ray Train start, imports, data shipping), the training itself (the first
epoch, then the rest) and the end (final checkpoint, shutting the workers down).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

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
# Repeats of each variant when ``run`` is not told: `large` takes ~5x as long per round.
DEFAULT_REPEAT = {"reference": 3, "large": 2}
# A variant whose repeats spread more than this, (max - min) / median, is flagged as noise.
SPREAD_LIMIT = 0.20
WARMUP_EPOCHS = 1


@dataclass
class Timing:
    """One run of one variant. ``round``: -1 for the untimed warm-up, else 0, 1, ..."""

    workload: str
    variant: str
    wall_s: float
    startup_s: float
    first_epoch_s: float
    per_epoch_s: float  # the mean of the epochs after the first (the first alone if there is one)
    end_s: float
    epochs: int
    samples: int
    val_acc: float
    threads: int  # torch's intra-op threads per process, as the training ran with
    round: int = 0


def _timing(workload: str, variant: str, t0: float, fit_start: float, epoch_ends: list[float],
            t_end: float, samples: int, acc: float, threads: int) -> Timing:
    """A Timing from clock readings: the variant's start, its training's start, the end of
    each epoch (after its validation) and the variant's end. What follows the last epoch
    (Lightning's teardown, the final checkpoint, stopping the workers) is the end."""
    fit_end = epoch_ends[-1]
    first = epoch_ends[0] - fit_start
    rest = (fit_end - epoch_ends[0]) / (len(epoch_ends) - 1) if len(epoch_ends) > 1 else first
    return Timing(workload, variant, t_end - t0, fit_start - t0, first, rest, t_end - fit_end,
                  len(epoch_ends), samples, acc, threads)


# ----------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class Stats:
    best: float
    median: float
    worst: float
    spread: float | None  # (worst - best) / median; None with fewer than 2 repeats
    n: int


def stats(values: Iterable[float]) -> Stats:
    """Best (the smallest: every measure here is a time), median and spread of the repeats."""
    v = sorted(values)
    if not v:
        raise ValueError("no values")
    median = statistics.median(v)
    spread = (v[-1] - v[0]) / median if len(v) > 1 and median > 0 else None
    return Stats(v[0], median, v[-1], spread, len(v))


def noisy(s: Stats, limit: float = SPREAD_LIMIT) -> bool:
    """Whether the repeats spread too far for their best or median to be trusted."""
    return s.spread is not None and s.spread > limit


def summarise(timings: list[Timing], limit: float = SPREAD_LIMIT) -> list[dict[str, Any]]:
    """One row per (workload, variant) over its timed repeats, with ratios against the plain
    loop of the same workload (best against best, median against median)."""
    groups: dict[tuple[str, str], list[Timing]] = {}
    for t in timings:
        if t.round >= 0:
            groups.setdefault((t.workload, t.variant), []).append(t)
    rows = []
    for (workload, variant), ts in groups.items():
        row: dict[str, Any] = {"workload": workload, "variant": variant, "threads": ts[0].threads,
                               "repeats": len(ts), "epochs": ts[0].epochs}
        for key in ("wall_s", "startup_s", "first_epoch_s", "per_epoch_s", "end_s"):
            row[key] = asdict(stats(getattr(t, key) for t in ts))
        row["val_acc"] = statistics.median(t.val_acc for t in ts)
        row["throughput"] = ts[0].samples / row["per_epoch_s"]["median"]
        row["noisy"] = [k for k in ("wall_s", "per_epoch_s") if noisy(Stats(**row[k]), limit)]
        rows.append(row)
    for row in rows:
        base = next((b for b in rows if b["workload"] == row["workload"] and b["variant"].startswith("a ")), None)
        for key in ("wall_s", "per_epoch_s"):
            row[key.replace("_s", "_ratio")] = None if base is None else {
                m: row[key][m] / base[key][m] for m in ("best", "median")}
    return rows


# ----------------------------------------------------------------------------- the variants


def experiment(workload: str) -> tuple[Experiment, object]:
    args, model, epochs = WORKLOADS[workload]
    exp = Experiment(
        name=f"bench_{workload}", dataset="mnist1d", model=model,
        recipe=Recipe(optimizer="adam", lr=0.01, batch_size=100, epochs=epochs),
    )
    return exp, build_mnist1d(args, seed=0)


def with_epochs(exp: Experiment, epochs: int) -> Experiment:
    return exp.model_copy(update={"recipe": exp.recipe.model_copy(update={"epochs": epochs})})


class pinned_threads:
    """torch's intra-op threads set to ``n`` inside the block, restored after it."""

    def __init__(self, n: int):
        self.n = max(1, int(n))

    def __enter__(self):
        self.before = torch.get_num_threads()
        torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        torch.set_num_threads(self.before)


def plain_loop(workload: str, exp: Experiment, splits, threads: int) -> Timing:
    """The baseline: what a careful person writes by hand, no framework, on ``threads`` threads."""
    from runyard.models import build_model

    with pinned_threads(threads):
        t0 = time.time()
        info = dataset_info("mnist1d")
        torch.manual_seed(0)
        net = build_model(exp.model, info.input_shape, info.num_outputs)
        bs = exp.recipe.batch_size
        acc, fit_start, ends, ran_with = _hand_loop(net, net, exp, splits, lambda _, n: torch.randperm(n).split(bs))
        return _timing(workload, "a plain loop", t0, fit_start, ends, time.time(), len(splits.y_train), acc,
                       ran_with)


def _hand_loop(net, plain_net, exp: Experiment, splits, batches) -> tuple[float, float, list[float], int]:
    """The hand-written training of (a) and (e): Adam over the index batches that
    ``batches(epoch, n)`` gives, validating ``plain_net`` after each epoch. Returns the
    last val acc, the training's start, each epoch's end and torch's thread count."""
    opt = torch.optim.Adam(net.parameters(), lr=exp.recipe.lr)
    x, y = torch.tensor(splits.x_train), torch.tensor(splits.y_train)
    xv, yv = torch.tensor(splits.x_val), torch.tensor(splits.y_val)
    threads = torch.get_num_threads()
    fit_start, ends = time.time(), []
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
        ends.append(time.time())
    return acc, fit_start, ends, threads


def plain_lightning(workload: str, exp: Experiment, splits, threads: int) -> Timing:
    import lightning.pytorch as pl

    from runyard.data.loaders import SplitsDataModule
    from runyard.execution.lightning import build_system, build_trainer, quiet_lightning

    class EpochClock(pl.Callback):
        # After validation, as runyard's epoch logger: Lightning validates before this hook.
        def __init__(self):
            self.ends: list[float] = []

        def on_train_epoch_end(self, trainer, pl_module):
            self.ends.append(time.time())

    with pinned_threads(threads):
        t0 = time.time()
        quiet_lightning()
        info = dataset_info("mnist1d")
        pl.seed_everything(0, verbose=False)
        system = build_system(exp, {"task": info.task, "input_shape": info.input_shape,
                                    "num_outputs": info.num_outputs})
        data = SplitsDataModule(splits, exp.recipe.batch_size, seed=0)
        clock = EpochClock()
        trainer = build_trainer(exp, [clock], accelerator="cpu", devices=1)
        fit_start = time.time()
        trainer.fit(system, datamodule=data)
        ran_with = torch.get_num_threads()
        return _timing(workload, "b plain Lightning", t0, fit_start, clock.ends, time.time(),
                       len(splits.y_train), float(trainer.callback_metrics["val/acc"]), ran_with)


def native_ddp(workload: str, exp: Experiment, splits, workers: int = 2, threads: int = 1) -> Timing:
    """The plain loop data-parallel by hand: ``workers`` processes, ``threads`` threads each,
    each taking its share of every global batch; gradients all-reduced by DDP over gloo."""
    import multiprocessing
    import queue

    from runyard.execution.cluster import free_ports

    (port,) = free_ports(1, "127.0.0.1")
    ctx = multiprocessing.get_context("spawn")
    results = ctx.Queue()
    t0 = time.time()
    procs = [ctx.Process(target=_ddp_rank, args=(rank, workers, port, exp, splits, threads, results))
             for rank in range(workers)]
    for p in procs:
        p.start()
    while True:
        try:
            acc, fit_start, ends, ran_with = results.get(timeout=1)
            break
        except queue.Empty:
            # A rank that died leaves the others waiting in gloo for half an hour: stop them.
            dead = next((p for p in procs if p.exitcode not in (None, 0)), None)
            if dead is not None:
                for p in procs:
                    p.kill()
                raise RuntimeError(f"native DDP rank exited with {dead.exitcode}") from None
    for p in procs:
        p.join()
        if p.exitcode != 0:
            raise RuntimeError(f"native DDP rank exited with {p.exitcode}")
    return _timing(workload, f"e native DDP {workers} processes", t0, fit_start, ends, time.time(),
                   len(splits.y_train), acc, ran_with)


def _ddp_rank(rank: int, world: int, port: int, exp: Experiment, splits, threads: int, results) -> None:
    import torch.distributed as dist
    from torch.nn.parallel import DistributedDataParallel

    from runyard.models import build_model

    torch.set_num_threads(threads)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    info = dataset_info("mnist1d")
    torch.manual_seed(0)
    net = DistributedDataParallel(build_model(exp.model, info.input_shape, info.num_outputs))
    bs, share = exp.recipe.batch_size, exp.recipe.batch_size // world

    def batches(epoch: int, n: int):
        perm = torch.randperm(n, generator=torch.Generator().manual_seed(epoch))  # same on every rank
        return [perm[i + rank * share : i + (rank + 1) * share] for i in range(0, n - bs + 1, bs)]

    dist.barrier()
    acc, fit_start, ends, ran_with = _hand_loop(net, net.module, exp, splits, batches)
    dist.barrier()
    if rank == 0:
        results.put((acc, fit_start, ends, ran_with))
    dist.destroy_process_group()


def runyard_ray(workload: str, exp: Experiment, splits, workers: int, store: Path, cpus: int,
                warm: bool = False) -> Timing:
    """The real runyard path: Ray Train workers, rank-0 MLflow logging, final checkpoint;
    ``warm``: 1 worker on the project's warm trainer instead (``execution.warm``).

    Each worker sets torch's threads to the CPUs it holds (``cpus // workers``)."""
    import mlflow

    from runyard.execution import ray_session
    from runyard.execution.trainer import fit

    ray_params = RayParams(num_workers=workers, cpus_per_worker=max(1, cpus // workers))
    t0 = time.time()
    ray_session.connect(ray_params, where="bench")
    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    exp_obj = client.get_experiment_by_name(exp.name)
    exp_id = exp_obj.experiment_id if exp_obj else client.create_experiment(
        exp.name, artifact_location=(store / "artifacts").as_uri())
    run_id = client.create_run(exp_id, run_name=f"{workers}w").info.run_id
    result = fit(exp, dataset_info("mnist1d"), splits, ray_params, seed=0, tracking_uri=uri,
                 run_id=run_id, storage_path=store / "ray", warm=warm)
    client.set_terminated(run_id)
    t_end = time.time()
    m = result.metrics
    # Rank 0's epoch logger stamps each epoch's metrics when the epoch (and its validation) ends.
    history = sorted(client.get_metric_history(run_id, "train/lr"), key=lambda h: h.step)
    ends = [h.timestamp / 1000 for h in history]
    if len(ends) != exp.recipe.epochs:  # no per-epoch stamps: spread the training evenly
        n = exp.recipe.epochs
        ends = [m["fit_start"] + (m["fit_end"] - m["fit_start"]) * (i + 1) / n for i in range(n)]
    variant = f"{'c' if workers == 1 else 'd'} runyard {workers} worker{'s' if workers > 1 else ''}"
    if warm:
        variant = "w runyard 1 worker, warm trainer"
    return _timing(workload, variant, t0, m["fit_start"], ends, t_end, len(splits.y_train),
                   float(m["val/acc"]), int(ray_params.cpus_per_worker))


# ----------------------------------------------------------------------------- the run


def variants(cpus: int, store: Path) -> list[Callable[[str, Experiment, Any], Timing]]:
    """(a)-(e) and (w), each pinned: (a) (b) (c) (w) on ``cpus`` threads, (d) (e) on ``cpus // 2`` per process."""
    half = max(1, cpus // 2)
    return [
        lambda w, e, s: plain_loop(w, e, s, threads=cpus),
        lambda w, e, s: plain_lightning(w, e, s, threads=cpus),
        lambda w, e, s: runyard_ray(w, e, s, 1, store, cpus),
        lambda w, e, s: runyard_ray(w, e, s, 2, store, cpus),
        lambda w, e, s: native_ddp(w, e, s, workers=2, threads=half),
        lambda w, e, s: runyard_ray(w, e, s, 1, store, cpus, warm=True),
    ]


def measure(workload: str, exp: Experiment, splits, runs: list[Callable], repeat: int,
            warmup: bool = True, say: Callable[[str], None] = lambda _: None) -> list[Timing]:
    """Every variant once untimed (1 epoch), then ``repeat`` rounds of all of them in turn."""
    timings = []
    if warmup:
        short = with_epochs(exp, WARMUP_EPOCHS)
        for v in runs:
            t = v(workload, short, splits)
            say(f"  warm-up {t.variant}: {t.wall_s:.1f} s")
            t.round = -1
            timings.append(t)
    for r in range(repeat):
        for v in runs:
            t = v(workload, exp, splits)
            t.round = r
            say(f"  round {r + 1}/{repeat} {t.variant}: {t.wall_s:.1f} s")
            timings.append(t)
    return timings


def targets(rows: list[dict], warmups: list[Timing]) -> list[dict[str, Any]]:
    """The product's goals, each with what this run measured against it."""
    def row(workload, prefix):
        return next((r for r in rows if r["workload"] == workload and r["variant"].startswith(prefix)), None)

    out = []
    for workload in dict.fromkeys(r["workload"] for r in rows):
        a, c, d, e, w = (row(workload, p) for p in ("a ", "c ", "d ", "e ", "w "))
        if workload == "reference" and a and c:
            goal = "reference workload, 1 worker, warm: wall <= 1.3x the plain loop's wall + 5 s"
            limit = {m: 1.3 * a["wall_s"][m] + 5 for m in ("best", "median")}
            if w:
                out.append({"goal": goal, "path": "warm (the project's local Ray and its warm trainer)",
                            "measured": {m: w["wall_s"][m] for m in ("best", "median")}, "limit_s": limit,
                            "met": w["wall_s"]["median"] <= limit["median"]})
            else:  # a run without variant (w)
                out.append({"goal": goal, "path": "warm (warm Ray and warm workers)", "measured": None,
                            "limit_s": limit, "met": None, "note": "warm path: not yet measured (no variant w)"})
            out.append({"goal": goal, "path": "Ray up, Ray Train workers started by the training (the timed repeats)",
                        "measured": {m: c["wall_s"][m] for m in ("best", "median")}, "limit_s": limit,
                        "met": c["wall_s"]["median"] <= limit["median"]})
            # The first runyard warm-up of the process started Ray and imported Ray Train: a cold start-up.
            cold = next((t for t in warmups if t.variant.startswith("c ")), None)
            if cold is not None and cold.workload == workload:
                est = cold.startup_s + c["wall_s"]["median"] - c["startup_s"]["median"]
                out.append({"goal": goal, "path": "cold (the process's first training, Ray started by it)",
                            "measured": {"median": est}, "limit_s": limit, "met": est <= limit["median"],
                            "note": f"estimated: the warm-up's start-up {cold.startup_s:.1f} s + the "
                                    "repeats' median training and end"})
        if c and d:
            x = {m: c["per_epoch_s"][m] / d["per_epoch_s"][m] for m in ("best", "median")}
            out.append({"goal": f"{workload}: 2 workers >= 1.6x the training throughput of 1 (s/epoch)",
                        "measured": x, "limit": ">= 1.60x", "met": x["median"] >= 1.6})
        if d and e:
            x = {m: d["per_epoch_s"][m] / e["per_epoch_s"][m] for m in ("best", "median")}
            out.append({"goal": f"{workload}: runyard's 2-worker epoch <= 1.15x native DDP's (Ray Train's gate)",
                        "measured": x, "limit": "<= 1.15x", "met": x["median"] <= 1.15})
    return out


PIPELINE_EFFICIENCY_NOTE = ("pipeline efficiency (seconds inside fits / wall of a `dvc repro`): "
                            "`runyard bench -w pipeline` (bench/pipeline.py)")


def run(workloads: list[str], out: Path, console, repeat: int | None = None, warmup: bool = True,
        spread_limit: float = SPREAD_LIMIT) -> dict[str, Any]:
    """Time (a)-(e) and (w) on each workload, print the tables and the goals, write ``out``.

    ``repeat``: timed runs of every variant (default: ``DEFAULT_REPEAT`` of the workload);
    ``warmup``: one untimed 1-epoch run of every variant first; ``spread_limit``: the spread,
    (max - min) / median, above which a variant is flagged as noise."""
    from runyard.execution import ray_session

    # (c)'s single worker holds every CPU Ray counts (a CPU quota too); everything is pinned to it.
    cpus = int(ray_session.local_resources()["CPU"])
    timings: list[Timing] = []
    repeats = {w: repeat or DEFAULT_REPEAT.get(w, 3) for w in workloads}
    with tempfile.TemporaryDirectory() as tmp:
        runs = variants(cpus, Path(tmp))
        for workload in workloads:
            console.print(f"[bold]{workload}[/bold]: generating data; {repeats[workload]} round(s) of a-e, w"
                          f"{' after a warm-up' if warmup else ''}")
            exp, splits = experiment(workload)
            timings += measure(workload, exp, splits, runs, repeats[workload], warmup, console.print)

    rows = summarise(timings, spread_limit)
    warmups = [t for t in timings if t.round < 0]
    goals = targets(rows, warmups)
    for workload in workloads:
        console.print(_table(workload, [r for r in rows if r["workload"] == workload], spread_limit))
    console.print(f"torch threads: (a) (b) (c) {cpus}, (d) (e) {max(1, cpus // 2)} per process ({cpus} CPUs "
                  "as Ray counts them); order a b c d e w per round; s/epoch leaves out each run's first epoch; "
                  f"spread = (max - min) / median, flagged above {spread_limit:.0%}")
    console.print(_goal_table(goals))
    console.print(PIPELINE_EFFICIENCY_NOTE)
    report = {
        "cpus": cpus,
        "threads": {"a": cpus, "b": cpus, "c": cpus, "d": max(1, cpus // 2), "e": max(1, cpus // 2), "w": cpus},
        "repeat": repeats, "warmup_epochs": WARMUP_EPOCHS if warmup else 0, "spread_limit": spread_limit,
        "order": "a b c d e w, once per round", "summary": rows, "targets": goals,
        "pipeline_efficiency_note": PIPELINE_EFFICIENCY_NOTE,
        "warmup": [asdict(t) for t in warmups], "repeats": [asdict(t) for t in timings if t.round >= 0],
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    return report


def _table(workload: str, rows: list[dict], limit: float):
    from rich import box
    from rich.table import Table

    table = Table(title=f"runyard bench: {workload} (best/median of the repeats; x: against the plain loop)",
                  box=box.SIMPLE_HEAD, pad_edge=False, collapse_padding=True)
    # thr: torch threads per process; n: repeats; spread: (max - min) / median; acc: val acc.
    for col in ("variant", "thr", "n", "wall s", "spread", "start-up s", "end s", "s/epoch", "spread",
                "x wall", "x epoch", "acc", ""):
        table.add_column(col, justify="left" if col in ("variant", "") else "right", no_wrap=True)

    def pair(s: dict, fmt: str) -> str:
        return f"{s['best']:{fmt}}/{s['median']:{fmt}}"

    def spread(s: dict) -> str:
        if s["spread"] is None:
            return "-"
        text = f"{s['spread']:.0%}"
        return f"[red]{text}[/red]" if s["spread"] > limit else text

    def ratio(r: dict, key: str) -> str:
        return "-" if r[key] is None else f"{r[key]['best']:.2f}/{r[key]['median']:.2f}"

    for r in rows:
        table.add_row(
            r["variant"], str(r["threads"]), str(r["repeats"]), pair(r["wall_s"], ".1f"), spread(r["wall_s"]),
            f"{r['startup_s']['median']:.1f}", f"{r['end_s']['median']:.1f}", pair(r["per_epoch_s"], ".3f"),
            spread(r["per_epoch_s"]), ratio(r, "wall_ratio"), ratio(r, "per_epoch_ratio"), f"{r['val_acc']:.3f}",
            "[red]noisy[/red]" if r["noisy"] else "")
    return table


def _goal_table(goals: list[dict]):
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="runyard bench: the product's goals")
    for col in ("goal", "measured (best / median)", "limit", ""):
        table.add_column(col, justify="left" if col in ("goal", "") else "right", no_wrap=col != "goal")
    for g in goals:
        verdict = {True: "[green]met[/green]", False: "[red]missed[/red]", None: "-"}[g["met"]]
        goal = escape("; ".join(g[k] for k in ("goal", "path", "note") if g.get(k)))
        m = g["measured"] or {}
        if "limit_s" in g:
            got = f"{m['best']:.1f}" if "best" in m else "-"
            got += f" / {m['median']:.1f} s" if "median" in m else " / -"
            limit = f"{g['limit_s']['best']:.1f} / {g['limit_s']['median']:.1f} s"
        else:
            got, limit = f"{m['best']:.2f} / {m['median']:.2f}x", g["limit"]
        table.add_row(goal, got, limit, verdict)
    return table
