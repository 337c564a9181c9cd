"""The Parquet shards of a dataset prepared with ``stream: true`` (``runyard.data.streaming``
reads them): ``data/<name>/stream/{train,val}/part-*.parquet``, columns ``id`` (the row in
its split), ``x`` and ``y``.

A sample's ``x`` (and a multi-dimensional ``y``) is one fixed-width binary value: its
array's bytes, C order. Parquet stores such a column as plain bytes, where a list column
(a Ray tensor column) carries a repetition level per number: reading through Ray Data
took about twice the CPU per row, CPU that the training step on the same cores needs.
``decode`` turns a column back into an array (no copy); each file's schema metadata
records dtype and shape (``runyard.arrays``), so the files describe themselves.

Apart from runyard.data.splits (which writes them on save) and imports nothing of runyard.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

STREAM_DIR = "stream"
STREAMED = ("train", "val")
FILE_BYTES = 64 * 2**20
"""Rows per Parquet file: about this many bytes of inputs (a Ray Data block each)."""
ROW_GROUP_BYTES = 8 * 2**20
META_KEY = b"runyard.arrays"


def write(out: Path, arrays: dict) -> dict[str, int]:
    """Parquet shards of the streamed splits of ``arrays`` (``x_train``, ``y_train``, ...)
    under ``out/stream/``; rows written per split."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = {}
    for split in STREAMED:
        x, y = arrays[f"x_{split}"], arrays[f"y_{split}"]
        folder = Path(out) / STREAM_DIR / split
        folder.mkdir(parents=True, exist_ok=True)
        row_bytes = max(1, x[:1].nbytes + y[:1].nbytes)
        per_file = max(1, FILE_BYTES // row_bytes)
        per_group = max(1, min(per_file, ROW_GROUP_BYTES // row_bytes))
        layout = {"x": _layout(x, np.float32), "y": _layout(y, y.dtype)}
        for part, start in enumerate(range(0, max(len(y), 1), per_file)):
            stop = min(start + per_file, len(y))
            table = pa.table({
                "id": pa.array(np.arange(start, stop, dtype=np.int64)),
                "x": _column(np.asarray(x[start:stop], dtype=np.float32)),
                "y": _column(np.asarray(y[start:stop])),
            }).replace_schema_metadata({META_KEY: json.dumps(layout)})
            pq.write_table(table, folder / f"part-{part:05d}.parquet", row_group_size=per_group)
        rows[split] = len(y)
    return rows


def _layout(a: np.ndarray, dtype) -> dict:
    return {"dtype": np.dtype(dtype).str, "shape": list(a.shape[1:])}


def _column(a: np.ndarray):
    """A 1-D array as a plain column, anything else one fixed-width binary value per row."""
    import pyarrow as pa

    if a.ndim == 1:
        return pa.array(a)
    a = np.ascontiguousarray(a)
    width = a[:1].nbytes if len(a) else a.itemsize * int(np.prod(a.shape[1:]))
    return pa.FixedSizeBinaryArray.from_buffers(pa.binary(width), len(a), [None, pa.py_buffer(a)])


def decode(column, dtype, shape) -> np.ndarray:
    """The (rows, *shape) array of a column ``write`` wrote (a pyarrow Array or
    ChunkedArray), without copying where its rows lie in one buffer."""
    import pyarrow as pa

    if isinstance(column, pa.ChunkedArray):
        column = column.combine_chunks()
    if not pa.types.is_fixed_size_binary(column.type):
        return column.to_numpy(zero_copy_only=False).astype(dtype, copy=False).reshape(-1, *shape)
    width = column.type.byte_width
    data = np.frombuffer(column.buffers()[1], dtype=np.uint8, count=len(column) * width,
                         offset=column.offset * width)
    return data.view(dtype).reshape(-1, *shape)
