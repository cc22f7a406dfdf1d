"""LightningDataModules: embedded offline defaults and real-dataset loaders."""

from mlnotes_zoo.data.cifar10 import CIFAR10DataModule
from mlnotes_zoo.data.digits import DigitsDataModule
from mlnotes_zoo.data.mnist import FashionMNISTDataModule, MNISTDataModule

__all__ = ["DigitsDataModule", "MNISTDataModule", "FashionMNISTDataModule", "CIFAR10DataModule"]
