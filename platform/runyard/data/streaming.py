"""Data larger than memory: Ray Data streams each Ray Train worker its shard.

A ``files:`` entry with ``stream: true`` is prepared as usual (``data/<name>/*.npy``,
read memory-mapped by whoever needs a few samples or the shapes) and, besides, as Parquet
shards of its training and validation splits::

    data/<name>/stream/train/part-00000.parquet ...   columns: id, x, y
    data/<name>/stream/val/part-00000.parquet ...

``id`` is a sample's row in its split, ``x`` the inputs (any shape: features or images),
``y`` the targets, as ``runyard.data.shards`` lays them out; dtypes and shapes are those of
the in-memory path (float32 inputs, int64 classes or float32 (n, 1) regression targets).

A streamed training runs on Ray Train only (never on a warm in-process trainer): the
driver hands ``ray.data.read_parquet`` datasets to the TorchTrainer, whose workers get

- ``train``: a disjoint shard each (``streaming_split(equal=True)``: as many rows per
  worker, the tail that does not divide evenly dropped, as the in-memory path does),
  read block by block and shuffled in a bounded buffer; and
- ``val``: the whole split each, streamed too, so every rank logs the same numbers
  (read once and kept when it is at most ``KEEP_VAL_BYTES``).

A worker therefore holds a few blocks (tens of MB), whatever the dataset's size.
Ray Data starts a pipeline for every pass; ``ShardBatches`` starts each one in the
background ahead of need (see there).
"""

from __future__ import annotations

import math
import threading
from pathlib import Path
from typing import Any

import numpy as np

from runyard.data.shards import STREAM_DIR, STREAMED, decode
from runyard.data.splits import Splits, StreamedSplits

SHUFFLE_BATCHES = 8
"""Rows are shuffled within chunks of this many batches (and the shards' order is the
seeded split's, already random)."""
PREFETCH_CHUNKS = 2
"""Chunks Ray Data fetches ahead of the one being trained on."""
READ_TASKS = 1
"""Parquet files read at once (one read task reads a few hundred thousand rows a second)."""
BLOCK_BYTES = 16 * 2**20
"""Ray Data's block size when reading: a first batch after 16 MB read, not a whole file."""
READ_AHEAD_BYTES = 256 * 2**20
"""Object store memory a streamed split's pipeline may fill ahead of its consumers. Ray
Data's own limit is a share of the whole store (1.7 GB read ahead on this 24 GB
machine), and every page of it that a worker reads counts in that worker's RSS: with
it, a worker's peak RSS grew with the dataset (2.5 GB at 2 GB of Parquet); with 256 MB,
0.9 GB at the same throughput (``runyard bench -w stream``)."""
KEEP_VAL_BYTES = 64 * 2**20
"""A validation split of at most this many bytes is read once and then kept in memory
(Ray Data would otherwise start a pipeline for it every epoch); a larger one streams."""


def streamed(splits: Splits) -> StreamedSplits | None:
    """``splits`` if its training streams (a dataset prepared with ``stream: true``)."""
    return splits if isinstance(splits, StreamedSplits) and splits.data_dir else None


# --------------------------------------------------------------------------- driver


def datasets(splits: StreamedSplits) -> dict[str, Any]:
    """The Ray Datasets a TorchTrainer streams: ``{"train": ..., "val": ...}``."""
    import ray.data
    from ray.data import DataContext

    quiet_ray_data()
    # num_cpus=0: reading Parquet must not wait for CPUs that the training workers hold
    # (on a machine whose every CPU is a worker's, it would wait for ever). Ray Data's V2
    # Parquet reader lists files in a task that takes a whole CPU whatever num_cpus says;
    # the V1 reader lists them here. A Dataset keeps the context it was made with.
    # num_cpus=0 also means no limit on how many read at once: one task per file, each in
    # a new worker process, would all start together and read the whole dataset ahead of
    # training; READ_TASKS at a time, in blocks of BLOCK_BYTES, keep up with a worker.
    ctx = DataContext.get_current()
    before = ctx.use_datasource_v2, ctx.target_max_block_size
    ctx.use_datasource_v2, ctx.target_max_block_size = False, BLOCK_BYTES
    try:
        return {split: ray.data.read_parquet(str(Path(splits.data_dir) / STREAM_DIR / split), num_cpus=0,
                                             concurrency=READ_TASKS)
                for split in STREAMED}
    finally:
        ctx.use_datasource_v2, ctx.target_max_block_size = before


def data_config():
    """Only ``train`` is split between workers; each validates on the whole of ``val``.
    Each pipeline reads at most ``READ_AHEAD_BYTES`` ahead of its consumers."""
    import warnings

    from ray.train import DataConfig

    with warnings.catch_warnings():  # Ray's own defaults set an option it deprecates
        warnings.simplefilter("ignore")
        options = DataConfig.default_ingest_options()
    options.resource_limits = options.resource_limits.copy(object_store_memory=READ_AHEAD_BYTES)
    return DataConfig(datasets_to_split=["train"], execution_options=options)


def worker_config(splits: StreamedSplits, recipe, where: str = "") -> dict[str, Any]:
    """What a worker needs besides its shards (plain JSON); a recipe the streaming path
    cannot honour is an error."""
    from runyard.errors import RunyardError

    for key in ("train_samples", "label_noise"):
        if getattr(recipe, key, None):
            raise RunyardError(f"{where}recipe.{key}: draws from the whole training split, which a streamed "
                               f"dataset never holds; set stream: false in its files: entry to train in memory")
    return {"rows": dict(splits.rows or {}), "y_shape": list(splits.y_train.shape[1:]),
            "y_dtype": splits.y_train.dtype.str}


def quiet_ray_data() -> None:
    """Ray Data's progress bars and per-dataset INFO lines, once per epoch per worker."""
    import logging

    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.print_on_execution_start = False
    logging.getLogger("ray.data").setLevel(logging.WARNING)


# --------------------------------------------------------------------------- worker


def digest(ids: np.ndarray) -> int:
    """An order-free fingerprint of a set of sample ids (a sum of their 64-bit hashes):
    the digests of disjoint shards add up to the digest of their union."""
    z = np.asarray(ids, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
        return int(z.sum(dtype=np.uint64))


class ShardBatches:
    """(x, y) batches of one worker's shard (a ``ray.data.DataIterator``), as
    ``loaders.TensorBatches`` gives them from memory: same dtypes, shapes and count.

    Each epoch shuffles within chunks of ``SHUFFLE_BATCHES`` batches, seeded with
    ``seed + epoch``; ``augment`` (a recipe's ``Augment``) as in memory. The first epoch
    prints the rows this worker saw and their ``digest`` (what tests check shards by).

    Ray Data starts a pipeline for every pass over the shard (an executor, reading
    tasks: seconds for the first, tenths after). ``start`` begins the next pass in a
    background thread, so that start-up overlaps the worker's own work: called when the
    data module is made (model and trainer set-up) and, with ``prestart``, as soon as a
    pass has received its last chunk (the epoch's last steps and its validation). A
    split at most ``keep_bytes`` (the validation split, when small) is kept after its
    first pass and served from memory: a bounded copy, never the training shard.
    """

    def __init__(self, shard, rows: int, batch_size: int, input_shape, y_shape, y_dtype, *, shuffle=False,
                 seed=0, rank=0, world_size=1, augment=None, label="", prestart=False, keep_bytes=0):
        self.shard, self.batch_size = shard, batch_size
        self.rows = rows - rows % world_size if label == "train" else rows
        self.per_rank = self.rows // world_size if label == "train" else rows
        self.input_shape, self.y_shape, self.y_dtype = tuple(input_shape), tuple(y_shape), np.dtype(y_dtype)
        self.shuffle, self.seed, self.rank, self.world_size = shuffle, seed, rank, world_size
        self.augment, self.label = augment, label
        self.epoch = 0
        self.prestart = prestart
        row_bytes = 4 * math.prod(self.input_shape) + self.y_dtype.itemsize * math.prod(self.y_shape)
        self.keep = bool(keep_bytes) and self.per_rank * row_bytes <= keep_bytes
        self._started = None  # (thread, box) of a pass begun by start()
        self._kept = None  # the whole split's chunks, once read, when it is kept
        self.then: ShardBatches | None = None  # started once this one's first chunk is in

    def __len__(self) -> int:
        return math.ceil(self.per_rank / self.batch_size)

    def _chunks(self):
        """This pass's chunks as NumPy arrays ``(ids, x, y)``, decoded without a copy."""
        tables = self.shard.iter_batches(batch_size=SHUFFLE_BATCHES * self.batch_size, batch_format="pyarrow",
                                         drop_last=False, prefetch_batches=PREFETCH_CHUNKS)
        for t in tables:
            yield (t.column("id").to_numpy(), decode(t.column("x"), np.float32, self.input_shape),
                   decode(t.column("y"), self.y_dtype, self.y_shape))

    def start(self) -> None:
        """Begin the next pass over the shard (up to its first chunk) in the background."""
        if self._started is not None or self._kept is not None:
            return
        box: dict[str, Any] = {}

        def first():
            try:
                chunks = self._chunks()
                box["first"], box["chunks"] = next(chunks, None), chunks
            except BaseException as e:  # handed to whoever iterates
                box["error"] = e

        thread = threading.Thread(target=first, name=f"runyard-stream-{self.label}", daemon=True)
        thread.start()
        self._started = (thread, box)

    def _pass(self):
        """One pass's chunks; the next pass is started once this one's last chunk is in."""
        if self._kept is not None:
            yield from self._kept
            return
        self.start()
        (thread, box), self._started = self._started, None
        thread.join()
        if "error" in box:
            raise box["error"]
        chunk, chunks = box["first"], box["chunks"]
        if self.then is not None:  # not before: two pipelines starting at once slow each other down
            self.then.start()
            self.then = None
        kept = [] if self.keep else None
        while chunk is not None:
            following = next(chunks, None)  # Ray Data has it prefetched: no wait in the steady state
            if kept is not None:
                kept.append(chunk)
            if following is None:
                if kept is not None:
                    self._kept = kept
                elif self.prestart:
                    self.start()
            yield chunk
            chunk = following

    def __iter__(self):
        import torch

        epoch, self.epoch = self.epoch, self.epoch + 1
        gen = None
        if self.augment is not None:
            from runyard.data import augment as augmentation
            from runyard.data.loaders import AUGMENT_STREAM

            # The in-memory loader's stream: (seed, epoch, rank), apart from the shuffle's.
            entropy = [self.seed % 2**64, epoch, self.rank, AUGMENT_STREAM]
            state = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
            gen = torch.Generator().manual_seed(int(state))
        count, fingerprint = 0, 0
        # Ray Data hands over SHUFFLE_BATCHES batches at a time, permuted here with torch:
        # its own local shuffle buffer costs more per row than the model's step does.
        order_gen = torch.Generator().manual_seed(self.seed + epoch)
        for ids, xs, ys in self._pass():
            if epoch == 0 and self.label == "train":
                count, fingerprint = count + len(ids), (fingerprint + digest(ids)) % 2**64
                # Before the last batch's step: Lightning stops asking after len(self) batches.
                if count >= self.per_rank:
                    print(f"runyard: streamed shard rank={self.rank} world={self.world_size} epoch=0 "
                          f"rows={count} digest={fingerprint:#018x}", flush=True)
            order = (torch.randperm(len(ys), generator=order_gen) if self.shuffle else torch.arange(len(ys))).numpy()
            for start in range(0, len(ys), self.batch_size):
                take = order[start:start + self.batch_size]  # a copy of Arrow's read-only rows: torch may own it
                x, y = torch.from_numpy(xs[take]), torch.from_numpy(ys[take])
                yield (x, y) if gen is None else augmentation.augment(x, y, self.augment, gen)


def data_module(train_shard, val_shard, stream: dict[str, Any], input_shape, batch_size: int, seed: int,
                rank: int, world_size: int, augment=None, shuffle: bool = True):
    """The LightningDataModule of a streamed training: this worker's ``train`` shard and
    the whole ``val`` split (both ``ray.data.DataIterator``s)."""
    import lightning.pytorch as pl

    quiet_ray_data()
    y_layout = {"y_shape": stream["y_shape"], "y_dtype": stream["y_dtype"]}
    train = ShardBatches(train_shard, stream["rows"]["train"], batch_size, input_shape, **y_layout,
                         shuffle=shuffle, seed=seed, rank=rank, world_size=world_size, augment=augment,
                         label="train", prestart=True)
    val = ShardBatches(val_shard, stream["rows"]["val"], 4096, input_shape, **y_layout, label="val",
                       keep_bytes=KEEP_VAL_BYTES)
    train.start()  # Ray Data's first pipeline starts while the model and trainer are set up
    if val.keep:  # and the validation split's once training has its first chunk: read during epoch 0
        train.then = val

    class StreamDataModule(pl.LightningDataModule):
        def train_dataloader(self):
            return train

        def val_dataloader(self):
            return val

        # As SplitsDataModule: the epoch counter travels with checkpoints (shuffle seeds).
        def state_dict(self):
            return {"train_epoch": train.epoch}

        def load_state_dict(self, state):
            train.epoch = state["train_epoch"]

    return StreamDataModule()
