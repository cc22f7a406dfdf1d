"""MNIST and Fashion-MNIST from a local root, in torchvision's on-disk layout."""

from __future__ import annotations

from mlnotes_zoo.data.base import TorchvisionDataModule

__all__ = ["MNISTDataModule", "FashionMNISTDataModule"]


class MNISTDataModule(TorchvisionDataModule):
    """MNIST from ``root/MNIST/raw`` (the four idx files, optionally .gz)."""

    dataset_name = "MNIST"
    native_size = 28
    expected_files = "MNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"

    def _dataset(self, train: bool):
        from torchvision.datasets import MNIST

        return MNIST(self.root, train=train, download=self.download)


class FashionMNISTDataModule(MNISTDataModule):
    """Fashion-MNIST from ``root/FashionMNIST/raw`` (same idx layout as MNIST)."""

    dataset_name = "FashionMNIST"
    expected_files = "FashionMNIST/raw/{train,t10k}-{images-idx3,labels-idx1}-ubyte"

    def _dataset(self, train: bool):
        from torchvision.datasets import FashionMNIST

        return FashionMNIST(self.root, train=train, download=self.download)


