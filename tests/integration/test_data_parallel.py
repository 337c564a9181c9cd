"""Data-parallel training on two Ray Train workers (DDP over gloo): still one MLflow run."""

from __future__ import annotations

import numpy as np
import pytest

from tests.conftest import runyard_cli
from tests.integration.test_fault_tolerance import all_runs, client, configure

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_two_workers_train_one_run(prepared):
    configure(prepared, num_workers=2)
    result = runyard_cli("train", "regression1d_shallow", cwd=prepared)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    (run,) = all_runs(prepared)
    assert run.info.status == "FINISHED"
    assert run.data.params["ray.num_workers"] == "2"
    steps = [m.step for m in client(prepared).get_metric_history(run.info.run_id, "train/loss")]
    assert sorted(steps) == list(range(len(steps))) and len(steps) == 40
    # Both ranks trained one model: it must fit far better than predicting the mean.
    y_val = np.load(prepared / "data/regression1d/y_val.npy")
    assert run.data.metrics["val/mse"] < 0.5 * y_val.var()
