"""Length-bucketed training batches of the CTC models (data/spoken_symbols.py
LengthBucketSampler, ``data.bucket_pool``): every utterance once per epoch, batches of
neighbours in length, the same batches a DataLoader reads, seeded by torch's generator."""

from __future__ import annotations

import pytest
import torch

from mlnotes_zoo.data.spoken_symbols import LengthBucketSampler, SpokenSymbolsDataModule
from mlnotes_zoo.resume import ResumableDataLoader

LENGTHS = torch.randint(100, 10_000, (203,), generator=torch.Generator().manual_seed(3)).tolist()


def _batches(sampler: LengthBucketSampler) -> list[list[int]]:
    return [list(map(int, b)) for b in ResumableDataLoader(range(len(sampler.lengths)),
                                                           batch_size=sampler.batch_size,
                                                           sampler=sampler)]


@pytest.mark.parametrize("pool", [1, 3, 100])
def test_each_epoch_reads_every_index_once_in_the_sampler_batches(pool):
    sampler = LengthBucketSampler(LENGTHS, batch_size=8, pool=pool)
    torch.manual_seed(0)
    read = _batches(sampler)
    assert sorted(i for b in read for i in b) == list(range(len(LENGTHS)))
    assert [len(b) for b in read] == [8] * 25 + [3]  # one short batch, last
    torch.manual_seed(0)
    batches = sampler.batches()
    torch.manual_seed(0)
    assert [i for b in batches for i in b] == list(sampler)
    torch.manual_seed(0)
    assert _batches(sampler) == read  # seeded: the same epoch again
    assert _batches(sampler) != read  # the next epoch: another order


def test_one_pool_is_the_sorted_order_cut_into_batches():
    sampler = LengthBucketSampler(LENGTHS, batch_size=8, pool=1000)
    by_length = sorted(range(len(LENGTHS)), key=lambda i: (LENGTHS[i], i))
    expected = {tuple(by_length[k : k + 8]) for k in range(0, len(LENGTHS), 8)}
    torch.manual_seed(1)
    assert {tuple(b) for b in sampler.batches()} == expected
    # a DataLoader of the same batch size reads exactly these batches
    assert {tuple(sorted(b, key=lambda i: (LENGTHS[i], i))) for b in _batches(sampler)} == expected


def test_pools_cut_padding_against_plain_shuffling():
    def padded(batches):  # samples a batch padded to its longest member computes
        return sum(len(b) * max(LENGTHS[i] for i in b) for b in batches)

    torch.manual_seed(2)
    plain = torch.randperm(len(LENGTHS)).split(8)
    bucketed = LengthBucketSampler(LENGTHS, batch_size=8, pool=8).batches()
    assert padded(bucketed) < 0.8 * padded([b.tolist() for b in plain])
    assert padded(bucketed) >= sum(LENGTHS)


def test_data_module_buckets_training_batches_only():
    data = SpokenSymbolsDataModule(train_size=96, val_size=8, test_size=8, batch_size=8,
                                   bucket_pool=4)
    data.setup("fit")
    assert isinstance(data.train_dataloader().sampler, LengthBucketSampler)
    torch.manual_seed(0)
    lengths = [int(n) for _, n, _, _ in data.train_dataloader() for n in n]
    assert sorted(lengths) == sorted(len(a) for a, _ in data.splits["train"].utterances)
    assert not isinstance(data.val_dataloader().sampler, LengthBucketSampler)
    plain = SpokenSymbolsDataModule(train_size=96, val_size=8, test_size=8, batch_size=8)
    plain.setup("fit")
    assert not isinstance(plain.train_dataloader().sampler, LengthBucketSampler)


def test_rejects_empty_batches_or_pools():
    with pytest.raises(ValueError, match="pool must be >= 1"):
        LengthBucketSampler(LENGTHS, batch_size=8, pool=0)
