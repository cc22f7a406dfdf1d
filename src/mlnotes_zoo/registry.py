"""Model registry: build any network of the zoo by name.

Builders are registered with ``@register_model("name")`` (timm / torchvision style). A
network built by :func:`create_model` remembers how it was built in ``model.zoo_spec``
(``{"name": ..., **kwargs}``) so that a checkpoint can rebuild it from plain kwargs.

The kwargs are checked against the builder's annotations before it runs (the ranges live in
the signature, ``latent_dim: PositiveInt``; see :mod:`mlnotes_zoo.constraints`), so the
Python API, a checkpoint's spec and a config's ``net`` node pass through the same check.

A leaf module: it imports nothing of the zoo. Importing :mod:`mlnotes_zoo` (the package)
imports :mod:`mlnotes_zoo.models`, which registers every built-in family.
"""

from __future__ import annotations

import functools
import inspect
import typing
from collections.abc import Callable, Mapping, Sequence
from typing import Any, TypeVar

from pydantic import ConfigDict, TypeAdapter, ValidationError
from torch import nn

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

    A value outside its annotated type or range is a ``ValueError`` naming the model, the
    key, the value and what is allowed; an unknown key is the builder's ``TypeError``.
    (Loading weights: :func:`mlnotes_zoo.create_model` with ``weights=``.)
    """
    builder = get_builder(name)
    check_kwargs(name, kwargs)
    model = builder(**kwargs)
    model.zoo_spec = {"name": name, **kwargs}
    return model


def check_kwargs(name: str, kwargs: Mapping[str, Any]) -> None:
    """Raise ``ValueError`` for the first kwarg that does not fit the builder's annotation."""
    adapters = _adapters(get_builder(name))
    for key, value in kwargs.items():
        if key not in adapters:
            continue
        adapter, note = adapters[key]
        try:
            adapter.validate_python(_plain(value))
        except ValidationError as err:
            first = err.errors()[0]
            missing = first["type"] == "missing"  # a tuple of fixed length given too few items
            where = "" if missing else "".join(f"[{i}]" for i in first["loc"])
            msg = "too few items" if missing else first["msg"][0].lower() + first["msg"][1:]
            raise ValueError(f"{name}: {key}{where}={value!r}: {msg}"
                             + (f" ({note})" if note else "")) from None


_CONFIG = ConfigDict(arbitrary_types_allowed=True)


@functools.cache
def _adapters(builder: Callable[..., Any]) -> dict[str, tuple[TypeAdapter, str]]:
    """(pydantic validator, description) per annotated keyword parameter of a builder."""
    fn = builder.__init__ if inspect.isclass(builder) else builder
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
        params = inspect.signature(fn).parameters
    except Exception:  # noqa: BLE001 - unresolvable annotations: the builder checks alone
        return {}
    adapters = {}
    for key, param in params.items():
        if key in hints and param.kind in (param.KEYWORD_ONLY, param.POSITIONAL_OR_KEYWORD):
            try:
                adapters[key] = TypeAdapter(hints[key], config=_CONFIG), _description(hints[key])
            except Exception:  # noqa: BLE001 - a type pydantic cannot check (a callable, ...)
                continue
    return adapters


def _description(annotation: Any) -> str:
    """The ``Field(description=...)`` of an ``Annotated`` parameter, if any."""
    if typing.get_origin(annotation) is not typing.Annotated:
        return ""
    for meta in typing.get_args(annotation)[1:]:
        if getattr(meta, "description", None):
            return meta.description
    return ""


def _plain(value: Any) -> Any:
    """Sequences (OmegaConf's ListConfig included) as lists, mappings as dicts."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [_plain(v) for v in value]
    return value
