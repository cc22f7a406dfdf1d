"""The base DataModule (splits, their DataLoaders, reference data) and the image DataModules.

Every DataModule of the zoo subclasses :class:`DataModule`: its ``setup`` fills
``self.splits`` (``"train"``, ``"val"``, ``"test"`` -> a Dataset, or a list of Datasets for
one dataloader each); the DataLoaders are built here, once, with the module's batch size,
workers and ``collate_fn``. A LightningModule that needs data beyond its batches (the real
images of FID, the training images of a baseline, a labelled bank for a probe) asks for it
through :meth:`DataModule.reference_data`, the one public way in.

Every image DataModule yields ``(x, y)`` batches with ``x`` float in [0, 1] of shape
``(B, channels, image_size, image_size)`` and integer labels ``y``. The sets are small, so
an epoch costs no per-item decoding.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, Literal

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, TensorDataset, random_split

from mlnotes_zoo.constraints import NonNegativeInt, PositiveInt, Seed, check_arguments
from mlnotes_zoo.errors import ZooError
from mlnotes_zoo.resume import ResumableDataLoader

__all__ = ["DataModule", "ImageDataModule", "TorchvisionDataModule", "seeded_split",
           "BadDataError", "DataNotFoundError"]

Split = Literal["train", "val", "test"]


class BadDataError(ZooError, ValueError):
    """A data file that cannot be used (corrupt, truncated, inconsistent); the message names
    the file. Missing files are :class:`DataNotFoundError` instead."""


class DataNotFoundError(ZooError, FileNotFoundError):
    """Data that is not where the config says (a root, folder or file); the message names
    the place and the key that sets it."""


class DataModule(pl.LightningDataModule):
    """Base of every DataModule: ``splits`` and their DataLoaders, and :meth:`reference_data`.

    Subclasses implement ``setup`` (filling ``self.splits``); they set ``collate_fn`` when
    their items do not stack into tensors. The constructor arguments of the whole class
    chain are checked against their annotations here, once (:mod:`mlnotes_zoo.constraints`).

    Args:
        batch_size: examples per batch (all splits).
        num_workers: DataLoader workers (0 = load in the main process).
    """

    collate_fn: Callable[[list[Any]], Any] | None = None  # None: torch's default_collate

    def __init__(self, *, batch_size: PositiveInt = 64, num_workers: NonNegativeInt = 0) -> None:
        super().__init__()
        # every constructor argument of the subclass chain, kept (not logged) and checked
        self.save_hyperparameters(logger=False)
        check_arguments(type(self), self.hparams, where=f"{type(self).__name__}: ")
        self.batch_size = batch_size
        self.num_workers = num_workers
        self.splits: dict[str, Any] = {}

    @property
    def eval_batch_size(self) -> int:
        """Batch size of the validation and test loaders."""
        return self.batch_size

    def loader(self, dataset: Dataset, **kwargs: Any) -> DataLoader:
        """A DataLoader of ``dataset`` with this module's batch size, workers and collate
        function; ``kwargs`` override or add DataLoader arguments. Resumable mid-epoch
        (:class:`~mlnotes_zoo.resume.ResumableDataLoader`: a preempted run continues exactly)."""
        options = dict(batch_size=self.batch_size, collate_fn=self.collate_fn,
                       num_workers=self.num_workers, persistent_workers=self.num_workers > 0)
        return ResumableDataLoader(dataset, **{**options, **kwargs})

    def train_dataloader(self) -> DataLoader:
        return self.loader(self.splits["train"], shuffle=True)

    def val_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._eval_loaders("val")

    def test_dataloader(self) -> DataLoader | list[DataLoader]:
        return self._eval_loaders("test")

    def _eval_loaders(self, split: str) -> DataLoader | list[DataLoader]:
        data = self.splits[split]
        if isinstance(data, list):  # several sets: one dataloader each
            return [self.loader(d, batch_size=self.eval_batch_size) for d in data]
        return self.loader(data, batch_size=self.eval_batch_size)

    def reference_data(self, split: Split) -> Any:
        """The whole of ``split`` in its stored order (not the training loader's shuffled
        one), set up on first use.

        The one way a LightningModule reads data beyond its batches: the real images FID
        compares with (LitGAN), the training images a baseline is fitted to (LitFlow), the
        labelled bank of a frozen-feature probe (LitSimCLR). Image DataModules return a
        ``TensorDataset`` of (images, labels); other DataModules their split's Dataset (a list
        of Datasets where the split has several dataloaders).

        Raises ``KeyError`` when this DataModule has no fixed ``split`` (e.g. training data
        drawn afresh each epoch).
        """
        if split not in self.splits:
            self.setup("test" if split == "test" else "fit")
        if split not in self.splits:
            raise KeyError(f"{type(self).__name__} has no fixed {split!r} split")
        return self.splits[split]


def seeded_split(n: int, sizes: Mapping[str, int], seed: int) -> dict[str, list[int]]:
    """Indices of a seeded random split of ``range(n)`` into parts of the given sizes (in
    order; they sum to ``n``): ``torch.utils.data.random_split`` with a generator seeded
    ``seed``, i.e. consecutive chunks of one ``randperm(n)``."""
    parts = random_split(range(n), list(sizes.values()),
                         generator=torch.Generator().manual_seed(seed))
    return {name: list(part.indices) for name, part in zip(sizes, parts, strict=True)}


class ImageDataModule(DataModule):
    """Holds train/val/test tensors; subclasses implement :meth:`load_splits`.

    Args:
        batch_size: examples per batch (all splits).
        channels: channels of the delivered images (1 ↔ 3 conversion if it differs).
        image_size: side of the delivered (square) images; resized bilinearly if it differs.
        num_workers: DataLoader workers (0 = load in the main process; fastest for tensors).
        seed: seed of the train/val split.
    """

    native_channels: int = 1
    native_size: int = 8
    num_classes: int = 10

    def __init__(
        self,
        *,
        batch_size: PositiveInt = 64,
        channels: Literal[1, 3] | None = None,
        image_size: PositiveInt | None = None,
        num_workers: NonNegativeInt = 0,
        seed: Seed = 0,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        self.channels = channels or self.native_channels
        self.image_size = image_size or self.native_size
        self.seed = seed

    @property
    def in_shape(self) -> tuple[int, int, int]:
        return (self.channels, self.image_size, self.image_size)

    def load_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        """``{"train"|"val"|"test": (uint8-or-float images (N, C, H, W) in [0, 1], labels)}``."""
        raise NotImplementedError

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        for name, (x, y) in self.load_splits().items():
            self.splits[name] = TensorDataset(self._conform(x), y.long())

    def _conform(self, x: Tensor) -> Tensor:
        x = x.float()
        if x.shape[1] != self.channels:
            # ITU-R 601 luma for 3 -> 1, repetition for 1 -> 3
            x = (x * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True) \
                if self.channels == 1 else x.expand(-1, 3, -1, -1).contiguous()
        if x.shape[-1] != self.image_size or x.shape[-2] != self.image_size:
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="bilinear",
                              align_corners=False, antialias=True).clamp(0, 1)
        return x


class TorchvisionDataModule(ImageDataModule):
    """A torchvision dataset read from ``root`` (no download unless ``download=true``).

    Args:
        root: the folder holding the dataset.
        download: fetch it into ``root`` first (where a network is reachable).
        val_size: training images held out for validation (seeded by ``seed``); the
            official test split is the test split.
    """

    dataset_name: str = ""
    expected_files: str = ""

    def __init__(self, *, root: str = "data", download: bool = False,
                 val_size: PositiveInt = 5000, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = str(Path(root).expanduser())
        self.download = download
        self.val_size = val_size

    def prepare_data(self) -> None:
        if self.download:
            self._dataset(train=True)
            self._dataset(train=False)

    def _dataset(self, train: bool):
        raise NotImplementedError

    def _open(self, train: bool):
        try:
            return self._dataset(train)
        except RuntimeError as err:
            raise DataNotFoundError(
                f"{self.dataset_name} not found under {self.root!r}: put {self.expected_files} "
                f"there, or set data.root=<dir> (data.download=true fetches it where a network is "
                f"reachable). ({err})"
            ) from None

    @staticmethod
    def _images(data) -> Tensor:
        x = torch.as_tensor(data)
        x = x.unsqueeze(1) if x.dim() == 3 else x.permute(0, 3, 1, 2)  # (N, C, H, W)
        return x.float().div(255)

    def load_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        train, test = self._open(True), self._open(False)
        x, y = self._images(train.data), torch.as_tensor(train.targets)
        if self.val_size >= len(x):
            raise ValueError(f"val_size must be in 1..{len(x) - 1}, got {self.val_size}")
        parts = seeded_split(len(x), {"val": self.val_size, "train": len(x) - self.val_size},
                             self.seed)
        splits = {name: (x[idx], y[idx]) for name, idx in parts.items()}
        splits["test"] = (self._images(test.data), torch.as_tensor(test.targets))
        return splits
