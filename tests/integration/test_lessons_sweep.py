"""A grid search is a sweep: `runyard tune` scores every trial's model on its training
split, validation and test, and draws the errors against the searched key."""

from __future__ import annotations

import csv

import pytest
import yaml

from tests.conftest import runyard_cli
from tests.integration.test_tune import client, search_runs

pytestmark = [pytest.mark.integration, pytest.mark.slow]

NAME = "tiny_capacity"


# A width-1 net cannot fit 100 digits (train acc 0.13-0.30 over seeds 0-2, in-process); a
# width-64 one fits 0.96-1.0 of them in 12 epochs. An untrained net is at ~0.1 either way.
def test_grid_search_draws_train_val_test_error_against_capacity(prepared):
    (prepared / "pipelines" / f"{NAME}.yaml").write_text(yaml.safe_dump({
        "dataset": "digits",
        "model": {"name": "shallow", "width": 8},
        "recipe": {"lr": 0.03, "batch_size": 100, "epochs": 12, "train_samples": 100},
        "search": {"algorithm": "grid", "scheduler": "fifo", "num_samples": 1, "max_concurrent": 2,
                   "space": {"model.width": {"grid": [1, 64]}}},
    }))
    result = runyard_cli("tune", NAME, cwd=prepared)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]

    out = prepared / "plots" / "tune" / NAME
    assert (out / "sweep.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    rows = {int(r["model.width"]): r for r in csv.DictReader((out / "sweep.csv").open())}
    assert set(rows) == {1, 64} and {r["outcome"] for r in rows.values()} == {"completed"}
    train = {w: float(r["train/acc"]) for w, r in rows.items()}
    print(f"train acc by width: {train}; test acc: { {w: r['test/acc'] for w, r in rows.items()} }")
    assert train[64] >= 0.85 and train[64] - train[1] >= 0.4, train
    assert int(rows[64]["parameters"]) == 64 * 64 + 64 + 64 * 10 + 10

    (parent,), children = search_runs(prepared, NAME)
    for child in children:
        width = int(child.data.params["model.width"])
        assert child.data.metrics["test/acc"] == pytest.approx(float(rows[width]["test/acc"]))
        assert child.data.metrics["sweep/train_acc"] == pytest.approx(train[width])
    artifacts = {a.path for a in client(prepared).list_artifacts(parent.info.run_id, "sweep")}
    assert artifacts == {"sweep/sweep.png", "sweep/sweep.csv"}
