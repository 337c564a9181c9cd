"""Data larger than memory: a ``files:`` dataset with ``stream: true`` trains from Parquet
shards that Ray Data streams to each Ray Train worker (runyard.data.streaming).

One real 2-node Ray cluster (two `ray start`s) for the module, in a throwaway project: the
same Parquet file is declared twice, streamed and in memory, and each is trained by
`runyard train` on 2 workers placed on different nodes.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import yaml

from tests.conftest import cluster_env, copy_project, ray_cluster, require_ray_cli, runyard_cli
from tests.integration.test_own_data import allow_raw_data, dvc

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ROWS = 200
SPLIT = {"val": 0.25, "test": 0.1}  # 130 train rows: 65 per worker, 2 batches of 64 (the last of 1)
STEPS = 16  # 8 epochs of 2 batches; 1 or 3 batches per epoch would log 16 or 6 epochs
# Ray prefixes a worker's lines with its node's ip, except on the driver's node.
SHARD = re.compile(r"\(RayTrainWorker pid=\d+(?:, ip=([\d.]+))?\)\S* runyard: streamed shard rank=(\d) world=2 "
                   r"epoch=0 rows=(\d+) digest=(0x[0-9a-f]+)")


def pipeline(dataset: str) -> dict:
    return {"dataset": dataset, "model": {"name": "mlp", "hidden": [16]},
            "recipe": {"optimizer": "adam", "lr": 0.1, "batch_size": 128, "steps": STEPS},
            "optimized_metric": "val/acc", "optimized_mode": "max"}


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """The project root and the `runyard train` output of each dataset: streamed, in memory."""
    import pandas as pd

    require_ray_cli()
    root = copy_project(tmp_path_factory.mktemp("streaming"))
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, 8)).astype(np.float32)
    table = pd.DataFrame(x, columns=[f"f{i}" for i in range(8)]).assign(label=(x[:, 0] + x[:, 1] > 0).astype(int))
    (root / "data" / "raw").mkdir(parents=True)
    table.to_parquet(root / "data" / "raw" / "tiny.parquet", index=False)
    allow_raw_data(root)
    dvc("add", "data/raw/tiny.parquet", cwd=root)

    params = yaml.safe_load((root / "params.yaml").read_text())
    entry = {"source": "data/raw/tiny.parquet", "target": "label", "split": SPLIT}
    params["files"] = {"tiny_stream": {**entry, "stream": True}, "tiny_mem": entry}
    params["experiments"] = {"tiny_stream_mlp": "tiny_stream", "tiny_mem_mlp": "tiny_mem"}
    params["ray"].update(num_workers=2, cpus_per_worker=1, placement_strategy="STRICT_SPREAD")
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for name in ("tiny_stream", "tiny_mem"):
        (root / "pipelines" / f"{name}_mlp.yaml").write_text(yaml.safe_dump(pipeline(name), sort_keys=False))
    for name in ("tiny_stream", "tiny_mem"):
        done = runyard_cli("prepare", name, cwd=root, timeout=180)
        assert done.returncode == 0, done.stderr[-3000:]

    with ray_cluster(root, nodes=2) as state:
        out = {}
        for name in ("tiny_stream", "tiny_mem"):
            done = runyard_cli("train", f"{name}_mlp", cwd=root, env=cluster_env(state), timeout=300)
            assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
            out[name] = done.stdout + done.stderr
        yield root, out


def runs(root: Path, experiment: str):
    from mlflow import MlflowClient

    client = MlflowClient(f"sqlite:///{root / 'mlruns' / 'mlflow.db'}")
    return client, client.search_runs([client.get_experiment_by_name(experiment).experiment_id])


def test_prepare_writes_parquet_shards_beside_the_arrays(trained):
    root, _ = trained
    streamed, in_memory = root / "data" / "tiny_stream", root / "data" / "tiny_mem"
    assert sorted(p.name for p in (streamed / "stream").iterdir()) == ["train", "val"]
    assert not (in_memory / "stream").exists()
    meta = json.loads((streamed / "meta.json").read_text())
    assert meta["stream_rows"] == {"train": 130, "val": 50}
    # The same seeded splits as the in-memory dataset, row for row.
    for name in ("x_train", "y_train", "x_val"):
        assert np.array_equal(np.load(streamed / f"{name}.npy"), np.load(in_memory / f"{name}.npy"))


def test_each_worker_streams_a_disjoint_shard_and_one_run_is_logged(trained):
    from runyard.data.streaming import digest

    root, out = trained
    shards = sorted(set(SHARD.findall(out["tiny_stream"])))  # Ray's log monitor may repeat a line
    assert sorted(int(rank) for _, rank, _, _ in shards) == [0, 1], out["tiny_stream"][-3000:]
    assert len({ip for ip, *_ in shards}) == 2, f"two workers on two nodes expected: {shards}"
    rows = [int(n) for _, _, n, _ in shards]
    assert rows == [65, 65]
    # Digests of disjoint shards add up to their union's: every training row exactly once.
    total = sum(int(d, 16) for *_, d in shards) % 2**64
    assert total == digest(np.arange(130))
    assert not SHARD.search(out["tiny_mem"]), "the in-memory dataset must not stream"

    client, found = runs(root, "tiny_stream_mlp")
    assert len(found) == 1 and found[0].info.status == "FINISHED"
    assert found[0].data.params["ray.num_workers"] == "2"


def test_streamed_and_in_memory_both_learn_in_the_same_steps(trained):
    root, _ = trained
    curves = {}
    for name in ("tiny_stream", "tiny_mem"):
        client, (run,) = runs(root, f"{name}_mlp")
        curves[name] = {key: [m.value for m in sorted(client.get_metric_history(run.info.run_id, key),
                                                       key=lambda m: m.step)]
                        for key in ("val/acc", "train/loss")}
    for name, curve in curves.items():
        assert len(curve["val/acc"]) == STEPS // 2, (name, curve)  # same batches per epoch
        # Chance is about 0.5 on 50 validation rows; both end well above it.
        assert curve["val/acc"][-1] >= 0.7 and curve["val/acc"][-1] > curve["val/acc"][0], (name, curve)
        assert curve["train/loss"][-1] < curve["train/loss"][0], (name, curve)
