"""Image DataModules: the embedded digits, and real on-disk formats written by the tests."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from mlnotes_zoo.data import (
    BadDataError,
    CIFAR10DataModule,
    DataNotFoundError,
    DigitsDataModule,
    FashionMNISTDataModule,
    MNISTDataModule,
    ParityDataModule,
)
from mlnotes_zoo.data.base import seeded_split
from mlnotes_zoo.errors import ZooError


def _setup(dm):
    dm.setup("fit")
    return dm


def test_digits_splits_are_disjoint_fixed_and_cover_the_set():
    dm = _setup(DigitsDataModule(batch_size=32))
    sizes = {k: len(v) for k, v in dm.splits.items()}
    assert sizes == {"test": 360, "val": 180, "train": 1797 - 540}
    reference = torch.from_numpy(load_digits().images).float().div(16)
    rows = {split: {tuple(x.flatten().tolist()) for x, _ in ds} for split, ds in dm.splits.items()}
    every = {tuple(x.flatten().tolist()) for x in reference}
    assert rows["train"] | rows["val"] | rows["test"] <= every
    # The test split does not move with the training seed.
    other = _setup(DigitsDataModule(batch_size=32, seed=123))
    assert torch.equal(other.splits["test"].tensors[0], dm.splits["test"].tensors[0])
    x, y = next(iter(dm.train_dataloader()))
    assert x.shape == (32, 1, 8, 8) and x.min() >= 0 and x.max() <= 1 and y.dtype == torch.long


def test_seeded_split_is_consecutive_chunks_of_one_seeded_permutation():
    # the split every DataModule used before random_split: the same indices, in order
    order = torch.randperm(50, generator=torch.Generator().manual_seed(3)).tolist()
    parts = seeded_split(50, {"test": 10, "val": 5, "train": 35}, seed=3)
    assert parts == {"test": order[:10], "val": order[10:15], "train": order[15:]}
    assert seeded_split(50, {"test": 10, "val": 5, "train": 35}, seed=4) != parts


def test_reference_data_is_the_stored_split_set_up_on_first_use():
    dm = DigitsDataModule(batch_size=32)
    test = dm.reference_data("test")  # no setup call first
    x, y = test.tensors
    assert x.shape == (360, 1, 8, 8) and torch.equal(y, dm.splits["test"].tensors[1])
    assert dm.reference_data("train") is dm.splits["train"]
    # parity draws its training data afresh each epoch: no fixed training split
    parity = ParityDataModule(n_elems=4, train_max_nonzero=2, train_size=8, val_size=4,
                              test_size=4, batch_size=4)
    with pytest.raises(KeyError, match="no fixed 'train' split"):
        parity.reference_data("train")
    assert len(parity.reference_data("val")) == 2  # interpolation and extrapolation sets


def test_data_errors_are_zoo_errors():
    assert issubclass(BadDataError, ZooError) and issubclass(BadDataError, ValueError)
    assert issubclass(DataNotFoundError, ZooError)
    assert issubclass(DataNotFoundError, FileNotFoundError)


def test_digits_resize_and_channels():
    dm = _setup(DigitsDataModule(batch_size=4, image_size=16, channels=3))
    x, _ = next(iter(dm.val_dataloader()))
    assert x.shape == (4, 3, 16, 16) and 0 <= x.min() and x.max() <= 1
    assert dm.in_shape == (3, 16, 16)


def test_bad_sizes_are_clear_errors():
    with pytest.raises(ValueError, match="val_size"):
        DigitsDataModule(val_size=1000, test_size=1000)
    with pytest.raises(ValueError, match="channels"):
        DigitsDataModule(channels=2)


def _write_idx(path: Path, array: np.ndarray) -> None:
    # IDX format: magic (0, 0, dtype=0x08 ubyte, ndim), big-endian dims, then the bytes.
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    header += struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.astype(np.uint8).tobytes())


def _write_mnist(root: Path, folder: str, n_train: int = 30, n_test: int = 10) -> tuple:
    rng = np.random.default_rng(0)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
        labels = rng.integers(0, 10, size=(n,), dtype=np.uint8)
        _write_idx(root / folder / "raw" / f"{split}-images-idx3-ubyte", images)
        _write_idx(root / folder / "raw" / f"{split}-labels-idx1-ubyte", labels)
        arrays[split] = (images, labels)
    return arrays


@pytest.mark.parametrize("cls, folder", [(MNISTDataModule, "MNIST"),
                                         (FashionMNISTDataModule, "FashionMNIST")])
def test_mnist_family_reads_idx_files(tmp_path, cls, folder):
    arrays = _write_mnist(tmp_path, folder)
    dm = _setup(cls(root=str(tmp_path), batch_size=8, val_size=6))
    assert {k: len(v) for k, v in dm.splits.items()} == {"val": 6, "train": 24, "test": 10}
    x_test, y_test = dm.splits["test"].tensors
    torch.testing.assert_close(x_test[:, 0], torch.from_numpy(arrays["t10k"][0]).float() / 255)
    assert torch.equal(y_test, torch.from_numpy(arrays["t10k"][1]).long())


def test_cifar10_reads_pickled_batches(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    folder.mkdir()
    rng = np.random.default_rng(0)
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(4, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=4).tolist()
        with open(folder / name, "wb") as f:
            pickle.dump({"batch_label": name, "data": data, "labels": labels}, f)
        batches[name] = (data, labels)
    with open(folder / "batches.meta", "wb") as f:
        pickle.dump({"label_names": [f"c{i}" for i in range(10)]}, f)
    dm = _setup(CIFAR10DataModule(root=str(tmp_path), batch_size=4, val_size=5))
    assert {k: len(v) for k, v in dm.splits.items()} == {"val": 5, "train": 15, "test": 4}
    x_test, y_test = dm.splits["test"].tensors
    expected = torch.from_numpy(batches["test_batch"][0]).reshape(4, 3, 32, 32).float() / 255
    torch.testing.assert_close(x_test, expected)
    assert y_test.tolist() == batches["test_batch"][1]
    grey = _setup(CIFAR10DataModule(root=str(tmp_path), batch_size=4, val_size=5, channels=1))
    assert grey.splits["test"].tensors[0].shape == (4, 1, 32, 32)


@pytest.mark.parametrize("cls, where", [(MNISTDataModule, "MNIST/raw"),
                                        (FashionMNISTDataModule, "FashionMNIST/raw"),
                                        (CIFAR10DataModule, "cifar-10-batches-py")])
def test_missing_root_says_where_the_files_go(tmp_path, cls, where):
    with pytest.raises(FileNotFoundError) as err:
        _setup(cls(root=str(tmp_path / "nothing")))
    message = str(err.value)
    assert where in message and "nothing" in message and "data.root" in message


def test_mnist_dynamic_binarization_draws_train_pixels_afresh_and_fixes_val_test(tmp_path):
    _write_mnist(tmp_path, "MNIST")
    dm = _setup(MNISTDataModule(root=str(tmp_path), val_size=6, binarize="dynamic"))
    grey = _setup(MNISTDataModule(root=str(tmp_path), val_size=6))
    x_grey = grey.splits["train"].tensors[0]
    # train: binary, drawn afresh on every read, x_bin ~ Bernoulli(grey level)
    reads = torch.stack([dm.splits["train"][0][0] for _ in range(400)])  # (400, 1, 28, 28)
    assert set(reads.unique().tolist()) == {0.0, 1.0}
    assert not torch.equal(reads[0], reads[1])
    assert (reads.mean(0) - x_grey[0]).abs().max() < 0.15  # 400 draws: σ ≤ 0.025 per pixel
    # the reference data keeps the grey levels
    assert torch.equal(dm.reference_data("train").tensors[0], x_grey)
    # val/test: binarized once with a fixed seed, whatever the global RNG says
    torch.manual_seed(123)
    again = _setup(MNISTDataModule(root=str(tmp_path), val_size=6, binarize="dynamic"))
    for split in ("val", "test"):
        x = dm.splits[split].tensors[0]
        assert set(x.unique().tolist()) <= {0.0, 1.0}
        assert torch.equal(x, again.splits[split].tensors[0])
        assert torch.equal(dm.splits[split][0][0], x[0])  # reads do not redraw
    with pytest.raises(ValueError, match="binarize"):
        MNISTDataModule(root=str(tmp_path), binarize="threshold")
