"""Model registry: build any network of the zoo by name.

Builders are registered with ``@register_model("name")`` (timm / torchvision style). A
network built by :func:`create_model` remembers how it was built in ``model.zoo_spec``
(``{"name": ..., **kwargs}``) so that a checkpoint can rebuild it from plain kwargs.
"""

from __future__ import annotations

from collections.abc import Callable
from os import PathLike
from typing import Any, TypeVar

from torch import nn

__all__ = ["register_model", "create_model", "list_models", "get_builder"]

_MODELS: dict[str, Callable[..., nn.Module]] = {}

B = TypeVar("B", bound=Callable[..., nn.Module])


def register_model(name: str) -> Callable[[B], B]:
    """Register a network class or builder function under ``name``; a duplicate name raises."""

    def decorator(builder: B) -> B:
        if name in _MODELS:
            raise ValueError(
                f"model name {name!r} is already registered (by {_qualname(_MODELS[name])}); "
                "pick another name"
            )
        _MODELS[name] = builder
        return builder

    return decorator


def _qualname(obj: Any) -> str:
    return f"{obj.__module__}.{obj.__qualname__}"


def _ensure_builtin_models() -> None:
    # Importing the package registers every built-in family.
    import mlnotes_zoo.models  # noqa: F401


def list_models() -> list[str]:
    """Sorted names of all registered networks."""
    _ensure_builtin_models()
    return sorted(_MODELS)


def get_builder(name: str) -> Callable[..., nn.Module]:
    _ensure_builtin_models()
    try:
        return _MODELS[name]
    except KeyError:
        raise KeyError(
            f"unknown model {name!r}; registered models: {', '.join(sorted(_MODELS))}"
        ) from None


def create_model(name: str, *, weights: str | PathLike | None = None, **kwargs: Any) -> nn.Module:
    """Build the registered network ``name`` with keyword arguments ``kwargs``.

    ``weights``: a ``.safetensors`` file from :func:`mlnotes_zoo.export`, or a ``.ckpt`` from
    ``train.py`` (read with ``torch.load(weights_only=True)``: a pickle that would run code is
    refused). Its saved kwargs are the defaults, so ``create_model("vae", weights=f)``
    rebuilds the saved network; a file of another model, or kwargs whose tensors differ, is
    an error naming the model, keys and shapes (:mod:`mlnotes_zoo.weights`).
    """
    if weights is not None:
        from mlnotes_zoo.weights import load_weights

        return load_weights(name, weights, kwargs)
    model = get_builder(name)(**kwargs)
    model.zoo_spec = {"name": name, **kwargs}
    return model
