"""One nested MLflow child run per trial, written by the search's driver only.

Trials report to Tune; this Tune callback (which runs in the driver) turns each
report into MLflow metrics. Only one process ever writes to the tracking store,
so concurrent trials cannot lock a sqlite database or interleave a run's
epochs. A resumed search finds each trial's child run again by its trial-id tag
and skips epochs it already logged: one child per trial, no epoch twice. A trial started
after Tune last saved its state is unknown to the restored search, which asks
its searcher for a new one instead: the forgotten trial's child is deleted
(MLflow's soft delete), so the parent keeps exactly one child per trial.

Every call goes through the driver's retrying client: a tracking server outage holds
the callbacks (the trials go on) for up to ``mlflow.retry_s``. An epoch's batch keeps
its timestamp across retries, so one whose first answer was lost is stored once.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

from mlflow import MlflowClient
from mlflow.entities import Metric, Param, RunStatus
from ray.tune import Callback

from runyard.tracking.client import RetryingClient
from runyard.tracking.outage import once
from runyard.tracking.runs import flatten

TRIAL_TAG = "runyard.trial_id"
OUTCOME_TAG = "runyard.trial.outcome"  # completed | pruned | errored | interrupted
PREFIXES = ("train/", "val/", "fold/")  # fold/: a cross-validated trial's single folds
RUNNING = RunStatus.to_string(RunStatus.RUNNING)


class ChildRuns(Callback):
    """``client``: the driver's ``RetryingClient`` (``Tracking.client``), so every write rides
    out a tracking server outage while the trials go on; or a tracking URI (no retries)."""

    def __init__(self, client, experiment_id: str, parent_run_id: str, max_epochs: int):
        self.client = MlflowClient(client) if isinstance(client, str) else client
        self.experiment_id, self.parent, self.max_epochs = experiment_id, parent_run_id, max_epochs
        self.runs: dict[str, str] = {}
        self.logged_through: dict[str, int] = {}
        self.pruned: set[str] = set()
        self.ended: set[str] = set()  # trials whose child run is already final (a resumed search)
        for run in self.children():
            self.runs[run.data.tags[TRIAL_TAG]] = run.info.run_id
            if run.info.status != RUNNING:
                self.ended.add(run.data.tags[TRIAL_TAG])
        self.restored = False

    def children(self) -> list:
        return self.client.search_runs(
            [self.experiment_id], f"tags.mlflow.parentRunId = '{self.parent}'", max_results=10_000,
        )

    def on_step_begin(self, iteration, trials, **info):
        # Tune restores its trials before its first step: any child it does not know of
        # belongs to a trial started after its last state save, which the search forgot.
        if self.restored:
            return
        self.restored = True
        known = {t.trial_id for t in trials}
        for trial_id in [t for t in self.runs if t not in known]:
            self.client.delete_run(self.runs.pop(trial_id))
            self.ended.discard(trial_id)

    def on_trial_start(self, iteration, trials, trial, **info):
        run_id = self.runs.get(trial.trial_id)
        if run_id is None:
            run_id = self.runs[trial.trial_id] = self._create(trial.trial_id).info.run_id
            self.client.log_batch(run_id, params=_params(trial.config))
        elif trial.trial_id in self.ended:
            # Killed after the child ended but before Tune saved that: the trial restarts from
            # its final checkpoint, trains nothing, and its child keeps its record.
            return
        else:  # a resumed trial: same child run, continued
            self.client.update_run(run_id, status="RUNNING")
            history = self.client.get_metric_history(run_id, "train/loss")
            self.logged_through[trial.trial_id] = max((m.step for m in history), default=-1)

    def _create(self, trial_id: str):
        """The trial's child run, created once: a creation the server stored but never
        answered is found by its trial tag when retried (``outage.once``)."""
        retrying = isinstance(self.client, RetryingClient)
        raw = self.client.raw if retrying else self.client
        create = partial(raw.create_run, self.experiment_id, run_name=f"trial-{trial_id}",
                         tags={"mlflow.parentRunId": self.parent, TRIAL_TAG: trial_id})

        def find():
            runs = raw.search_runs([self.experiment_id], f"tags.mlflow.parentRunId = '{self.parent}' "
                                   f"and tags.{TRIAL_TAG} = '{trial_id}'", max_results=1)
            return runs[0] if runs else None

        attempt = once(create, find)
        return self.client.retry(attempt, "create_run") if retrying else attempt()

    def on_trial_result(self, iteration, trials, trial, result, **info):
        # Tune marks the result a scheduler stops a trial on as done; a trial that ends by
        # itself is marked done only after the callbacks have seen its last result.
        if result.get("done") and result.get("training_iteration", 0) < self.max_epochs:
            self.pruned.add(trial.trial_id)
        run_id, epoch = self.runs.get(trial.trial_id), result.get("epoch")
        if run_id is None or trial.trial_id in self.ended or epoch is None:
            return
        if epoch <= self.logged_through.get(trial.trial_id, -1):
            return  # logged before a resume: the trial re-ran it from its checkpoint
        now = int(time.time() * 1000)
        metrics = [Metric(k, float(v), now, int(epoch)) for k, v in result.items() if k.startswith(PREFIXES)]
        self.client.log_batch(run_id, metrics=metrics)
        self.logged_through[trial.trial_id] = epoch

    def on_trial_complete(self, iteration, trials, trial, **info):
        # A pruned trial ended cleanly too: FINISHED, and the outcome tag says why it was short.
        self._end(trial, "pruned" if trial.trial_id in self.pruned else "completed", "FINISHED")

    def on_trial_error(self, iteration, trials, trial, **info):
        self._end(trial, "errored", "FAILED")

    def _end(self, trial, outcome: str, status: str) -> None:
        run_id = self.runs.get(trial.trial_id)
        if run_id is not None and trial.trial_id not in self.ended:
            self.client.set_tag(run_id, OUTCOME_TAG, outcome)
            self.client.set_terminated(run_id, status)
            self.ended.add(trial.trial_id)

    def reconcile(self, grid) -> None:
        """End children of trials Tune finished while no callback could see it (the
        driver was killed between Tune's decision and ours)."""
        for result in grid:
            trial_id = (result.metrics or {}).get("trial_id")
            run_id = self.runs.get(trial_id)
            if run_id is None or trial_id in self.ended:
                continue
            if result.error is not None:
                outcome, status = "errored", "FAILED"
            else:
                short = result.metrics.get("training_iteration", 0) < self.max_epochs
                outcome, status = ("pruned" if short else "completed"), "FINISHED"
            self.client.set_tag(run_id, OUTCOME_TAG, outcome)
            self.client.set_terminated(run_id, status)
            self.ended.add(trial_id)

    def close_open(self) -> None:
        """Mark children still RUNNING (the driver was interrupted) KILLED: nothing left RUNNING."""
        for run in self.children():
            if run.info.status == RUNNING:
                self.client.set_tag(run.info.run_id, OUTCOME_TAG, "interrupted")
                self.client.set_terminated(run.info.run_id, "KILLED")


def _params(config: dict[str, Any]):
    return [Param(k, v) for k, v in flatten(config).items()]
