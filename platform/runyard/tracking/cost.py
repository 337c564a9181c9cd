"""What a run cost: the wall seconds it trained, and the CPU cores and GPUs it held meanwhile.

``cost/core_seconds`` = fit wall seconds x the CPUs the run held (workers x CPUs each);
``cost/gpu_seconds`` likewise for GPUs (one per worker with ``ray.use_gpu``, or a
``GPU`` entry of ``resources_per_worker``). Held, not used: a core waiting on a data
loader costs what a busy one does, which is what a cluster bills. A search's parent
run carries the sum over its trials. MLflow's own ``system/*`` metrics
(``tracking.client``) say how busy the machine was meanwhile.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

WALL, CORE, GPU = "cost/wall_seconds", "cost/core_seconds", "cost/gpu_seconds"
KEYS = (WALL, CORE, GPU)


def cost(wall_s: float, workers: int, cpus_per_worker: float, gpus_per_worker: float = 0.0) -> dict[str, float]:
    """The cost metrics of ``workers`` workers each holding ``cpus_per_worker`` CPUs (and
    ``gpus_per_worker`` GPUs) for ``wall_s`` seconds."""
    if wall_s < 0 or workers < 0 or cpus_per_worker < 0 or gpus_per_worker < 0:
        raise ValueError(f"cost: negative input (wall {wall_s}, workers {workers}, "
                         f"cpus {cpus_per_worker}, gpus {gpus_per_worker})")
    return {WALL: wall_s, CORE: wall_s * workers * cpus_per_worker, GPU: wall_s * workers * gpus_per_worker}


def gpus_per_worker(ray_params) -> float:
    """GPUs one Ray Train worker holds under ``ray_params`` (a ``config.RayParams``)."""
    explicit = ray_params.resources_per_worker.get("GPU")
    if explicit is not None:
        return float(explicit)
    return 1.0 if ray_params.use_gpu else 0.0


def training_cost(final_metrics: Mapping[str, Any], ray_params) -> dict[str, float]:
    """A Ray Train fit's cost from its workers' final report (``fit_start``/``fit_end``,
    execution/worker.py) and the ``RayParams`` it ran under; {} if the report lacks them."""
    start, end = final_metrics.get("fit_start"), final_metrics.get("fit_end")
    if start is None or end is None:
        return {}
    return cost(max(0.0, float(end) - float(start)), ray_params.num_workers, ray_params.cpus_per_worker,
                gpus_per_worker(ray_params))


def log_training_cost(client, run_id: str, final_metrics: Mapping[str, Any], ray_params) -> dict[str, float]:
    """Log a training's cost (``training_cost``) to ``run_id``; return what was logged."""
    values = training_cost(final_metrics, ray_params)
    if values:
        from mlflow.entities import Metric

        # Stamped at the fit's end, so [stamp - wall, stamp] is when it trained (fit_intervals).
        end = int(float(final_metrics["fit_end"]) * 1000)
        client.log_batch(run_id, metrics=[Metric(k, v, end, 0) for k, v in values.items()])
    return values


def fit_interval(history) -> tuple[float, float] | None:
    """When a run trained, in unix seconds, from its ``cost/wall_seconds`` metric history
    (stamped at the fit's end); None if it has none."""
    if not history:
        return None
    last = max(history, key=lambda m: m.timestamp)
    return last.timestamp / 1000 - float(last.value), last.timestamp / 1000


def covered_seconds(intervals: Iterable[tuple[float, float]]) -> float:
    """Seconds covered by at least one of ``intervals``: trainings that overlap (a search's
    concurrent trials) count once."""
    total, end = 0.0, float("-inf")
    for start, stop in sorted(intervals):
        if stop > end:
            total += stop - max(start, end)
            end = stop
    return total


def total(costs: Iterable[Mapping[str, float]]) -> dict[str, float]:
    """The sum of several runs' cost metrics (a search's trials); keys none of them has are left out."""
    out: dict[str, float] = {}
    for c in costs:
        for key in KEYS:
            if key in c:
                out[key] = out.get(key, 0.0) + float(c[key])
    return out
