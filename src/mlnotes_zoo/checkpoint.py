"""Rebuild a plain network from a training checkpoint, with Lightning absent."""

from __future__ import annotations

from os import PathLike

import torch
from torch import nn

from mlnotes_zoo.weights import load_weights

__all__ = ["load_checkpoint"]


def load_checkpoint(path: str | PathLike, *, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load ``path`` (a ``.ckpt`` written by ``train.py``, or a ``.safetensors`` written by
    :func:`mlnotes_zoo.export`) and return its network in eval mode.

    The network is rebuilt from the registry name and kwargs kept in the file (a checkpoint's
    ``hyper_parameters["net"]``): nothing is unpickled but tensors and plain Python values
    (``torch.load(weights_only=True)``); a pickle that asks for more is refused
    (:class:`~mlnotes_zoo.weights.UnsafeCheckpointError`).
    """
    return load_weights(None, path, {}).to(map_location).eval()
