"""A character corpus for language modelling: any UTF-8 text file, or Python's own docs.

Text is modelled as UTF-8 bytes (vocabulary 256), so any file works with a fixed model
size; for ASCII text a byte is a character, and bits per character are computed over
characters anyway (a character's probability is the product of its bytes' probabilities;
:func:`mlnotes_zoo.lit.transformer.is_char_start` finds where characters begin).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, RandomSampler

from mlnotes_zoo.constraints import Field, NonNegativeInt, PositiveInt
from mlnotes_zoo.data.base import BadDataError, DataModule, DataNotFoundError

__all__ = ["TextDataModule", "default_corpus"]

VOCAB_SIZE = 256

HeldOut = Annotated[float, Field(gt=0, lt=1, description="a share of the text held out")]


def default_corpus() -> str:
    """The standard library's documentation topics (``pydoc_data.topics``, ~465k
    characters of the Python language reference), shipped with every CPython."""
    from pydoc_data.topics import topics

    return "\n\n".join(topics[k] for k in sorted(topics))


class _Windows(Dataset):
    """Item i = (x, y) = (text[i : i+T], text[i+1 : i+T+1]) at start ``i·stride``."""

    def __init__(self, data: Tensor, block_size: int, stride: int) -> None:
        self.data, self.block_size, self.stride = data, block_size, stride

    def __len__(self) -> int:
        return max(0, (len(self.data) - self.block_size - 1) // self.stride + 1)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        chunk = self.data[i * self.stride : i * self.stride + self.block_size + 1]
        return chunk[:-1], chunk[1:]


class TextDataModule(DataModule):
    """Batches ``(x, y)`` of byte tokens (B, block_size), y = x shifted by one.

    The text is cut into consecutive train / val / test parts (the last ``val_fraction``
    and ``test_fraction`` of it are held out). Training draws ``train_samples`` windows at
    random offsets per epoch; validation and test cover their parts with non-overlapping
    windows, so each held-out byte is predicted at most once (all but the first byte and
    a final partial window).

    Args:
        path: a UTF-8 text file; None = the standard library's documentation topics.
        block_size: context length T (at most the model's max_len).
        batch_size: windows per batch.
        train_samples: random training windows per epoch.
        val_fraction, test_fraction: trailing parts of the text held out.
        num_workers: DataLoader workers.
    """

    vocab_size = VOCAB_SIZE

    def __init__(self, *, path: str | None = None, block_size: PositiveInt = 128,
                 batch_size: PositiveInt = 64, train_samples: PositiveInt = 1024,
                 val_fraction: HeldOut = 0.05, test_fraction: HeldOut = 0.05,
                 num_workers: NonNegativeInt = 0) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        if val_fraction + test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must be < 1 (the rest is "
                             f"training text), got {val_fraction} + {test_fraction}")
        self.path = None if path is None else str(Path(path).expanduser())
        self.block_size, self.train_samples = block_size, train_samples
        self.val_fraction, self.test_fraction = val_fraction, test_fraction

    def read_text(self) -> str:
        if self.path is None:
            return default_corpus()
        if not Path(self.path).is_file():
            raise DataNotFoundError(f"text file not found: {self.path!r} (set data.path=<file>)")
        raw = Path(self.path).read_bytes()
        if not raw.strip():
            raise BadDataError(f"{self.path}: the text file is empty")
        try:
            return raw.decode("utf-8")
        except UnicodeDecodeError as err:
            line = raw[: err.start].count(b"\n") + 1
            raise BadDataError(f"{self.path}: not UTF-8 text (byte {raw[err.start]:#04x} at "
                               f"offset {err.start}, line {line}); convert it, e.g. "
                               f"iconv -f latin1 -t utf-8") from None

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        data = torch.frombuffer(bytearray(self.read_text().encode("utf-8")), dtype=torch.uint8)
        data = data.long()
        n = len(data)
        n_test, n_val = int(n * self.test_fraction), int(n * self.val_fraction)
        n_train = n - n_val - n_test
        parts = {"train": data[:n_train], "val": data[n_train : n_train + n_val],
                 "test": data[n_train + n_val :]}
        for name, part in parts.items():
            if len(part) < self.block_size + 1:
                source = self.path or "the default corpus"
                raise BadDataError(f"{source}: the {name} part has {len(part)} bytes, fewer than "
                                   f"block_size + 1 = {self.block_size + 1}: use a longer text "
                                   f"or a smaller data.block_size")
        self.splits = {
            "train": _Windows(parts["train"], self.block_size, stride=1),
            "val": _Windows(parts["val"], self.block_size, stride=self.block_size),
            "test": _Windows(parts["test"], self.block_size, stride=self.block_size),
        }

    def train_dataloader(self) -> DataLoader:
        # train_samples windows at random offsets (with replacement) per epoch
        sampler = RandomSampler(self.splits["train"], replacement=True,
                                num_samples=self.train_samples)
        return self.loader(self.splits["train"], sampler=sampler)
