"""MNIST and Fashion-MNIST from a local root, in torchvision's on-disk layout."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Literal

import torch
from torch import Tensor
from torch.utils.data import TensorDataset

from mlnotes_zoo.data.base import BadDataError, TorchvisionDataModule

__all__ = ["MNISTDataModule", "FashionMNISTDataModule", "DynamicallyBinarized", "check_idx_file"]

EVAL_BINARIZATION_SEED = 0  # val/test are binarized once with this seed, whatever the run's seed


def check_idx_file(path: Path, ndim: int) -> int:
    """Check an idx file's header against its size; returns the item count.

    The format (LeCun's MNIST page): 2 zero bytes, type 0x08 (uint8), ndim, then ndim
    big-endian uint32 sizes, then the data. torchvision reads a damaged file into an
    AssertionError or a reshape error that does not say which file is wrong.
    """
    size = path.stat().st_size
    with open(path, "rb") as f:
        header = f.read(4 + 4 * ndim)
    if len(header) < 4 + 4 * ndim or header[:3] != b"\x00\x00\x08" or header[3] != ndim:
        raise BadDataError(f"{path}: not a {ndim}-d uint8 idx file (header {header[:4].hex()})")
    dims = [int.from_bytes(header[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = 4 + 4 * ndim + math.prod(dims)
    if size != expected:
        raise BadDataError(f"{path}: {size} bytes, but its header says {' x '.join(map(str, dims))}"
                           f" = {expected} bytes (truncated or damaged; download it again)")
    return dims[0]


def _check_split(raw: Path, train: bool) -> None:
    prefix = "train" if train else "t10k"
    images, labels = raw / f"{prefix}-images-idx3-ubyte", raw / f"{prefix}-labels-idx1-ubyte"
    if images.is_file() and labels.is_file():
        n_images, n_labels = check_idx_file(images, 3), check_idx_file(labels, 1)
        if n_images != n_labels:
            raise BadDataError(f"{images} has {n_images} images but {labels} has "
                               f"{n_labels} labels")


class DynamicallyBinarized(TensorDataset):
    """(images, labels) whose images are drawn afresh as x_bin ~ Bernoulli(x) on every read.

    ``tensors`` keep the grey levels (what ``reference_data`` hands out); only items read
    through indexing, i.e. the training batches, are binary.
    """

    def __getitem__(self, index: Any) -> tuple[Tensor, Tensor]:
        x, y = super().__getitem__(index)
        return torch.bernoulli(x), y


class MNISTDataModule(TorchvisionDataModule):
    """MNIST from ``root/MNIST/raw`` (the four idx files, optionally .gz).

    Args:
        binarize: ``"none"``: grey levels in [0, 1]. ``"dynamic"``: binary pixels x ~
            Bernoulli(grey level), resampled every time a training image is read (the
            "dynamically binarized MNIST" of Burda et al. 2016), while validation
            and test are binarized once with a fixed seed, so every run is scored on the same
            binary images.
        root, download, val_size, batch_size, channels, image_size, num_workers, seed: see
            :class:`~mlnotes_zoo.data.base.TorchvisionDataModule`.
    """

    dataset_name = "MNIST"
    native_size = 28
    expected_files = "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"

    def __init__(self, *, binarize: Literal["none", "dynamic"] = "none", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.binarize = binarize

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        super().setup(stage)
        if self.binarize == "dynamic":
            generator = torch.Generator().manual_seed(EVAL_BINARIZATION_SEED)
            for name in ("val", "test"):
                x, y = self.splits[name].tensors
                self.splits[name] = TensorDataset(torch.bernoulli(x, generator=generator), y)
            self.splits["train"] = DynamicallyBinarized(*self.splits["train"].tensors)

    def _dataset(self, train: bool):
        from torchvision.datasets import MNIST

        if not self.download:
            _check_split(Path(self.root) / "MNIST" / "raw", train)
        return MNIST(self.root, train=train, download=self.download)


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST from ``root/FashionMNIST/raw`` (same idx layout as MNIST)."""

    dataset_name = "FashionMNIST"
    expected_files = "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"

    def _dataset(self, train: bool):
        from torchvision.datasets import FashionMNIST

        if not self.download:
            _check_split(Path(self.root) / "FashionMNIST" / "raw", train)
        return FashionMNIST(self.root, train=train, download=self.download)


