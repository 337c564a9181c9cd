"""The Parquet shards of a dataset prepared with ``stream: true`` (``runyard.data.streaming``
reads them): ``data/<name>/stream/{train,val}/part-*.parquet``, columns ``id`` (the row in
its split), ``x`` (a Ray tensor column, float32) and ``y``.

Apart from runyard.data.splits (which writes them on save) and imports nothing of runyard.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

STREAM_DIR = "stream"
STREAMED = ("train", "val")
FILE_BYTES = 64 * 2**20
"""Rows per Parquet file: about this many bytes of inputs (a Ray Data block each)."""
ROW_GROUP_BYTES = 8 * 2**20


def write(out: Path, arrays: dict) -> dict[str, int]:
    """Parquet shards of the streamed splits of ``arrays`` (``x_train``, ``y_train``, ...)
    under ``out/stream/``; rows written per split."""
    import pyarrow as pa
    import pyarrow.parquet as pq
    from ray.data.extensions import ArrowTensorArray

    rows = {}
    for split in STREAMED:
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        folder = Path(out) / STREAM_DIR / split
        folder.mkdir(parents=True, exist_ok=True)
        row_bytes = max(1, x[:1].nbytes + y[:1].nbytes)
        per_file = max(1, FILE_BYTES // row_bytes)
        per_group = max(1, min(per_file, ROW_GROUP_BYTES // row_bytes))
        for part, start in enumerate(range(0, max(len(y), 1), per_file)):
            stop = min(start + per_file, len(y))
            table = pa.table({
                "id": pa.array(np.arange(start, stop, dtype=np.int64)),
                "x": ArrowTensorArray.from_numpy(np.ascontiguousarray(x[start:stop], dtype=np.float32)),
                "y": _column(np.ascontiguousarray(y[start:stop])),
            })
            pq.write_table(table, folder / f"part-{part:05d}.parquet", row_group_size=per_group)
        rows[split] = len(y)
    return rows


def _column(y: np.ndarray):
    import pyarrow as pa
    from ray.data.extensions import ArrowTensorArray

    return ArrowTensorArray.from_numpy(y) if y.ndim > 1 else pa.array(y)
