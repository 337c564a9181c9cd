"""The Parquet shards of a streamed dataset: written, read back with pyarrow, decoded to the same arrays."""

import json

import numpy as np
import pyarrow.parquet as pq
import pytest

from runyard.data import shards


@pytest.mark.parametrize("y", [np.arange(50, dtype=np.int64) % 3, np.linspace(0, 1, 50, dtype=np.float32)[:, None]],
                         ids=["classes", "regression"])
def test_written_shards_decode_to_the_arrays_row_for_row(tmp_path, monkeypatch, y):
    monkeypatch.setattr(shards, "FILE_BYTES", 20 * (3 * 4 * 4 + 8))  # about 20 rows a file: several files
    rng = np.random.default_rng(0)
    arrays = {f"{a}_{s}": v for s in ("train", "val", "test")
              for a, v in (("x", rng.normal(size=(50, 3, 4)).astype(np.float32)), ("y", y))}
    assert shards.write(tmp_path, arrays) == {"train": 50, "val": 50}
    files = sorted((tmp_path / shards.STREAM_DIR / "train").iterdir())
    assert len(files) > 1
    table = pq.read_table(files)  # several files: chunked columns
    assert table.column("id").to_pylist() == list(range(50))
    assert np.array_equal(shards.decode(table.column("x"), np.float32, (3, 4)), arrays["x_train"])
    assert np.array_equal(shards.decode(table.column("y"), y.dtype, y.shape[1:]), y)
    # A slice (a batch within a block) decodes from its own offset.
    part = table.slice(7, 5).column("x").chunk(0)
    assert np.array_equal(shards.decode(part, np.float32, (3, 4)), arrays["x_train"][7:12])
    layout = json.loads(pq.read_schema(files[0]).metadata[shards.META_KEY])
    assert layout["x"] == {"dtype": "<f4", "shape": [3, 4]} and layout["y"]["shape"] == list(y.shape[1:])
