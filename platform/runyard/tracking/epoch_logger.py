"""Per-epoch metrics from rank 0 to MLflow, buffered, and exactly once per epoch.

Writing to the tracking store every epoch costs more than a small model's
epoch, so metrics are buffered and sent every few seconds and at the end. A
restarted worker (fault tolerance, --resume) re-trains the epochs after its
last checkpoint: it skips the epochs already in the store, so no epoch is
logged twice.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
from mlflow import MlflowClient
from mlflow.entities import Metric

PREFIXES = ("train/", "val/")


class MlflowEpochLogger(pl.Callback):
    def __init__(self, tracking_uri: str, run_id: str, flush_every_s: float = 5.0):
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.flush_every_s = flush_every_s
        self._client: MlflowClient | None = None
        self._buffer: list[Metric] = []
        self._last_flush = time.monotonic()
        self._logged_through = -1

    def setup(self, trainer, pl_module, stage):
        if trainer.global_rank == 0 and self._client is None:
            self._client = MlflowClient(self.tracking_uri)
            # train/lr: this logger writes it every epoch, whatever the system logs.
            history = self._client.get_metric_history(self.run_id, "train/lr")
            self._logged_through = max((m.step for m in history), default=-1)

    def on_train_epoch_end(self, trainer, pl_module):
        if self._client is None:
            return
        epoch = trainer.current_epoch
        if epoch <= self._logged_through:
            return
        now = int(time.time() * 1000)
        values = {
            k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(PREFIXES)
        }
        values["train/lr"] = trainer.optimizers[0].param_groups[0]["lr"]
        self._buffer += [Metric(k, v, now, epoch) for k, v in values.items()]
        self._logged_through = epoch
        self._log_artifacts(pl_module, epoch)
        if time.monotonic() - self._last_flush >= self.flush_every_s:
            self.flush()

    def _log_artifacts(self, pl_module, epoch: int) -> None:
        """Files a system leaves for each epoch (``epoch_artifacts(epoch, dir)``: the GAN's
        sample grid) go to the run's artifacts as they are made."""
        write = getattr(pl_module, "epoch_artifacts", None)
        if write is None:
            return
        with tempfile.TemporaryDirectory() as tmp:
            write(epoch, Path(tmp))
            self._client.log_artifacts(self.run_id, tmp)

    def flush(self) -> None:
        if self._client is None or not self._buffer:
            return
        for i in range(0, len(self._buffer), 1000):  # MLflow's log_batch limit
            self._client.log_batch(self.run_id, metrics=self._buffer[i : i + 1000])
        self._buffer.clear()
        self._last_flush = time.monotonic()

    def on_fit_end(self, trainer, pl_module):
        self.flush()

    def on_exception(self, trainer, pl_module, exception):
        self.flush()
