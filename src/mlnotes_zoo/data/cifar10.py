"""CIFAR-10 from a local root, in the python-pickle layout of the official release."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mlnotes_zoo.data.base import TorchvisionDataModule

__all__ = ["CIFAR10DataModule"]


class CIFAR10DataModule(TorchvisionDataModule):
    """CIFAR-10 from ``root/cifar-10-batches-py`` (the python pickle batches)."""

    dataset_name = "CIFAR-10"
    native_channels = 3
    native_size = 32
    expected_files = "cifar-10-batches-py/{data_batch_1..5,test_batch}"

    def _dataset(self, train: bool):
        if self.download:
            from torchvision.datasets import CIFAR10

            CIFAR10(self.root, train=train, download=True)
        return _read_batches(Path(self.root) / "cifar-10-batches-py", train)


class _Split(NamedTuple):
    data: np.ndarray  # (N, 32, 32, 3) uint8
    targets: list[int]


def _read_batches(folder: Path, train: bool) -> _Split:
    # The release's layout: pickled dicts {"data": (N, 3072) uint8, "labels": [...]}.
    # torchvision's CIFAR10 also insists on the md5 of the full release; reading the
    # batches directly accepts subsets and re-packed copies in the same format.
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise RuntimeError(f"missing {', '.join(missing)} in {folder}")
    data, targets = [], []
    for name in names:
        with open(folder / name, "rb") as f:
            entry = pickle.load(f, encoding="latin1")
        data.append(np.asarray(entry["data"], dtype=np.uint8))
        targets.extend(entry.get("labels", entry.get("fine_labels", [])))
    images = np.concatenate(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return _Split(images, targets)
