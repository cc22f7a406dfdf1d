"""CIFAR-10 from a local root, in the python-pickle layout of the official release."""

from __future__ import annotations

import pickle
from pathlib import Path
from typing import NamedTuple

import numpy as np

from mlnotes_zoo.data.base import BadDataError, TorchvisionDataModule

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


class _ArraysOnly(pickle.Unpickler):
    """Unpickles dicts, lists and numpy arrays only: a data file must not run code."""

    ALLOWED = {"_reconstruct", "ndarray", "dtype", "scalar", "_frombuffer"}

    def find_class(self, module: str, name: str):
        if module.split(".")[0] == "numpy" and name in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to load {module}.{name}: a CIFAR-10 batch "
                                     "holds only numpy arrays")


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
        path = folder / name
        try:
            with open(path, "rb") as f:
                entry = _ArraysOnly(f, encoding="latin1").load()
            images = np.asarray(entry["data"], dtype=np.uint8)
            labels = list(entry.get("labels", entry.get("fine_labels", [])))
        except Exception as err:  # noqa: BLE001 - unpickling damage takes many forms
            raise BadDataError(f"{path}: not a CIFAR-10 python batch ({type(err).__name__}: "
                               f"{err}); download it again") from None
        if images.ndim != 2 or images.shape[1] != 3 * 32 * 32 or len(labels) != len(images):
            raise BadDataError(f"{path}: expected 'data' (N, 3072) uint8 and N 'labels', got "
                               f"data {images.shape} and {len(labels)} labels")
        data.append(images)
        targets.extend(labels)
    images = np.concatenate(data).reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return _Split(images, targets)
