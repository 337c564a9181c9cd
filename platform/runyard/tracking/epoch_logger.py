"""Per-epoch metrics from rank 0 to MLflow, buffered, and exactly once per epoch.

Writing to the tracking store every epoch costs more than a small model's
epoch, so metrics are buffered and sent every few seconds and at the end. A
restarted worker (fault tolerance, --resume) re-trains the epochs after its
last checkpoint: it skips the epochs already in the store, so no epoch is
logged twice.

A tracking server that stops answering does not stop the training: the buffer
(and each epoch's files, such as the GAN's samples) is kept and sent once it is
back (see ``runyard.tracking.outage``). Only before a checkpoint and at the end
does the logger wait for it, up to ``retry_s`` after the first failed send; then
the training fails.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
import time
from pathlib import Path

import lightning.pytorch as pl
from mlflow import MlflowClient
from mlflow.entities import Metric

from runyard.tracking.outage import TrackingUnavailable, retry_until, try_once

PREFIXES = ("train/", "val/")


class MlflowEpochLogger(pl.Callback):
    def __init__(self, tracking_uri: str, run_id: str, flush_every_s: float = 5.0, retry_s: float = 120.0):
        self.tracking_uri, self.run_id = tracking_uri, run_id
        self.flush_every_s, self.retry_s = flush_every_s, retry_s
        self._client: MlflowClient | None = None
        self._buffer: list[Metric] = []
        self._artifacts: list[Path] = []  # each epoch's files (the GAN's samples) not sent yet
        self._last_flush = time.monotonic()
        self._failing_since: float | None = None  # first failed send of what is buffered
        self._logged_through = -1

    def setup(self, trainer, pl_module, stage):
        if trainer.global_rank == 0 and self._client is None:
            self._client = MlflowClient(self.tracking_uri)
            # train/lr: this logger writes it every epoch, whatever the system logs.
            history = retry_until(
                lambda: self._client.get_metric_history(self.run_id, "train/lr"),
                time.monotonic() + self.retry_s, self._what("reading the epochs already logged"),
            )
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
            self.flush(wait=False)

    def _log_artifacts(self, pl_module, epoch: int) -> None:
        """Files a system leaves for each epoch (``epoch_artifacts(epoch, dir)``: the GAN's
        sample grid) go to the run's artifacts as they are made."""
        write = getattr(pl_module, "epoch_artifacts", None)
        if write is None:
            return
        # Kept until sent, like the metrics: a server that is down does not stop the training.
        tmp = Path(tempfile.mkdtemp(prefix=f"runyard-epoch{epoch}-"))
        write(epoch, tmp)
        self._artifacts.append(tmp)
        if self._failing_since is None:  # else the next flush sends them with the metrics
            try_once(self._send_artifacts)

    def flush(self, wait: bool = True) -> None:
        """Send the buffer. ``wait=False``: one try, keeping the buffer if the server is
        down (failing once ``retry_s`` has passed); ``wait=True``: retry until then."""
        if self._client is None or not (self._buffer or self._artifacts):
            return
        self._last_flush = time.monotonic()
        if try_once(self._send)[0]:
            return
        if self._failing_since is None:
            self._failing_since = time.monotonic()
        deadline = self._failing_since + self.retry_s
        if wait or time.monotonic() >= deadline:
            retry_until(self._send, deadline, self._what(self._pending()))

    def _send_artifacts(self) -> None:
        while self._artifacts:
            self._client.log_artifacts(self.run_id, str(self._artifacts[0]))
            shutil.rmtree(self._artifacts.pop(0), ignore_errors=True)

    def _send(self) -> None:
        self._send_artifacts()
        while self._buffer:
            self._client.log_batch(self.run_id, metrics=self._buffer[:1000])  # MLflow's limit
            del self._buffer[:1000]  # a retry resends only what is still missing
        self._failing_since = None

    def _pending(self) -> str:
        steps = sorted({m.step for m in self._buffer})
        return f"logging epochs {steps[0]}-{steps[-1]}" if steps else "logging"

    def _what(self, doing: str) -> str:
        return (f"{doing} to {self.tracking_uri}: no answer for {self.retry_s:g} s "
                "(params.yaml: mlflow.retry_s)")

    def on_fit_end(self, trainer, pl_module):
        self.flush()

    def on_exception(self, trainer, pl_module, exception):
        # Best effort: a server that is down too must not hide the training's own error.
        if not isinstance(exception, TrackingUnavailable):
            with contextlib.suppress(TrackingUnavailable):
                self.flush()
