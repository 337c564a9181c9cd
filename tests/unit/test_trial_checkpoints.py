"""Which reports of a search trial carry a checkpoint: where a scheduler may stop it, its last, and a cadence."""

import numpy as np
import pytest

from runyard.config import Experiment, Recipe, Search
from runyard.data import DatasetInfo
from runyard.data.splits import Splits
from runyard.tuning.results import checkpointed_reports


def search_exp(epochs=20, early_stopping=None, **search) -> Experiment:
    return Experiment(
        name="s", dataset="d", model={"name": "mlp", "hidden": [4]},
        recipe=Recipe(optimizer="adam", lr=0.01, batch_size=8, epochs=epochs, early_stopping=early_stopping),
        search=Search.model_validate({"algorithm": "random", "num_samples": 2,
                                      "space": {"recipe.lr": {"loguniform": [0.001, 0.1]}}, **search}),
    )


@pytest.mark.parametrize(("search", "every", "expected"), [
    ({"scheduler": "fifo"}, 0, [20]),
    ({"scheduler": "fifo"}, 6, [6, 12, 18, 20]),
    # Ray's ASHA rungs: grace_period * reduction_factor ** k below max_t.
    ({"scheduler": "asha", "grace_period": 2, "reduction_factor": 4}, 0, [2, 8, 20]),
    ({"scheduler": "asha", "grace_period": 1, "reduction_factor": 2.5}, 0, [1, 2, 3, 6, 7, 15, 16, 20]),
    ({"scheduler": "hyperband"}, 0, None),
    ({"scheduler": "pbt"}, 0, None),
    ({"scheduler": "fifo", "time_budget_s": 60}, 0, None),
])
def test_checkpointed_reports(search, every, expected):
    assert checkpointed_reports(search_exp(**search), every) == expected


def test_asha_stops_trials_only_at_reports_that_carry_a_checkpoint():
    """Ray's own ASHA, fed one worse trial after a better one: every stop is at a checkpointed report."""
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    exp = search_exp(epochs=30, scheduler="asha", grace_period=2, reduction_factor=3)
    at = set(checkpointed_reports(exp))
    scheduler = ASHAScheduler(time_attr="training_iteration", metric="val/acc", mode="max", max_t=30,
                              grace_period=2, reduction_factor=3)
    stops = []
    for trial, acc in (("good", 0.9), ("bad", 0.1)):
        trial_obj = type("T", (), {"trial_id": trial, "is_finished": lambda self: False})()
        scheduler.on_trial_add(None, trial_obj)
        for it in range(1, 31):
            decision = scheduler.on_trial_result(None, trial_obj, {"training_iteration": it, "val/acc": acc})
            if decision == TrialScheduler.STOP:
                stops.append(it)
                break
    assert stops and set(stops) <= at, (stops, sorted(at))


def test_a_trial_reports_every_epoch_and_checkpoints_only_where_asked():
    from runyard.execution.lightning import ReportEpochs
    from runyard.execution.local import fit_local

    class Checkpoint:
        @classmethod
        def from_directory(cls, path):
            return "checkpoint"

    reports = []
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(32, 3)).astype(np.float32), rng.integers(0, 2, 32)
    splits = Splits(x, y, x, y, x, y)
    info = DatasetInfo(task="classification", input_shape=(3,), num_classes=2)
    callback = ReportEpochs(lambda metrics, checkpoint=None: reports.append((metrics["epoch"], checkpoint)),
                            Checkpoint, checkpoint_at=[2])
    fit_local(search_exp(epochs=5), info, splits, seed=0, cpus=1, callbacks=[callback])
    assert [epoch for epoch, _ in reports] == [0, 1, 2, 3, 4]
    assert [epoch + 1 for epoch, ckpt in reports if ckpt] == [2, 5]
