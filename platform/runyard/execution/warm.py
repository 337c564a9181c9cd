"""The warm trainer: a long-lived actor on the project's local Ray that runs 1-worker trainings.

A Ray Train training spawns a controller and a worker process (10-15 s on a small
machine, torch and Lightning imported each time) before its first step. On the
project's shared local Ray (``execution.local_ray``) a training of one CPU worker
runs instead in one detached actor that stays up between stages, with torch and
Lightning imported once. It runs the same loop as ``execution.worker`` (rank 0 of a
world of 1): the run id decided by the driver, epochs logged by
``MlflowEpochLogger``, checkpoints every ``ray.checkpoint_every`` epochs into the
run's storage directory (``--resume`` continues from there), the final weights back
to the driver.

Kept on Ray Train: several workers (DDP), ``max_failures > 0`` (Ray Train restarts
its worker group from the last checkpoint), GPUs, custom resources, the user's own
model code (shipped as ``py_modules``, which a warm process started earlier would
not have), and any Ray cluster.

Nothing leaks from one training into the next: each runs with the driver's working
directory and environment, and afterwards the actor restores its environment, working
directory, torch's thread count and determinism flags, ends any MLflow run left
active, and forgets modules imported from the project during the training. Seeds
are set at the start of every training exactly as the worker sets them.

The actor holds no CPU while idle (``num_cpus=0``, so a search can use every core);
a training reserves its CPUs in a placement group while it runs. Trainings on one
actor run one at a time. If the driver dies (killed, Ctrl-C), the training stops
at its next step.
"""

from __future__ import annotations

import contextlib
import os
import sys
import threading
import time
from pathlib import Path

from runyard.errors import RunyardError
from runyard.forkserver import code_fingerprint

NAME = "runyard-warm-trainer"
NAMESPACE = "runyard"
WARM_DIR = "warm"
"""Below the run's storage directory: the warm path's latest Lightning checkpoint."""
POLL_S = 0.5


def eligible(ray_params, code_paths) -> bool:
    """Whether a training with these settings runs on the warm trainer (else Ray Train)."""
    from runyard.execution import ray_session

    return bool(ray_session.shared_local() and _one_plain_worker(ray_params) and not code_paths)


def _one_plain_worker(ray_params) -> bool:
    """One CPU worker, no failures to survive, no custom resources: what the warm trainer runs."""
    return (ray_params.num_workers == 1 and not ray_params.use_gpu and ray_params.max_failures == 0
            and not ray_params.resources_per_worker)


class StopTraining(Exception):
    """The driver of this training is gone, or asked to stop."""


def _trainer_class():
    import ray

    @ray.remote
    class WarmTrainer:
        def __init__(self, fingerprint: str):
            self.fingerprint = fingerprint
            self.lock = threading.Lock()
            self.stops: set[str] = set()
            # Paid once per actor, not once per training.
            import lightning.pytorch  # noqa: F401
            import torch  # noqa: F401

            import runyard.execution.lightning  # noqa: F401
            import runyard.tracking.epoch_logger  # noqa: F401

        def info(self) -> dict:
            return {"pid": os.getpid(), "fingerprint": self.fingerprint}

        def stop(self, token: str) -> None:
            self.stops.add(token)

        def train(self, cfg: dict) -> dict:
            if not self.lock.acquire(blocking=False):
                return {"busy": True}
            try:
                with _isolated(cfg):
                    return _run(cfg, lambda: cfg["token"] in self.stops or not _alive(cfg["driver"]))
            finally:
                self.stops.discard(cfg["token"])
                self.lock.release()

    return WarmTrainer


def _alive(driver: tuple[int, float]) -> bool:
    import psutil

    pid, created = driver
    try:
        return abs(psutil.Process(pid).create_time() - created) < 1.0
    except psutil.Error:
        return False


class _isolated:
    """One training's process state: the driver's cwd and environment in; everything restored out."""

    def __init__(self, cfg: dict):
        self.cfg = cfg

    def __enter__(self):
        import torch

        self.env, self.cwd = dict(os.environ), os.getcwd()
        self.threads, self.deterministic = torch.get_num_threads(), torch.are_deterministic_algorithms_enabled()
        self.modules = set(sys.modules)
        # The driver's environment, but this process's own Ray settings (its connection to Ray).
        os.environ.clear()
        os.environ.update({k: v for k, v in self.cfg["env"].items() if not k.startswith("RAY_")})
        os.environ.update({k: v for k, v in self.env.items() if k.startswith("RAY_")})
        os.chdir(self.cfg["cwd"])
        return self

    def __exit__(self, *exc):
        import torch

        with contextlib.suppress(Exception):
            import mlflow

            while mlflow.active_run():
                mlflow.end_run()
        os.environ.clear()
        os.environ.update(self.env)
        os.chdir(self.cwd)
        torch.set_num_threads(self.threads)
        torch.use_deterministic_algorithms(self.deterministic)
        # Modules the training imported from the project (a user's data or model code): the
        # next training reads them afresh, as a new process would.
        project = self.cfg["cwd"].rstrip("/") + "/"
        for name in set(sys.modules) - self.modules:
            path = getattr(sys.modules.get(name), "__file__", None) or ""
            if path.startswith(project) and "/site-packages/" not in path and "/runyard/" not in path:
                sys.modules.pop(name, None)


def _run(cfg: dict, stop_asked) -> dict:
    """``execution.worker.train_loop`` for rank 0 of 1, without Ray Train."""
    import lightning.pytorch as pl
    import ray
    import torch

    from runyard.config import Experiment
    from runyard.data.loaders import SplitsDataModule
    from runyard.data.training import training_split
    from runyard.execution.checkpoints import CKPT_FILE
    from runyard.execution.lightning import build_system, build_trainer, distribution, network_of, quiet_lightning
    from runyard.tracking.epoch_logger import MlflowEpochLogger

    class Watch(pl.Callback):
        def __init__(self):
            self.next_check = 0.0

        def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
            now = time.monotonic()
            if now >= self.next_check:
                self.next_check = now + POLL_S
                if stop_asked():
                    raise StopTraining("the driver of this training is gone")

    class LocalCheckpoint(pl.Callback):
        """Every ``every`` epochs, the Lightning checkpoint into the run's storage (metrics flushed first)."""

        def __init__(self, every: int, path: Path, epoch_logger):
            self.every, self.path, self.epoch_logger = every, path, epoch_logger

        def on_train_epoch_end(self, trainer, pl_module):
            if (trainer.current_epoch + 1) % self.every:
                return
            self.epoch_logger.flush()
            tmp = self.path.with_suffix(".tmp")
            trainer.save_checkpoint(tmp)
            tmp.replace(self.path)

    quiet_lightning()
    # As the Ray Train worker does, in the same order: the same numbers follow.
    torch.set_num_threads(max(1, int(cfg["cpus_per_worker"])))
    pl.seed_everything(cfg["seed"], workers=True, verbose=False)

    exp = Experiment.model_validate(cfg["experiment"])
    init_state = ray.get(cfg["init_ref"]) if cfg.get("init_ref") is not None else None
    system = build_system(exp, cfg["dataset_info"], init_state)
    splits = training_split(ray.get(cfg["data_ref"]), exp.recipe, cfg["seed"], cfg["dataset_info"]["num_outputs"])
    data = SplitsDataModule(splits, max(1, exp.recipe.batch_size), cfg["seed"], 0, 1, augment=exp.recipe.augment,
                            shuffle=exp.recipe.shuffle)

    epoch_logger = MlflowEpochLogger(cfg["tracking_uri"], cfg["run_id"], cfg["flush_every_s"], cfg["retry_s"])
    callbacks: list[pl.Callback] = [Watch(), epoch_logger]
    ckpt_dir = Path(cfg["storage_dir"]) / WARM_DIR
    ckpt_file = ckpt_dir / CKPT_FILE
    if cfg["checkpoint_every"]:
        ckpt_dir.mkdir(parents=True, exist_ok=True)
        callbacks.append(LocalCheckpoint(cfg["checkpoint_every"], ckpt_file, epoch_logger))
    dist = distribution(1, False, find_unused_parameters=not system.automatic_optimization)
    trainer = build_trainer(exp, callbacks, **dist)
    messages = []
    ckpt_path = str(ckpt_file) if ckpt_file.is_file() else None
    if ckpt_path:
        epoch = torch.load(ckpt_path, map_location="cpu", weights_only=False)["epoch"]
        messages.append(f"runyard: resuming from the checkpoint after epoch {epoch}")
    fit_start = time.time()
    trainer.fit(system, datamodule=data, ckpt_path=ckpt_path)
    fit_end = time.time()
    final = {k: float(v) for k, v in trainer.callback_metrics.items()}
    final.update(epochs=trainer.current_epoch, fit_start=fit_start, fit_end=fit_end)
    state = {k: v.detach().cpu().clone() for k, v in network_of(system).state_dict().items()}
    return {"state": state, "metrics": final, "messages": messages}


def _actor(fingerprint: str):
    """The project's warm trainer: the running one if its code is this process's, else a new one."""
    import ray

    cls = _trainer_class()
    opts = {"name": NAME, "namespace": NAMESPACE, "lifetime": "detached", "num_cpus": 0,
            "max_concurrency": 4, "max_restarts": 0}
    actor = cls.options(**opts, get_if_exists=True).remote(fingerprint)
    try:
        same = ray.get(actor.info.remote())["fingerprint"] == fingerprint
    except ray.exceptions.RayActorError:
        same = False
    if not same:  # runyard's code changed since it started, or it died
        ray.kill(actor)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                ray.get_actor(NAME, namespace=NAMESPACE)
            except ValueError:
                break
            time.sleep(0.1)
        actor = cls.options(**opts, get_if_exists=True).remote(fingerprint)
    return actor


def fit_warm(cfg: dict, cpus: float, storage_dir: str) -> dict | None:
    """Run one training (``cfg`` as for ``execution.worker``) on the warm trainer; its
    result, or None if the warm trainer is busy with another training (use Ray Train)."""
    import uuid

    import psutil
    import ray
    from ray.util.placement_group import placement_group, remove_placement_group

    actor = _actor(code_fingerprint())
    # The CPUs the training uses, held while it runs: a search beside it does not take them.
    pg = placement_group([{"CPU": cpus}])
    ray.get(pg.ready())
    token = uuid.uuid4().hex
    cfg = {**cfg, "token": token, "env": dict(os.environ), "cwd": os.getcwd(), "storage_dir": storage_dir,
           "driver": (os.getpid(), psutil.Process().create_time())}
    ref = actor.train.remote(cfg)
    try:
        while True:
            done, _ = ray.wait([ref], timeout=1.0)
            if done:
                break
        result = ray.get(ref)
    except ray.exceptions.RayActorError as e:
        raise RunyardError(f"training: the warm trainer process died ({_first_line(e)}); run it again") from None
    except ray.exceptions.RayTaskError as e:
        # The training's own error (a TrackingUnavailable, a shape mismatch), as Ray Train would raise it.
        cause = getattr(e, "cause", None)
        raise (cause if isinstance(cause, BaseException) else e) from None
    except BaseException:
        # Interrupted (Ctrl-C, SIGTERM): stop the training before the run is ended.
        actor.stop.remote(token)
        ray.wait([ref], timeout=10.0)
        raise
    finally:
        remove_placement_group(pg)
    if result.get("busy"):
        return None
    for line in result["messages"]:
        print(line, flush=True)
    return result


def warm_up(root: Path) -> str:
    """Start the project's warm local Ray and warm trainer ahead of its first training; what
    was done, in words. A `dvc repro`'s first command starts this in the background
    (``forkserver``), so the first training does not wait for Ray's start and the trainer's
    imports. Nothing when the project's trainings would not run warm."""
    import ray

    from runyard.execution import ray_session
    from runyard.project import Project

    project = Project(root)
    params = project.params.ray
    if ray_session.address_of(params) != ray_session.LOCAL or params.local_idle_s <= 0:
        return "nothing to warm: the project's Ray is not the shared local one"
    if not _one_plain_worker(params):
        return "nothing to warm: the project's trainings run on Ray Train"
    ray_session.connect(params, project.rel(project.params_file))
    ray.get(_actor(code_fingerprint()).info.remote())
    return f"local Ray and warm trainer ready ({ray_session.shared_local()})"


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return text.splitlines()[0][:200] if text else type(e).__name__


def stop_actor() -> None:
    """Kill the warm trainer of the connected Ray, if one runs."""
    import ray

    with contextlib.suppress(ValueError):
        ray.kill(ray.get_actor(NAME, namespace=NAMESPACE))


if __name__ == "__main__":  # the background warm-up: python -m runyard.execution.warm PROJECT_ROOT
    print(f"runyard: {warm_up(Path(sys.argv[1]))}", flush=True)
