"""Parity data: labels, non-zero counts, ranges, determinism, fresh data per epoch."""

from __future__ import annotations

import pytest
import torch

from mlnotes_zoo.data.parity import ParityDataModule, make_parity


def test_make_parity_labels_counts_and_ranges():
    x, y, k = make_parity(4000, 12, 3, 7, torch.Generator().manual_seed(0))
    assert x.shape == (4000, 12) and set(x.unique().tolist()) == {-1.0, 0.0, 1.0}
    nonzero = (x != 0).sum(1)
    assert torch.equal(nonzero, k)
    assert k.min() == 3 and k.max() == 7
    # label: parity of the number of ±1 entries, counted independently
    assert torch.equal(y, torch.tensor([float(sum(v != 0 for v in row) % 2) for row in x.tolist()]))
    # k uniform over 3..7, signs balanced, positions spread over the whole vector
    counts = torch.bincount(k, minlength=8)[3:].float() / 4000
    torch.testing.assert_close(counts, torch.full((5,), 0.2), atol=0.03, rtol=0)
    assert abs(x.sum() / (x != 0).sum()) < 0.05
    assert ((x != 0).float().mean(0) > 0.3).all()
    with pytest.raises(ValueError, match="max_nonzero"):
        make_parity(2, 4, 1, 5, torch.Generator())


def _dm(**kwargs) -> ParityDataModule:
    dm = ParityDataModule(**{"n_elems": 10, "train_max_nonzero": 6, "train_size": 64,
                             "val_size": 50, "test_size": 40, "batch_size": 16, **kwargs})
    dm.setup()
    return dm


def test_splits_interpolation_and_extrapolation_ranges():
    dm = _dm()
    val, test = dm.val_dataloader(), dm.test_dataloader()
    assert len(val) == 2 and len(test) == 2
    for loaders, size in ((val, 50), (test, 40)):
        interp = torch.cat([b[2] for b in loaders[0]])
        extrap = torch.cat([b[2] for b in loaders[1]])
        assert len(interp) == len(extrap) == size
        assert interp.min() >= 1 and interp.max() <= 6
        assert extrap.min() >= 7 and extrap.max() <= 10
    train = list(dm.train_dataloader())
    assert len(train) == 4
    x, y, k = train[0]
    assert x.shape == (16, 10) and k.max() <= 6
    assert len(_dm(train_max_nonzero=10).val_dataloader()) == 1  # nothing to extrapolate to


def test_generation_is_deterministic_and_training_data_changes_each_epoch():
    a, b = _dm(), _dm()
    torch.testing.assert_close(a.splits["test"][1].tensors, b.splits["test"][1].tensors)
    # evaluation sets depend on split_seed only, not on the training seed
    torch.testing.assert_close(_dm(seed=5).splits["val"][0].tensors, a.splits["val"][0].tensors)
    assert not torch.equal(_dm(split_seed=7).splits["val"][0].tensors[0],
                           a.splits["val"][0].tensors[0])

    def epoch(dm, e):
        loader = dm.train_dataloader()
        loader.sampler.set_epoch(e)  # what Lightning calls before each epoch
        return torch.cat([batch[0] for batch in loader])

    torch.testing.assert_close(epoch(a, 0), epoch(b, 0))
    torch.testing.assert_close(epoch(a, 3), epoch(b, 3))
    assert not torch.equal(epoch(a, 0), epoch(a, 1))
    assert not torch.equal(epoch(a, 0), epoch(_dm(seed=1), 0))


def test_argument_checks():
    with pytest.raises(ValueError, match="train_max_nonzero"):
        ParityDataModule(n_elems=8, train_max_nonzero=9)
    with pytest.raises(ValueError, match="batch_size"):
        ParityDataModule(train_size=8, batch_size=16)
