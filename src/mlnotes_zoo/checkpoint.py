"""Rebuild a plain network from a training checkpoint, with Lightning absent."""

from __future__ import annotations

from os import PathLike

import torch
from torch import nn

from mlnotes_zoo.registry import create_model

__all__ = ["load_checkpoint"]


def load_checkpoint(path: str | PathLike, *, map_location: str | torch.device = "cpu") -> nn.Module:
    """Load ``path`` (a ``.ckpt`` written by ``train.py``) and return its network in eval mode.

    The network is rebuilt from the registry name and kwargs kept in the checkpoint's
    hyper-parameters (``hyper_parameters["net"]``): nothing is unpickled but tensors and
    plain Python values (``torch.load(weights_only=True)``).
    """
    ckpt = torch.load(path, map_location=map_location, weights_only=True)
    spec = ckpt.get("hyper_parameters", {}).get("net")
    if not isinstance(spec, dict) or "name" not in spec:
        raise ValueError(
            f"{path}: no network spec in hyper_parameters['net']; it was not written by a "
            "mlnotes_zoo LightningModule with a registered network"
        )
    spec = dict(spec)
    model = create_model(spec.pop("name"), **spec)
    prefix = "net."
    state = {k[len(prefix) :]: v for k, v in ckpt["state_dict"].items() if k.startswith(prefix)}
    model.load_state_dict(state)
    return model.eval()
