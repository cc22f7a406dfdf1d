"""MNIST and Fashion-MNIST from a local root, in torchvision's on-disk layout."""

from __future__ import annotations

import math
from pathlib import Path

from mlnotes_zoo.data.base import BadDataError, TorchvisionDataModule

__all__ = ["MNISTDataModule", "FashionMNISTDataModule", "check_idx_file"]


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


class MNISTDataModule(TorchvisionDataModule):
    """MNIST from ``root/MNIST/raw`` (the four idx files, optionally .gz)."""

    dataset_name = "MNIST"
    native_size = 28
    expected_files = "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"

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


