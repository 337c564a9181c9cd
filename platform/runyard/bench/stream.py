"""`runyard bench -w stream`: data streamed by Ray Data against data shipped whole, side by side.

One generated dataset (64 float32 features, 2 classes) at two sizes, ``SMALL_MB`` and 10x
that, prepared as ``stream: true`` does: .npy arrays and Parquet shards of the training
split (the validation split stays ``VAL_ROWS`` rows at both sizes). Each size is trained
through runyard's real path (``execution.trainer.fit``: Ray Train, one worker holding one
CPU, rank 0 logging to an MLflow sqlite store) twice: in memory (``ray.put`` of the
arrays) and streamed (the Parquet shards through Ray Data). Every training runs
``EPOCHS`` whole epochs in batches of ``BATCH``, each followed by its validation: a
dataset is streamed to be trained on in full, and every epoch is a new pass of Ray Data.

Reported per path and size: samples/s over Lightning's fit (the data pipeline's
start-up and each epoch's new pass included) and the training worker's peak RSS (its VmHWM, read every 0.2 s);
then the ratios: streamed / in-memory samples/s, and each path's RSS growth with 10x
the data. The generated data lives in a temporary folder (``--tmp``) removed at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
from pathlib import Path
from typing import Any

import numpy as np

FEATURES = 64
SMALL_MB = 200
GROWTH = 10
VAL_ROWS = 10_000
BATCH = 1024
EPOCHS = 2


def generate(out: Path, train_mb: float, seed: int = 0) -> int:
    """``out/`` as `runyard prepare` writes a ``stream: true`` dataset, in chunks (the
    arrays are never whole in this process's memory); the training rows."""
    from numpy.lib.format import open_memmap

    from runyard.data import shards

    rows = int(train_mb * 2**20 // (FEATURES * 4 + 8))
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    w = rng.normal(size=FEATURES).astype(np.float32)
    x = open_memmap(out / "x_train.npy", "w+", np.float32, (rows, FEATURES))
    y = open_memmap(out / "y_train.npy", "w+", np.int64, (rows,))
    for start in range(0, rows, 1 << 20):
        chunk = rng.normal(size=(min(1 << 20, rows - start), FEATURES)).astype(np.float32)
        x[start:start + len(chunk)], y[start:start + len(chunk)] = chunk, (chunk @ w > 0)
    x.flush(), y.flush()
    for split in ("val", "test"):
        xs = rng.normal(size=(VAL_ROWS, FEATURES)).astype(np.float32)
        np.save(out / f"x_{split}.npy", xs)
        np.save(out / f"y_{split}.npy", (xs @ w > 0).astype(np.int64))
    arrays = {f"{a}_{s}": np.load(out / f"{a}_{s}.npy", mmap_mode="r") for s in ("train", "val", "test") for a in "xy"}
    rows_written = shards.write(out, arrays)
    (out / "meta.json").write_text(json.dumps({"stream": True, "stream_rows": rows_written}) + "\n")
    return rows


class PeakRss:
    """The highest VmHWM of any Ray Train worker process while it runs (polled)."""

    def __init__(self, every_s: float = 0.2):
        self.every_s, self.peak, self._stop = every_s, 0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()

    def _poll(self) -> None:
        while not self._stop.is_set():
            for pid in filter(str.isdigit, os.listdir("/proc")):
                try:
                    if b"RayTrainWorker" not in Path(f"/proc/{pid}/cmdline").read_bytes():
                        continue
                    status = Path(f"/proc/{pid}/status").read_text()
                except OSError:
                    continue
                for line in status.splitlines():
                    if line.startswith("VmHWM:"):
                        self.peak = max(self.peak, int(line.split()[1]) * 1024)
            self._stop.wait(self.every_s)


def train_once(data_dir: Path, streamed: bool, store: Path) -> dict[str, Any]:
    """One training of ``EPOCHS`` epochs: samples/s and the worker's peak RSS."""
    import mlflow

    from runyard.config import Experiment, RayParams, Recipe
    from runyard.data import DatasetInfo
    from runyard.data.splits import SPLITS, Splits, load
    from runyard.execution.trainer import fit

    if streamed:
        splits = load(data_dir, "bench")  # a StreamedSplits: stream/ is there
    else:
        splits = Splits(**{f"{a}_{s}": np.load(data_dir / f"{a}_{s}.npy") for s in SPLITS for a in "xy"})
    exp = Experiment(name="bench_stream", dataset="bench_stream", model={"name": "mlp", "hidden": [64]},
                     recipe=Recipe(optimizer="adam", lr=1e-3, batch_size=BATCH, epochs=EPOCHS))
    info = DatasetInfo(task="classification", input_shape=(FEATURES,), num_classes=2)
    uri = f"sqlite:///{store / 'mlflow.db'}"
    client = mlflow.MlflowClient(uri)
    found = client.get_experiment_by_name(exp.name)
    exp_id = found.experiment_id if found else client.create_experiment(exp.name, (store / "art").as_uri())
    run_id = client.create_run(exp_id).info.run_id
    with PeakRss() as rss:
        result = fit(exp, info, splits, RayParams(num_workers=1, cpus_per_worker=1), seed=0, tracking_uri=uri,
                     run_id=run_id, storage_path=store / "ray", warm=False)
    client.set_terminated(run_id)
    rows = len(splits.y_train)
    del splits
    seconds = result.metrics["fit_end"] - result.metrics["fit_start"]
    return {"samples_per_s": EPOCHS * rows / seconds, "fit_s": seconds, "peak_rss_mb": rss.peak / 2**20}


def run(console, tmp: Path | None = None, small_mb: float = SMALL_MB) -> dict[str, Any]:
    import ray

    from runyard.execution.ray_session import TRAIN_ENV

    for key, value in TRAIN_ENV.items():  # as every runyard training sets them
        os.environ.setdefault(key, value)
    root = Path(tempfile.mkdtemp(prefix="runyard-bench-stream-", dir=tmp))
    try:
        ray.init(num_cpus=os.cpu_count() or 2, include_dashboard=False, logging_level="ERROR",
                 _node_ip_address="127.0.0.1")
        sizes = {"small": small_mb, "large": small_mb * GROWTH}
        results: dict[str, Any] = {"features": FEATURES, "batch": BATCH, "epochs": EPOCHS, "sizes": {}}
        for size, mb in sizes.items():
            data_dir = root / size
            console.print(f"  generating {mb:g} MB of training data")
            rows = generate(data_dir, mb)
            parquet = sum(f.stat().st_size for f in (data_dir / "stream" / "train").iterdir())
            results["sizes"][size] = {"train_rows": rows, "parquet_mb": parquet / 2**20}
            for path in ("in_memory", "streamed"):
                console.print(f"  {size}: {path}")
                results["sizes"][size][path] = train_once(data_dir, path == "streamed", root)
                console.print(f"    {results['sizes'][size][path]}")
            shutil.rmtree(data_dir)
        s, big = results["sizes"]["small"], results["sizes"]["large"]
        results["ratios"] = {
            "throughput_streamed_vs_in_memory": {k: r["streamed"]["samples_per_s"] / r["in_memory"]["samples_per_s"]
                                                 for k, r in (("small", s), ("large", big))},
            "rss_growth_10x": {p: big[p]["peak_rss_mb"] / s[p]["peak_rss_mb"] - 1 for p in ("in_memory", "streamed")},
        }
        return results
    finally:
        ray.shutdown()
        shutil.rmtree(root, ignore_errors=True)


def report(out: Path, console, tmp: Path | None = None, small_mb: float = SMALL_MB) -> dict[str, Any]:
    """Run both paths at both sizes, print the table, write ``out``."""
    console.print(f"[bold]stream[/bold]: Ray Data streaming vs in-memory, {small_mb:g} MB and "
                  f"{small_mb * GROWTH:g} MB of Parquet")
    r = run(console, tmp, small_mb)
    console.print("| size | Parquet MB | path | samples/s | worker peak RSS MB |")
    console.print("|---|---:|---|---:|---:|")
    for size, v in r["sizes"].items():
        for path in ("in_memory", "streamed"):
            console.print(f"| {size} | {v['parquet_mb']:.0f} | {path} | {v[path]['samples_per_s']:,.0f} | "
                          f"{v[path]['peak_rss_mb']:,.0f} |")
    t, g = r["ratios"]["throughput_streamed_vs_in_memory"], r["ratios"]["rss_growth_10x"]
    console.print(f"streamed / in-memory samples/s: small {t['small']:.2f}x, large {t['large']:.2f}x (target >= 0.7x)")
    console.print(f"worker peak RSS growth with {GROWTH}x the data: in memory {g['in_memory']:+.0%}, "
                  f"streamed {g['streamed']:+.0%} (target < +25%)")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(r, indent=2) + "\n")
    return r
