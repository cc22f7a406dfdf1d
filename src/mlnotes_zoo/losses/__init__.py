"""Objectives, each a named function tested on its own."""

from mlnotes_zoo.losses.ctc import ctc_loss

__all__ = [
    "ctc_loss",
]
