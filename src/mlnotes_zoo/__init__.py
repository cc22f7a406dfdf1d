"""mlnotes-zoo: the architectures of a set of deep-learning study notes as plain PyTorch modules.

    from mlnotes_zoo import create_model, list_models, load_checkpoint, export

Importing the package registers every family (:mod:`mlnotes_zoo.models`).
"""

from __future__ import annotations

from os import PathLike
from typing import Any

from torch import nn

import mlnotes_zoo.models  # noqa: F401 - registers every family
from mlnotes_zoo import registry
from mlnotes_zoo.registry import list_models, register_model
from mlnotes_zoo.weights import export, load_checkpoint, load_weights, package_version

__version__ = package_version()

__all__ = ["create_model", "list_models", "register_model", "load_checkpoint", "export",
           "__version__"]


def create_model(name: str, *, weights: str | PathLike | None = None, **kwargs: Any) -> nn.Module:
    """Build the registered network ``name`` with keyword arguments ``kwargs``.

    ``weights``: a ``.safetensors`` file from :func:`export`, or a ``.ckpt`` from
    ``train.py`` (read with ``torch.load(weights_only=True)``: a pickle that would run code is
    refused). Its saved kwargs are the defaults, so ``create_model("vae", weights=f)``
    rebuilds the saved network; a file of another model, or kwargs whose tensors differ, is
    an error naming the model, keys and shapes (:mod:`mlnotes_zoo.weights`). The file is
    data: its spec is checked like ``kwargs`` and the network compared with its tensors on
    the ``meta`` device before anything is allocated; its format is read from its content.

    ``kwargs`` are checked against the builder's annotations, the command line's check:
    ``create_model("vae", latent_dim=0)`` raises ``vae: latent_dim=0: must be an integer
    >= 1`` (a :class:`~mlnotes_zoo.errors.UsageError`, a ``ValueError``).
    """
    if weights is not None:
        return load_weights(name, weights, kwargs)
    return registry.create_model(name, **kwargs)
