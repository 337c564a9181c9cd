"""In-memory batches: DDP-style sharding, per-epoch permutations, resumable epoch counter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from runyard.data.loaders import SplitsDataModule, TensorBatches
from runyard.data.splits import Splits


def make_data(n: int):
    # x encodes the sample index so every batch can be traced back to its samples.
    x = torch.arange(n, dtype=torch.float32).unsqueeze(1) * torch.ones(1, 3)
    y = torch.arange(n)
    return x, y


def one_epoch(loader) -> list[torch.Tensor]:
    batches = []
    for xb, yb in loader:
        assert torch.equal(xb[:, 0].long(), yb)  # x and y stay paired
        batches.append(yb)
    return batches


def shards(n, batch_size, world_size, *, shuffle=True, seed=0, epoch=0):
    x, y = make_data(n)
    out = []
    for rank in range(world_size):
        loader = TensorBatches(x, y, batch_size, shuffle=shuffle, seed=seed, rank=rank,
                               world_size=world_size)
        loader.epoch = epoch
        batches = one_epoch(loader)
        out.append((loader, batches))
    return out


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("n,batch_size", [(30, 4), (31, 4), (32, 5), (7, 10), (100, 7)])
def test_shards_are_disjoint_and_cover_all_but_the_tail(n, batch_size, world_size):
    per_rank = shards(n, batch_size, world_size)
    seen = [torch.cat(batches).tolist() for _, batches in per_rank]
    everything = [i for s in seen for i in s]
    assert len(everything) == len(set(everything))  # disjoint, no repeats
    assert set(everything) <= set(range(n))
    assert len(everything) == n - n % world_size  # only the < world_size tail is dropped
    assert all(len(s) == n // world_size for s in seen)


@pytest.mark.parametrize("world_size", [1, 2, 3])
@pytest.mark.parametrize("n,batch_size", [(30, 4), (31, 4), (32, 5), (7, 10), (100, 7), (2, 1)])
def test_every_rank_yields_the_same_number_of_batches(n, batch_size, world_size):
    per_rank = shards(n, batch_size, world_size)
    counts = {len(batches) for _, batches in per_rank}
    assert len(counts) == 1
    for loader, batches in per_rank:
        assert len(loader) == len(batches)
        assert all(len(b) <= batch_size for b in batches)
        assert all(len(b) == batch_size for b in batches[:-1])


def test_len_examples():
    x, y = make_data(10)
    assert len(TensorBatches(x, y, 3)) == 4
    assert len(TensorBatches(x, y, 3, world_size=3, rank=2)) == 1
    assert len(TensorBatches(x, y, 10)) == 1
    assert len(TensorBatches(x[:0], y[:0], 3)) == 0
    assert list(TensorBatches(x[:0], y[:0], 3)) == []


def test_permutation_differs_between_epochs_and_repeats_for_same_seed_and_epoch():
    x, y = make_data(50)
    loader = TensorBatches(x, y, 8, shuffle=True, seed=3)
    e0, e1 = torch.cat(one_epoch(loader)), torch.cat(one_epoch(loader))
    assert loader.epoch == 2
    assert sorted(e0.tolist()) == sorted(e1.tolist()) == list(range(50))
    assert not torch.equal(e0, e1)
    assert e0.tolist() != list(range(50))
    again = TensorBatches(x, y, 8, shuffle=True, seed=3)
    assert torch.equal(torch.cat(one_epoch(again)), e0)
    assert torch.equal(torch.cat(one_epoch(again)), e1)
    other_seed = TensorBatches(x, y, 8, shuffle=True, seed=4)
    assert not torch.equal(torch.cat(one_epoch(other_seed)), e0)


def test_permutation_is_shared_by_ranks():
    # Rank r takes every world_size-th element of the same permutation.
    (_, r0), (_, r1) = shards(20, 3, 2, seed=9, epoch=5)
    (_, whole), = shards(20, 100, 1, seed=9, epoch=5)
    perm = whole[0]
    assert torch.equal(torch.cat(r0), perm[0::2])
    assert torch.equal(torch.cat(r1), perm[1::2])


@pytest.mark.parametrize("world_size", [1, 2, 3])
def test_no_shuffle_keeps_order(world_size):
    n = 17
    for rank, (loader, batches) in enumerate(shards(n, 4, world_size, shuffle=False)):
        got = torch.cat(batches).tolist()
        assert got == list(range(n - n % world_size))[rank::world_size]
        assert torch.cat(one_epoch(loader)).tolist() == got  # and every epoch alike


# --------------------------------------------------------------------------- the data module


def tiny_splits(n_train=23) -> Splits:
    def part(n, start):
        idx = np.arange(start, start + n)
        return np.repeat(idx[:, None], 3, axis=1).astype(np.float32), idx.astype(np.int64)

    return Splits(*part(n_train, 0), *part(5, 100), *part(6, 200))


def test_datamodule_loaders():
    dm = SplitsDataModule(tiny_splits(), batch_size=4, seed=0)
    train = torch.cat(one_epoch(dm.train_dataloader()))
    assert sorted(train.tolist()) == list(range(23))
    val = one_epoch(dm.val_dataloader())
    assert len(val) == 1 and val[0].tolist() == list(range(100, 105))
    test = one_epoch(dm.test_dataloader())
    assert len(test) == 1 and test[0].tolist() == list(range(200, 206))


def test_datamodule_validates_everything_on_every_rank():
    for rank in range(2):
        dm = SplitsDataModule(tiny_splits(), batch_size=4, seed=0, rank=rank, world_size=2)
        assert torch.cat(one_epoch(dm.val_dataloader())).tolist() == list(range(100, 105))
        assert len(torch.cat(one_epoch(dm.train_dataloader()))) == 11


def test_datamodule_copies_read_only_arrays():
    s = tiny_splits()
    for arr in s.arrays().values():
        arr.setflags(write=False)
    dm = SplitsDataModule(s, batch_size=4, seed=0)
    dm.tensors["x_train"][0, 0] = -1.0
    assert s.x_train[0, 0] == 0.0


def test_datamodule_state_dict_restores_epoch_counter():
    dm = SplitsDataModule(tiny_splits(), batch_size=4, seed=11)
    for _ in range(3):
        one_epoch(dm.train_dataloader())
    state = dm.state_dict()
    assert state == {"train_epoch": 3}
    expected_next = torch.cat(one_epoch(dm.train_dataloader()))

    resumed = SplitsDataModule(tiny_splits(), batch_size=4, seed=11)
    fresh_first = torch.cat(one_epoch(SplitsDataModule(tiny_splits(), 4, 11).train_dataloader()))
    resumed.load_state_dict(state)
    got = torch.cat(one_epoch(resumed.train_dataloader()))
    assert torch.equal(got, expected_next)
    assert not torch.equal(got, fresh_first)
    assert resumed.state_dict() == {"train_epoch": 4}
