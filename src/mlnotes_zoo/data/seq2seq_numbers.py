"""Integers → their English words ("4071" → "four thousand seventy one"): a seq2seq task.

Deterministic and offline: a seeded draw of distinct integers, split into train/val/test,
so every validation and test number is held out from training. Exact-match accuracy of the
generated words is the metric.
"""

from __future__ import annotations

from typing import Annotated

import torch
from torch import Tensor
from torch.utils.data import TensorDataset, random_split

from mlnotes_zoo.constraints import Field, NonNegativeInt, PositiveInt, Seed
from mlnotes_zoo.data.base import DataModule

__all__ = ["SeqNumbersDataModule", "number_to_words", "VOCAB", "PAD_ID", "BOS_ID", "EOS_ID"]

_ONES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten",
         "eleven", "twelve", "thirteen", "fourteen", "fifteen", "sixteen", "seventeen",
         "eighteen", "nineteen"]
_TENS = ["", "", "twenty", "thirty", "forty", "fifty", "sixty", "seventy", "eighty", "ninety"]
_SCALES = [(1_000_000, "million"), (1_000, "thousand")]

# One vocabulary for source digits and target words; specials first.
VOCAB = ["<pad>", "<bos>", "<eos>", *"0123456789", *_ONES, *_TENS[2:], "hundred", "thousand",
         "million"]
PAD_ID, BOS_ID, EOS_ID = 0, 1, 2
TOKEN_ID = {tok: i for i, tok in enumerate(VOCAB)}
MAX_VALUE = 999_999_999
MaxValue = Annotated[int, Field(ge=9, le=MAX_VALUE, description="the largest number")]


def _below_thousand(n: int) -> list[str]:
    words = []
    if n >= 100:
        words += [_ONES[n // 100], "hundred"]
        n %= 100
    if n >= 20:
        words.append(_TENS[n // 10])
        n %= 10
    if n:
        words.append(_ONES[n])
    return words


def number_to_words(n: int) -> list[str]:
    """English words of 0 ≤ n ≤ 999,999,999 without "and" or hyphens: 4071 →
    ["four", "thousand", "seventy", "one"]."""
    if not 0 <= n <= MAX_VALUE:
        raise ValueError(f"n must be in 0..{MAX_VALUE}, got {n}")
    if n == 0:
        return ["zero"]
    words = []
    for scale, name in _SCALES:
        if n >= scale:
            words += [*_below_thousand(n // scale), name]
            n %= scale
    return words + _below_thousand(n)


def encode_pairs(numbers: list[int]) -> tuple[Tensor, Tensor]:
    """(src (N, S) digit tokens, tgt (N, T) = bos, word tokens, eos), right-padded."""
    srcs = [[TOKEN_ID[d] for d in str(n)] for n in numbers]
    tgts = [[BOS_ID, *(TOKEN_ID[w] for w in number_to_words(n)), EOS_ID] for n in numbers]
    src = torch.full((len(numbers), max(map(len, srcs))), PAD_ID, dtype=torch.long)
    tgt = torch.full((len(numbers), max(map(len, tgts))), PAD_ID, dtype=torch.long)
    for i, (s, t) in enumerate(zip(srcs, tgts, strict=True)):
        src[i, : len(s)] = torch.tensor(s)
        tgt[i, : len(t)] = torch.tensor(t)
    return src, tgt


def decode_tokens(tokens: Tensor) -> str:
    """Token ids (T,) → text up to the first ``eos`` (specials dropped)."""
    out = []
    for t in tokens.tolist():
        if t == EOS_ID:
            break
        if t > EOS_ID:
            out.append(VOCAB[t])
    return ("" if out and out[0].isdigit() else " ").join(out).strip()


class SeqNumbersDataModule(DataModule):
    """Batches ``(src, tgt)``: digits of n → bos + English words of n + eos, right-padded.

    Numbers are drawn with a uniformly random number of digits (1..len(str(max_value))),
    then uniformly among numbers of that length, so short and long numbers are equally
    common; duplicates are dropped and the distinct numbers split at random. The draw
    depends on ``split_seed`` only.

    Args:
        max_value: largest integer (≤ 999,999,999).
        train_size, val_size, test_size: distinct numbers per split (disjoint).
        batch_size: pairs per batch.
        split_seed: seed of the draw and the split.
        num_workers: DataLoader workers.
    """

    vocab = VOCAB
    vocab_size = len(VOCAB)
    pad_id, bos_id, eos_id = PAD_ID, BOS_ID, EOS_ID

    def __init__(self, *, max_value: MaxValue = 999_999, train_size: PositiveInt = 50_000,
                 val_size: PositiveInt = 1_000, test_size: PositiveInt = 2_000,
                 batch_size: PositiveInt = 128, split_seed: Seed = 0,
                 num_workers: NonNegativeInt = 0) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        if train_size + val_size + test_size > max_value + 1:
            raise ValueError(f"split sizes must sum to at most {max_value + 1} distinct numbers, "
                             f"got {train_size}, {val_size}, {test_size}")
        self.max_value = max_value
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.split_seed = split_seed

    def draw_numbers(self) -> dict[str, list[int]]:
        """The distinct numbers of each split (deterministic in ``split_seed``)."""
        g = torch.Generator().manual_seed(self.split_seed)
        total, digits = sum(self.sizes.values()), len(str(self.max_value))
        seen: dict[int, None] = {}
        while len(seen) < total:
            lengths = torch.randint(1, digits + 1, (4 * total,), generator=g)
            low = torch.where(lengths == 1, 0, 10 ** (lengths - 1))
            high = torch.clamp(10**lengths - 1, max=self.max_value)
            n = low + (torch.rand(4 * total, generator=g, dtype=torch.float64)
                       * (high - low + 1)).long()
            for v in n.tolist():
                if v not in seen and v <= self.max_value:
                    seen[v] = None
                    if len(seen) == total:
                        break
        # a random split (first occurrences are biased to short numbers: there are few)
        names = ("test", "val", "train")
        parts = random_split(list(seen), [self.sizes[n] for n in names], generator=g)
        return {name: list(part) for name, part in zip(names, parts, strict=True)}

    def setup(self, stage: str | None = None) -> None:
        if self.splits:
            return
        for name, numbers in self.draw_numbers().items():
            self.splits[name] = TensorDataset(*encode_pairs(numbers))
