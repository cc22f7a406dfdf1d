"""Model registry: build any network of the zoo by name.

Builders are registered with ``@register_model("name")`` (timm / torchvision style). A
network built by :func:`create_model` remembers how it was built in ``model.zoo_spec``
(``{"name": ..., **kwargs}``) so that a checkpoint can rebuild it from plain kwargs.

The kwargs are checked against the builder's annotations before it runs (the ranges live in
the signature, ``latent_dim: PositiveInt``; see :mod:`mlnotes_zoo.constraints`), so the
Python API, a checkpoint's spec and a config's ``net`` node pass through the same check.

A leaf module: of the zoo it imports only the leaves :mod:`mlnotes_zoo.constraints` (the
check) and :mod:`mlnotes_zoo.errors`. Importing :mod:`mlnotes_zoo` (the package)
imports :mod:`mlnotes_zoo.models`, which registers every built-in family.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, TypeVar

from torch import nn

from mlnotes_zoo.constraints import check_arguments

__all__ = ["register_model", "create_model", "list_models", "get_builder", "check_kwargs"]

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


def list_models() -> list[str]:
    """Sorted names of all registered networks."""
    return sorted(_MODELS)


def get_builder(name: str) -> Callable[..., nn.Module]:
    try:
        return _MODELS[name]
    except KeyError:
        raise KeyError(
            f"unknown model {name!r}; registered models: {', '.join(sorted(_MODELS))}"
        ) from None


def create_model(name: str, **kwargs: Any) -> nn.Module:
    """Build the registered network ``name`` with keyword arguments ``kwargs``.

    A value outside its annotated type or range is a :class:`~mlnotes_zoo.errors.UsageError`
    (a ``ValueError``) naming the model, the key, the value and what is allowed; an unknown
    key is the builder's ``TypeError``.
    (Loading weights: :func:`mlnotes_zoo.create_model` with ``weights=``.)
    """
    builder = get_builder(name)
    check_kwargs(name, kwargs)
    model = builder(**kwargs)
    model.zoo_spec = {"name": name, **kwargs}
    return model


def check_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    """Raise :class:`~mlnotes_zoo.errors.UsageError` for the first kwarg that does not fit the
    builder's annotation: ``vae: latent_dim=0: must be an integer >= 1``, the check and the
    words of the command line (:func:`mlnotes_zoo.constraints.check_arguments`)."""
    check_arguments(get_builder(name), kwargs, where=f"{name}: ")
