"""Cross-validation on real Ray: folds as parallel tasks, and as a search's objective."""

from __future__ import annotations

import pytest
import yaml

from tests.conftest import runyard_cli

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def shrink(root, name, folds=3, epochs=2, **search):
    path = root / "pipelines" / f"{name}.yaml"
    data = yaml.safe_load(path.read_text())
    data["recipe"]["epochs"], data["cv"]["folds"] = epochs, folds
    if search:
        data["search"].update(search)
    path.write_text(yaml.safe_dump(data))


def client(root):
    from mlflow import MlflowClient

    return MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")


def test_train_logs_every_fold_and_their_mean(prepared):
    shrink(prepared, "mnist1d_mlp_cv", folds=3, epochs=2)
    result = runyard_cli("train", "mnist1d_mlp_cv", cwd=prepared)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    c = client(prepared)
    (run,) = c.search_runs([c.get_experiment_by_name("mnist1d_mlp_cv").experiment_id])
    folds = sorted((m.step, m.value) for m in c.get_metric_history(run.info.run_id, "cv/fold/val/acc"))
    assert [s for s, _ in folds] == [0, 1, 2]
    values = [v for _, v in folds]
    assert run.data.metrics["cv/val/acc"] == pytest.approx(sum(values) / 3)
    assert run.data.metrics["cv/val/acc_std"] > 0
    assert run.data.metrics["cv/val/acc"] > 0.2, "an untrained MLP is at chance (0.1)"
    assert run.info.status == "FINISHED" and (prepared / "models" / "mnist1d_mlp_cv" / "model.pt").is_file()


def test_cv_mean_is_a_search_objective(prepared):
    shrink(prepared, "mnist1d_mlp_cv_search", folds=2, epochs=2, num_samples=2, scheduler="fifo")
    result = runyard_cli("tune", "mnist1d_mlp_cv_search", cwd=prepared)
    assert result.returncode == 0, (result.stdout + result.stderr)[-3000:]
    c = client(prepared)
    runs = c.search_runs([c.get_experiment_by_name("mnist1d_mlp_cv_search").experiment_id])
    children = [r for r in runs if "mlflow.parentRunId" in r.data.tags]
    (parent,) = [r for r in runs if "mlflow.parentRunId" not in r.data.tags]
    assert len(children) == 2
    for child in children:
        folds = [m.value for m in sorted(c.get_metric_history(child.info.run_id, "fold/val/acc"), key=lambda m: m.step)]
        assert len(folds) == 2
        assert child.data.metrics["val/acc"] == pytest.approx(sum(folds) / 2), "objective = mean of folds"
    assert parent.data.metrics["val/acc"] == pytest.approx(max(ch.data.metrics["val/acc"] for ch in children))
    assert parent.data.metrics["test/acc"] > 0.2, "the refit best model learned"
