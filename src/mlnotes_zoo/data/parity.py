"""Parity vectors (Graves 2016; Banino et al. 2021, §3.1): the embedded default for PonderNet.

A vector of ``n_elems`` entries has k of them set to ±1 (each sign with probability ½) at
random positions and the rest 0; its label is the parity of k, the count of non-zero
entries (1 when odd). A "parity problem of size L" has k uniform in 1..L. As in the paper,
training uses the smaller sizes (k ≤ ``train_max_nonzero``) and an extrapolation set has
only larger ones (k > ``train_max_nonzero``, up to ``n_elems``).

Every split is a deterministic function of its seed. Training draws fresh vectors every
epoch (from ``seed`` and the epoch number), so the model never sees the same finite set
twice, as in the paper's on-the-fly generation; validation and test sets are fixed and
depend on ``split_seed`` only.

Batches are ``(x (B, n_elems) float, y (B,) float in {0, 1}, num_nonzero (B,) int64)``.
Validation and test have two dataloaders: 0 = interpolation (k in 1..train_max_nonzero),
1 = extrapolation (k in train_max_nonzero+1..n_elems; absent when that range is empty).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, TensorDataset

from mlnotes_zoo.constraints import NonNegativeInt, PositiveInt, Seed
from mlnotes_zoo.data.base import DataModule

__all__ = ["ParityDataModule", "make_parity"]


def make_parity(
    num: int, n_elems: int, min_nonzero: int, max_nonzero: int, generator: torch.Generator
) -> tuple[Tensor, Tensor, Tensor]:
    """``num`` parity examples with k ~ Uniform{min_nonzero..max_nonzero} non-zero entries.

    Returns (x (num, n_elems) float in {−1, 0, 1}, y (num,) float parity of k, k (num,)).
    """
    if not 1 <= min_nonzero <= max_nonzero <= n_elems:
        raise ValueError(
            f"need 1 <= min_nonzero ({min_nonzero}) <= max_nonzero ({max_nonzero}) "
            f"<= n_elems ({n_elems})")
    k = torch.randint(min_nonzero, max_nonzero + 1, (num,), generator=generator)
    signs = torch.randint(0, 2, (num, n_elems), generator=generator).float() * 2 - 1
    # Random positions: rank the entries by a random key; the k lowest ranks are non-zero.
    ranks = torch.rand(num, n_elems, generator=generator).argsort(dim=1).argsort(dim=1)
    x = signs * (ranks < k.unsqueeze(1)).float()
    return x, (k % 2).float(), k


class _EpochBatches(Dataset):
    """Batch i of epoch e is generated from seed (seed, e, i): fresh data, reproducible."""

    def __init__(self, *, num_batches: int, batch_size: int, n_elems: int, min_nonzero: int,
                 max_nonzero: int, seed: int) -> None:
        self.num_batches, self.batch_size = num_batches, batch_size
        self.n_elems, self.min_nonzero, self.max_nonzero = n_elems, min_nonzero, max_nonzero
        self.seed = seed

    def __len__(self) -> int:
        return self.num_batches

    def __getitem__(self, index: tuple[int, int]) -> tuple[Tensor, Tensor, Tensor]:
        epoch, i = index
        g = torch.Generator().manual_seed(hash((self.seed, epoch, i)) & (2**63 - 1))
        return make_parity(self.batch_size, self.n_elems, self.min_nonzero, self.max_nonzero, g)


class _EpochSampler(Sampler):
    """Yields (epoch, i) for i in a seeded random order; Lightning calls ``set_epoch``."""

    def __init__(self, num_batches: int) -> None:
        self.num_batches = num_batches
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_batches

    def __iter__(self) -> Iterator[tuple[int, int]]:
        return ((self.epoch, i) for i in range(self.num_batches))


class ParityDataModule(DataModule):
    """Parity of the number of ±1 entries, in-distribution and extrapolation sets.

    Args:
        n_elems: length of every input vector (the network's ``in_features``).
        train_max_nonzero: largest k seen in training (and in the interpolation sets).
        train_size: training examples per epoch (fresh each epoch).
        val_size, test_size: examples in each validation / test set (interpolation and
            extrapolation get this many each).
        batch_size: examples per training batch (evaluation batches are 4 times larger).
        seed: seed of the training stream (epoch e draws from (seed, e)).
        split_seed: seed of the fixed validation and test sets.
        num_workers: DataLoader workers (0: generate in the main process, fastest here).
    """

    def __init__(
        self,
        *,
        n_elems: PositiveInt = 16,
        train_max_nonzero: PositiveInt = 12,
        train_size: PositiveInt = 25_600,
        val_size: PositiveInt = 2_000,
        test_size: PositiveInt = 10_000,
        batch_size: PositiveInt = 128,
        seed: Seed = 0,
        split_seed: Seed = 1234,
        num_workers: NonNegativeInt = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        if train_max_nonzero > n_elems:
            raise ValueError(
                f"train_max_nonzero must be in 1..n_elems ({n_elems}), got {train_max_nonzero}")
        if train_size < batch_size:
            raise ValueError(f"need batch_size ({batch_size}) <= train_size ({train_size})")
        self.n_elems = n_elems
        self.train_max_nonzero = train_max_nonzero
        self.train_size = train_size
        self.val_size = val_size
        self.test_size = test_size
        self.seed = seed
        self.split_seed = split_seed

    @property
    def has_extrapolation(self) -> bool:
        return self.train_max_nonzero < self.n_elems

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        # Fixed evaluation sets: one generator per (split, range), from split_seed only.
        for s, (name, size) in enumerate((("val", self.val_size), ("test", self.test_size))):
            ranges = [(1, self.train_max_nonzero)]
            if self.has_extrapolation:
                ranges.append((self.train_max_nonzero + 1, self.n_elems))
            self.splits[name] = [
                TensorDataset(*make_parity(
                    size, self.n_elems, lo, hi,
                    torch.Generator().manual_seed(self.split_seed * 1000 + 10 * s + r)))
                for r, (lo, hi) in enumerate(ranges)
            ]

    @property
    def eval_batch_size(self) -> int:
        return self.batch_size * 4  # no backward pass: larger batches fit

    def train_dataloader(self) -> DataLoader:
        num_batches = self.train_size // self.batch_size
        batches = _EpochBatches(
            num_batches=num_batches, batch_size=self.batch_size, n_elems=self.n_elems,
            min_nonzero=1, max_nonzero=self.train_max_nonzero, seed=self.seed)
        # batch_size=None: the dataset yields whole batches (vectorised generation).
        return self.loader(batches, batch_size=None, sampler=_EpochSampler(num_batches))
