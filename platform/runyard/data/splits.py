"""The on-disk form of a prepared dataset: one .npy per array, plus meta.json.

.npy (not .npz, not pickles) because its bytes depend only on the data: DVC hashes
stay the same when a stage is re-run with the same seed.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from runyard.errors import RunyardError

SPLITS = ("train", "val", "test")


@dataclass
class Splits:
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray

    def arrays(self) -> dict[str, np.ndarray]:
        return {f"{a}_{s}": getattr(self, f"{a}_{s}") for s in SPLITS for a in ("x", "y")}

    def sizes(self) -> dict[str, int]:
        return {s: len(getattr(self, f"y_{s}")) for s in SPLITS}


@dataclass
class StreamedSplits(Splits):
    """Splits of a dataset prepared with ``stream: true``: the arrays memory-mapped, and
    ``data_dir``, whose Parquet shards a training streams (``runyard.data.streaming``)."""

    data_dir: str = ""
    rows: dict | None = None
    """Rows of each streamed split, as written."""


def save(splits: Splits, out: Path, meta: dict) -> None:
    """Write atomically: a half-written data dir never exists under its final name."""
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for key, arr in splits.arrays().items():
        np.save(tmp / f"{key}.npy", np.ascontiguousarray(arr))
    if meta.get("stream"):  # a files: entry with stream: true
        from runyard.data import shards

        meta = {**meta, "stream_rows": shards.write(tmp, splits.arrays())}
    (tmp / "meta.json").write_text(json.dumps({**meta, "sizes": splits.sizes()}, indent=2) + "\n")
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)


def load(data_dir: Path, where: str) -> Splits:
    missing = [f"{k}.npy" for k in _keys() if not (data_dir / f"{k}.npy").is_file()]
    if missing:
        raise RunyardError(
            f"{where}: missing {', '.join(missing)}; run `runyard prepare {data_dir.name}` "
            f"(DVC's stage prepare@{data_dir.name}) first"
        )
    if (data_dir / "stream").is_dir():  # prepared with stream: true (runyard.data.streaming)
        # The test split whole (evaluation and the logged model's example read it); the
        # others memory-mapped: a training streams them from the Parquet shards instead.
        arrays = {k: np.load(data_dir / f"{k}.npy", mmap_mode=None if k.endswith("test") else "r")
                  for k in _keys()}
        meta = json.loads((data_dir / "meta.json").read_text()) if (data_dir / "meta.json").is_file() else {}
        return StreamedSplits(**arrays, data_dir=str(data_dir.resolve()), rows=meta.get("stream_rows"))
    return Splits(**{k: np.load(data_dir / f"{k}.npy") for k in _keys()})


def _keys() -> list[str]:
    return [f"{a}_{s}" for s in SPLITS for a in ("x", "y")]
