"""Driver side of a training: ship the data, start Ray Train, return the final weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from runyard.config import Experiment, RayParams
from runyard.data import DatasetInfo
from runyard.data.splits import Splits
from runyard.errors import RunyardError
from runyard.execution.checkpoints import MODEL_FILE
from runyard.models import is_lightning_model
from runyard.tracking.outage import TrackingUnavailable


def _train_loop(cfg: dict[str, Any]) -> None:
    # Imported on the worker only: the driver never pays for importing Lightning.
    from runyard.execution.worker import train_loop

    train_loop(cfg)


@dataclass
class FitResult:
    state_dict: dict[str, torch.Tensor]
    metrics: dict[str, Any]


def fit(
    exp: Experiment,
    info: DatasetInfo,
    splits: Splits,
    ray_params: RayParams,
    *,
    seed: int,
    tracking_uri: str,
    run_id: str,
    storage_path: Path | str,
    flush_every_s: float = 5.0,
    retry_s: float = 120.0,
    init_state: dict[str, torch.Tensor] | None = None,
    warm: bool = True,
) -> FitResult:
    """Train ``exp`` on Ray Train workers; rank 0 logs epochs to MLflow run ``run_id``.

    The Ray run is named after the MLflow run, so re-running with the same
    ``run_id`` (``--resume``) continues from that run's last checkpoint. A tracking
    server that stays down longer than ``retry_s`` fails the training in one line.
    ``init_state``: weights the model starts from (a pipeline's ``init:``), shipped
    once through the object store. ``warm``: a 1-worker training on the project's local
    Ray runs on its warm trainer (``execution.warm``); False: always Ray Train.
    """
    import ray

    from runyard.data import streaming
    from runyard.execution import warm as warm_trainer
    from runyard.models import user_code_paths

    # A streamed dataset (files: stream: true) needs Ray Train's datasets=: never the warm trainer.
    stream = streaming.streamed(splits)
    local_storage = "://" not in str(storage_path)
    if stream is None and warm and local_storage and warm_trainer.eligible(ray_params, user_code_paths(exp.model_name)):
        cfg = {
            "experiment": exp.model_dump(mode="json", by_alias=True), "dataset_info": info.as_config(),
            "data_ref": ray.put(splits), "seed": seed, "cpus_per_worker": ray_params.cpus_per_worker,
            "use_gpu": False, "tracking_uri": tracking_uri, "run_id": run_id, "flush_every_s": flush_every_s,
            "retry_s": retry_s, "checkpoint_every": ray_params.checkpoint_every,
            "init_ref": None if init_state is None else ray.put(init_state),
        }
        storage_dir = str(Path(str(storage_path)).resolve() / f"{exp.name}-{run_id}")
        result = warm_trainer.fit_warm(cfg, ray_params.cpus_per_worker, storage_dir)
        if result is not None:
            return check_logged(exp, FitResult(result["state"], result["metrics"]))
        # The warm trainer is busy with another command's training: this one takes Ray Train.
    stream_cfg = {} if stream is None else {
        "stream": streaming.worker_config(stream, exp.recipe, f"{exp.name}: "),
        "datasets": streaming.datasets(stream), "dataset_config": streaming.data_config()}
    trainer = torch_trainer(
        exp, info, None if stream else ray.put(splits), ray_params, seed=seed, name=f"{exp.name}-{run_id}",
        storage_path=storage_path, **stream_cfg,
        tracking_uri=tracking_uri, run_id=run_id, flush_every_s=flush_every_s,
        retry_s=retry_s, checkpoint_every=ray_params.checkpoint_every,
        init_ref=None if init_state is None else ray.put(init_state),
    )
    result = trainer.fit()
    if result.error is not None:
        raise _tracking_outage(result.error) or result.error
    if result.checkpoint is None:
        raise RunyardError(f"{exp.name}: training ended without a final checkpoint")
    with result.checkpoint.as_directory() as d:
        state = torch.load(Path(d) / MODEL_FILE, map_location="cpu", weights_only=True)
    return check_logged(exp, FitResult(state, dict(result.metrics or {})))


def check_logged(exp: Experiment, result: FitResult) -> FitResult:
    """A user's LightningModule logs its metrics itself: one that never logged the
    experiment's ``optimized_metric`` fails here, in one line, not later in registration."""
    if exp.optimized_metric not in result.metrics and is_lightning_model(exp.model_name):
        cls = exp.model_name.split(":")[-1]
        raise RunyardError(
            f"{exp.name}: {exp.model_name} logged no {exp.optimized_metric!r} (the experiment's optimized_metric): "
            f"{cls} must log it, e.g. self.log({exp.optimized_metric!r}, ...) in its validation_step"
        )
    return result


def _tracking_outage(error: BaseException) -> RunyardError | None:
    """The one-line error of a worker that gave up on the tracking server, if that is
    why the training failed (Ray wraps it with the worker's traceback)."""
    for failure in (getattr(error, "worker_failures", None) or {}).values():
        if isinstance(failure, TrackingUnavailable):
            return TrackingUnavailable(str(failure).strip().splitlines()[-1])
    return None


def torch_trainer(
    exp: Experiment, info: DatasetInfo, data_ref: Any, ray_params: RayParams, *, seed: int,
    name: str, storage_path: Path | str, callbacks: tuple = (), datasets: dict | None = None,
    dataset_config: Any = None, **worker_cfg: Any,
):
    """A TorchTrainer running ``worker.train_loop`` on ``ray_params.num_workers`` workers.

    ``data_ref`` is an object-store reference to the splits: one copy per node, not per
    worker. ``worker_cfg`` says where epochs go (an MLflow run, or Ray Tune).
    ``datasets``/``dataset_config``: Ray Datasets streamed to the workers instead
    (``runyard.data.streaming``; ``data_ref`` is None then).
    """
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    config = {
        "experiment": exp.model_dump(mode="json", by_alias=True),
        "dataset_info": info.as_config(),
        "data_ref": data_ref,
        "seed": seed,
        "cpus_per_worker": ray_params.cpus_per_worker,
        "use_gpu": ray_params.use_gpu,
        **worker_cfg,
    }
    return TorchTrainer(
        _train_loop,
        train_loop_config=config,
        scaling_config=ScalingConfig(
            num_workers=ray_params.num_workers,
            use_gpu=ray_params.use_gpu,
            resources_per_worker={"CPU": ray_params.cpus_per_worker,
                                  **ray_params.resources_per_worker},
            placement_strategy=ray_params.placement_strategy,
        ),
        **({"datasets": datasets, "dataset_config": dataset_config} if datasets else {}),
        run_config=RunConfig(
            name=name,
            storage_path=str(storage_path),
            failure_config=FailureConfig(max_failures=ray_params.max_failures),
            checkpoint_config=CheckpointConfig(num_to_keep=2),
            callbacks=list(callbacks),
        ),
    )
