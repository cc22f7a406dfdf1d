"""Sequence objectives: token cross-entropy with padding ignored, bits per character."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["token_cross_entropy", "bits_per_char", "sequence_exact_match"]


def token_cross_entropy(logits: Tensor, targets: Tensor, *, ignore_index: int | None = None,
                        reduction: str = "mean") -> Tensor:
    """−log p(y_t | ·) per token, in nats: logits (B, T, V), targets (B, T).

    Tokens equal to ``ignore_index`` (padding) count for nothing, neither in the sum nor in
    the number of tokens the mean divides by. ``reduction``: ``mean`` | ``sum`` | ``none``
    (``none`` gives (B, T) with zeros at ignored tokens).
    """
    return F.cross_entropy(
        logits.flatten(0, -2).float(), targets.flatten(),
        ignore_index=-100 if ignore_index is None else ignore_index, reduction=reduction,
    ).reshape(targets.shape if reduction == "none" else ())


def bits_per_char(nll_nats_sum: Tensor, num_chars: Tensor | int) -> Tensor:
    """Total negative log-likelihood (nats) of a text over its characters, in bits:
    bpc = Σ −log₂ p = (Σ −ln p) / (ln 2 · number of characters)."""
    return nll_nats_sum / (math.log(2) * torch.as_tensor(num_chars, dtype=torch.float32))


def sequence_exact_match(predicted: Tensor, target: Tensor, *, pad_id: int) -> Tensor:
    """1.0 per sequence when ``predicted`` equals ``target`` up to padding, else 0.0: (B,).

    Both (B, ·) and right-padded with ``pad_id``; the shorter one is padded to compare.
    """
    length = max(predicted.shape[1], target.shape[1])
    predicted = F.pad(predicted, (0, length - predicted.shape[1]), value=pad_id)
    target = F.pad(target, (0, length - target.shape[1]), value=pad_id)
    return (predicted == target).all(dim=1).float()
