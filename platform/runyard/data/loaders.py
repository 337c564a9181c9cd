"""In-memory batches for small datasets, and the LightningDataModule around them.

torch's DataLoader over a TensorDataset indexes and collates sample by sample; on
course-sized data that costs more than the model's forward pass. Slicing a
permuted index tensor gives the same batches at a fraction of the cost.
"""

from __future__ import annotations

import lightning.pytorch as pl
import numpy as np
import torch

from runyard.data import augment as augmentation

AUGMENT_STREAM = 0xA06


class TensorBatches:
    """Iterate (x, y) batches of in-memory tensors, sharded for data parallelism.

    Each epoch draws a permutation from ``seed + epoch``; every rank draws the same
    one and takes every ``world_size``-th index, like DistributedSampler. The tail
    that does not divide evenly across ranks is dropped so every rank sees the same
    number of batches (unequal counts would hang DDP's all-reduce).

    With ``augment`` (a recipe's ``Augment``) every batch is augmented, with random
    draws from ``(seed, epoch, rank)``: the same on a rerun or a resume, different on
    each rank and in each epoch.
    """

    def __init__(self, x, y, batch_size, *, shuffle=False, seed=0, rank=0, world_size=1, augment=None):
        self.x, self.y = x, y
        self.batch_size, self.shuffle, self.seed = batch_size, shuffle, seed
        self.rank, self.world_size = rank, world_size
        self.augment = augment
        self.epoch = 0

    def _indices(self) -> torch.Tensor:
        n = len(self.y) - len(self.y) % self.world_size
        if self.shuffle:
            gen = torch.Generator().manual_seed(self.seed + self.epoch)
            order = torch.randperm(len(self.y), generator=gen)[:n]
        else:
            order = torch.arange(n)
        return order[self.rank :: self.world_size]

    def __len__(self) -> int:
        per_rank = (len(self.y) - len(self.y) % self.world_size) // self.world_size
        return -(-per_rank // self.batch_size)

    def __iter__(self):
        idx = self._indices()
        gen = None if self.augment is None else self._augment_generator()
        self.epoch += 1
        for start in range(0, len(idx), self.batch_size):
            take = idx[start : start + self.batch_size]
            if gen is None:
                yield self.x[take], self.y[take]
            else:
                yield augmentation.augment(self.x[take], self.y[take], self.augment, gen)

    def _augment_generator(self) -> torch.Generator:
        # A stream of its own, apart from the permutations' seed + epoch.
        entropy = [self.seed % 2**64, self.epoch, self.rank, AUGMENT_STREAM]
        seed = np.random.SeedSequence(entropy).generate_state(1, np.uint64)[0]
        return torch.Generator().manual_seed(int(seed))


class SplitsDataModule(pl.LightningDataModule):
    """Train/val/test loaders over prepared splits; ``batch_size`` is per rank.

    ``augment`` (a recipe's ``Augment``, or None) applies to the training batches only.
    ``shuffle``: a new order of the training samples every epoch; False: the data's own
    order, every epoch alike (the MNIST-1D paper's training loop).
    """

    def __init__(self, splits, batch_size: int, seed: int, rank: int = 0, world_size: int = 1,
                 augment=None, shuffle: bool = True):
        super().__init__()
        # Copies: arrays from Ray's object store are read-only views.
        self.tensors = {name: torch.tensor(arr) for name, arr in splits.arrays().items()}
        self.batch_size, self.seed = batch_size, seed
        self.rank, self.world_size = rank, world_size
        self._train = TensorBatches(
            self.tensors["x_train"], self.tensors["y_train"], batch_size,
            shuffle=shuffle, seed=seed, rank=rank, world_size=world_size, augment=augment,
        )

    def train_dataloader(self):
        return self._train

    def val_dataloader(self):
        # Every rank validates on the whole (small) split: identical numbers, no sync.
        return TensorBatches(self.tensors["x_val"], self.tensors["y_val"], 4096)

    def test_dataloader(self):
        return TensorBatches(self.tensors["x_test"], self.tensors["y_test"], 4096)

    # The epoch counter travels with Lightning checkpoints, so a resumed run draws
    # the same permutations it would have drawn without the interruption.
    def state_dict(self):
        return {"train_epoch": self._train.epoch}

    def load_state_dict(self, state):
        self._train.epoch = state["train_epoch"]
