"""Objectives, each a named function tested on its own."""

from mlnotes_zoo.losses.ctc import ctc_loss
from mlnotes_zoo.losses.sequence import bits_per_char, sequence_exact_match, token_cross_entropy

__all__ = [
    "ctc_loss",
    "bits_per_char",
    "sequence_exact_match",
    "token_cross_entropy",
]
