"""Image DataModule base: whole splits held as tensors, optional channel/size conversion.

Every image DataModule yields ``(x, y)`` batches with ``x`` float in [0, 1] of shape
``(B, channels, image_size, image_size)`` and integer labels ``y``. The sets are small, so
an epoch costs no per-item decoding.
"""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

__all__ = ["ImageDataModule", "TorchvisionDataModule", "split", "BadDataError"]


class BadDataError(ValueError):
    """A data file that cannot be used (corrupt, truncated, inconsistent); the message names
    the file. Missing files are ``FileNotFoundError`` instead."""


class ImageDataModule(pl.LightningDataModule):
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
        batch_size: int = 64,
        channels: int | None = None,
        image_size: int | None = None,
        num_workers: int = 0,
        seed: int = 0,
    ) -> None:
        super().__init__()
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        if channels not in (None, 1, 3):
            raise ValueError(f"channels must be 1 or 3, got {channels}")
        self.batch_size = batch_size
        self.channels = channels or self.native_channels
        self.image_size = image_size or self.native_size
        self.num_workers = num_workers
        self.seed = seed
        self.splits: dict[str, TensorDataset] = {}

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

    def _loader(self, split: str, shuffle: bool) -> DataLoader:
        return DataLoader(
            self.splits[split],
            batch_size=self.batch_size,
            shuffle=shuffle,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
        )

    def train_dataloader(self) -> DataLoader:
        return self._loader("train", shuffle=True)

    def val_dataloader(self) -> DataLoader:
        return self._loader("val", shuffle=False)

    def test_dataloader(self) -> DataLoader:
        return self._loader("test", shuffle=False)


def split(
    x: Tensor, y: Tensor, sizes: dict[str, int], seed: int
) -> dict[str, tuple[Tensor, Tensor]]:
    """Seeded random split of (x, y) into consecutive chunks of the given sizes."""
    order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
    out, start = {}, 0
    for name, n in sizes.items():
        idx = order[start : start + n]
        out[name] = (x[idx], y[idx])
        start += n
    return out


class TorchvisionDataModule(ImageDataModule):
    """A torchvision dataset read from ``root`` (no download unless ``download=true``)."""

    dataset_name: str = ""
    expected_files: str = ""

    def __init__(self, *, root: str = "data", download: bool = False, val_size: int = 5000,
                 **kwargs) -> None:
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
            raise FileNotFoundError(
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
        if not 0 < self.val_size < len(x):
            raise ValueError(f"val_size must be in 1..{len(x) - 1}, got {self.val_size}")
        splits = split(x, y, {"val": self.val_size, "train": len(x) - self.val_size}, self.seed)
        splits["test"] = (self._images(test.data), torch.as_tensor(test.targets))
        return splits


