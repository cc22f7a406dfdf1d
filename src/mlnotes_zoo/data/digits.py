"""scikit-learn's handwritten digits: the embedded default for image models."""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor

from mlnotes_zoo.constraints import PositiveInt, Seed
from mlnotes_zoo.data.base import ImageDataModule, seeded_split

__all__ = ["DigitsDataModule"]

NUM_DIGITS = 1797


class DigitsDataModule(ImageDataModule):
    """scikit-learn's handwritten digits: 1,797 real 8×8 images with 17 grey levels (0..16).

    Shipped inside scikit-learn, so it needs no download. A fixed seeded split gives
    ``val_size`` and ``test_size`` images to validation and test, the rest to training.
    Pixel values are ``level / 16`` in [0, 1]; ``levels = 17`` for models that need the
    discrete values (dequantization).

    Args:
        val_size, test_size: images held out for validation and test.
        split_seed: seed of that split (never the training seed, so every run is scored on
            the same images).
        batch_size, channels, image_size, num_workers, seed: see
            :class:`~mlnotes_zoo.data.base.ImageDataModule`.
    """

    native_channels = 1
    native_size = 8
    levels = 17

    def __init__(self, *, val_size: PositiveInt = 180, test_size: PositiveInt = 360,
                 split_seed: Seed = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if val_size + test_size >= NUM_DIGITS:
            raise ValueError(f"val_size ({val_size}) + test_size ({test_size}) must leave "
                             f"training images out of the {NUM_DIGITS} digits")
        self.val_size = val_size
        self.test_size = test_size
        self.split_seed = split_seed

    def load_splits(self) -> dict[str, tuple[Tensor, Tensor]]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        x = torch.from_numpy(digits.images).float().div(16).unsqueeze(1)  # (1797, 1, 8, 8)
        y = torch.from_numpy(digits.target)
        sizes = {"test": self.test_size, "val": self.val_size,
                 "train": len(x) - self.val_size - self.test_size}
        # The test split depends on split_seed only, never on the training seed.
        return {name: (x[idx], y[idx])
                for name, idx in seeded_split(len(x), sizes, self.split_seed).items()}
