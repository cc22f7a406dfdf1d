"""Ranges of constructor arguments, written next to the parameters they constrain.

Every constructor a config can reach (networks, LightningModules, DataModules, callbacks)
annotates each argument with its type and, where a range applies, one of the aliases below
(or ``Annotated[T, Field(...)]`` for a one-off range)::

    def __init__(self, *, latent_dim: PositiveInt = 16, dropout: UnitInterval = 0.0): ...

Those annotations are the only statement of what a value may be: the command line, the
compose API and ``create_model`` all validate against them (pydantic reads them), and no
constructor re-checks a single value by hand. Checks that involve two values
(``block_size <= max_len``) stay in the code that knows both.

:func:`check_arguments` is that check (:class:`Parameter` for one value); what a value may
be is said in the words of the annotation: ``latent_dim=0: must be an integer >= 1``.

A leaf module: of the zoo it imports only :mod:`mlnotes_zoo.errors` (itself a leaf).
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import os
import types
import typing
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal, Union

from pydantic import BeforeValidator, ConfigDict, Field, TypeAdapter, ValidationError

from mlnotes_zoo.errors import UsageError

__all__ = [
    "PositiveInt", "NonNegativeInt", "PositiveFloat", "NonNegativeFloat", "Fraction",
    "UnitInterval", "Probability", "Seed", "Field",
    "Parameter", "parameters", "check_arguments", "describe", "show",
]

PositiveInt = Annotated[int, Field(ge=1)]  # sizes, counts: >= 1
NonNegativeInt = Annotated[int, Field(ge=0)]  # >= 0 (0 usually means "none")
PositiveFloat = Annotated[float, Field(gt=0)]  # > 0: learning rates, scales
NonNegativeFloat = Annotated[float, Field(ge=0)]  # >= 0: weights of loss terms, decay
Fraction = Annotated[float, Field(ge=0, le=1)]  # [0, 1]: thresholds, shares
UnitInterval = Annotated[float, Field(ge=0, lt=1)]  # [0, 1): dropout, EMA decay, fractions held out
Probability = Annotated[float, Field(gt=0, le=1)]  # (0, 1]: a probability that must be > 0
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # NumPy's seed range


# -- the check ------------------------------------------------------------------------------
# One function checks a value against a parameter's annotation and says what is allowed, for
# every caller: the config validation of ``train.py`` (mlnotes_zoo.validation), and
# ``create_model`` (mlnotes_zoo.registry). pydantic validates (strictly: "3" is not an int,
# 2.5 is not an int, 1 is not a bool; an int is a float, a list is a tuple, a string a path);
# the message is written from the annotation itself.
@dataclass(frozen=True)
class Parameter:
    """A keyword parameter of a callable and its annotation (``Any`` when it has none)."""

    name: str
    annotation: Any

    @functools.cached_property
    def adapter(self) -> TypeAdapter | None:
        """The pydantic validator of the annotation; None for one pydantic cannot build."""
        try:
            return TypeAdapter(_strict_scalars(self.annotation), config=_PYDANTIC)
        except Exception:  # noqa: BLE001 - an unresolved forward reference, a TypeVar, ...
            return None

    def problem(self, value: Any) -> str | None:
        """What is wrong with ``value`` for this parameter, as 'must be ...', or None."""
        if self.adapter is None:
            return None
        try:
            self.adapter.validate_python(_plain(value), strict=True)
        except ValidationError:
            return f"must be {describe(self.annotation, value)}"
        return None


_PYDANTIC = ConfigDict(arbitrary_types_allowed=True)


@functools.cache
def parameters(fn: Callable[..., Any]) -> tuple[dict[str, Parameter], bool]:
    """Keyword parameters of a function or class, following ``**kwargs`` into base classes.

    Returns (parameters, open) where ``open`` means the callable takes any other key too.
    """
    found: dict[str, Parameter] = {}
    functions = ([c.__dict__["__init__"] for c in fn.__mro__ if "__init__" in c.__dict__]
                 if inspect.isclass(fn) else [fn])
    for function in functions:
        if function is object.__init__:
            return found, False
        try:
            signature = inspect.signature(function)
        except (TypeError, ValueError):  # a builtin without a signature
            return found, True
        hints = _type_hints(function)
        var_keyword = False
        for name, p in signature.parameters.items():
            if p.kind is p.VAR_KEYWORD:
                var_keyword = True
            elif p.kind is not p.VAR_POSITIONAL and name != "self" and name not in found:
                found[name] = Parameter(name, hints.get(name, Any))
        if not var_keyword:
            return found, False
    return found, True


def check_arguments(fn: Callable[..., Any], kwargs: Mapping[str, Any], *, where: str = "") -> None:
    """Raise :class:`~mlnotes_zoo.errors.UsageError` for the first of ``kwargs`` that ``fn``'s
    annotations refuse: ``{where}latent_dim=0: must be an integer >= 1``. Keys ``fn`` does not
    take are left to ``fn`` (its own ``TypeError``)."""
    params, _ = parameters(fn)
    for key, value in kwargs.items():
        problem = params[key].problem(value) if key in params else None
        if problem:
            raise UsageError(f"{where}{key}={show(value)}: {problem}")


def show(value: Any) -> str:
    """A value as it is written on the command line: null, true, 'text', [1, 2].

    Long values are cut (a weight file's spec may hold anything): a string after 60
    characters, a list after 8 items, a number after 40 digits, each marked with '…'.
    """
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, str):
        return repr(value) if len(value) <= 60 else f"{value[:57]!r}…"
    if isinstance(value, (list, tuple)) and not hasattr(value, "_fields"):
        inner = ", ".join(show(v) for v in value[:8]) + (", …" if len(value) > 8 else "")
        return f"[{inner}]" if isinstance(value, list) else f"({inner}{',' * (len(value) == 1)})"
    if isinstance(value, int) and abs(value) >= 10**40:
        return f"{str(value)[:12]}…({len(str(abs(value)))} digits)"
    text = str(value)
    return text if len(text) <= 80 else f"{text[:79]}…"


def _type_hints(function: Callable[..., Any]) -> dict[str, Any]:
    try:
        return typing.get_type_hints(function, include_extras=True)
    except Exception:  # noqa: BLE001 - names imported only under TYPE_CHECKING: one by one
        module = inspect.getmodule(function)
        hints = {}
        for name, annotation in getattr(function, "__annotations__", {}).items():
            if isinstance(annotation, str):
                try:
                    annotation = eval(annotation, vars(module) if module else {})  # noqa: S307
                except Exception:  # noqa: BLE001
                    continue
            hints[name] = annotation
        return hints


def _plain(value: Any) -> Any:
    """Sequences (OmegaConf's ListConfig included) as lists, mappings as dicts."""
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)) or (
            isinstance(value, Sequence) and not isinstance(value, (str, bytes))):
        return [_plain(v) for v in value]
    return value


def _strict_scalars(annotation: Any) -> Any:
    """``annotation`` for strict validation of YAML data: a tuple also from a list, a path also
    from a string (everything else strict)."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin is Annotated:
        return Annotated[(_strict_scalars(args[0]), *annotation.__metadata__)]
    if origin in (Union, types.UnionType):
        return Union[tuple(_strict_scalars(a) for a in args)]  # noqa: UP007
    if origin is tuple or annotation is tuple:
        inner = tuple[tuple(a if a is Ellipsis else _strict_scalars(a) for a in args)] \
            if args else tuple
        return Annotated[inner, BeforeValidator(_tuple_from_list)]
    if origin in (list, set, frozenset, dict, collections.abc.Sequence,
                  collections.abc.Mapping) and args:
        return origin[tuple(_strict_scalars(a) for a in args)]
    if inspect.isclass(annotation) and issubclass(annotation, os.PathLike):
        return Annotated[annotation, BeforeValidator(_path_from_str)]
    return annotation


def _tuple_from_list(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


def _path_from_str(value: Any) -> Any:
    return Path(value) if isinstance(value, str) else value


# -- what is allowed, in words --------------------------------------------------------------
def describe(annotation: Any, value: Any = None) -> str:
    """What ``annotation`` allows: 'an integer >= 1', "one of 'mlp', 'conv'",
    'a number > 0 (the contrastive temperature τ)', 'a list of 2 numbers, each in [0, 1)'.

    For a union and a number (or list) ``value``, the numeric (or list) arms and the choices
    are named, else all arms.
    """
    arms = _arms(annotation)
    kinds = [_kind(a) for a in arms]
    wanted = ("number" if _is_number(value) else "list" if isinstance(value, (list, tuple))
              else None)
    if wanted and wanted in kinds:
        arms = [a for a, k in zip(arms, kinds, strict=True)
                if k == wanted or typing.get_origin(a) is Literal]
    null = type(None) in arms
    choices = [c for a in arms if typing.get_origin(a) is Literal for c in typing.get_args(a)]
    texts = [_singular(a) for a in arms
             if a is not type(None) and typing.get_origin(a) is not Literal]
    if choices:
        texts.append(_choices(list(dict.fromkeys(choices))))
    text = " or ".join(dict.fromkeys(texts)) or "null"
    return text + ", or null" if null and texts else text


def _arms(annotation: Any) -> list[Any]:
    if typing.get_origin(annotation) in (Union, types.UnionType):
        return [arm for a in typing.get_args(annotation) for arm in _arms(a)]
    return [annotation]


def _base(annotation: Any) -> tuple[Any, tuple[Any, ...]]:
    """(type, metadata) of ``Annotated[type, *metadata]``; (annotation, ()) otherwise."""
    if typing.get_origin(annotation) is Annotated:
        base, *meta = typing.get_args(annotation)
        inner, more = _base(base)
        return inner, (*more, *meta)
    return annotation, ()


def _kind(annotation: Any) -> str | None:
    base, _ = _base(annotation)
    if base in (int, float):
        return "number"
    if _is_list(base):
        return "list"
    return None


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_list(base: Any) -> bool:
    origin = typing.get_origin(base) or base
    return origin in (tuple, list, collections.abc.Sequence, set, frozenset)


def _choices(choices: list[Any]) -> str:
    shown = ", ".join(show(c) for c in choices)
    return shown if len(choices) == 1 else f"one of {shown}"


_NOUNS = {int: ("an integer", "integers"), float: ("a number", "numbers"),
          bool: ("true or false", "booleans"), str: ("a string", "strings")}


def _singular(annotation: Any) -> str:
    noun, _plural, condition = _parts(annotation)
    return f"{noun} {condition}" if condition else noun


def _parts(annotation: Any) -> tuple[str, str, str]:
    """(singular noun, plural noun, condition): ('an integer', 'integers', '>= 1')."""
    base, meta = _base(annotation)
    condition = _condition(meta)
    origin, args = typing.get_origin(base), typing.get_args(base)
    shortest = max((getattr(item, "min_length", None) or 0 for m in meta
                    for item in (*getattr(m, "metadata", ()), m)), default=0)
    if base is str and shortest:
        return ("a non-empty string" if shortest == 1 else
                f"a string of at least {shortest} characters"), "strings", condition
    if base in _NOUNS:
        return (*_NOUNS[base], condition)
    if origin is Literal:
        return _choices(list(args)), "values", ""
    if origin in (Union, types.UnionType):
        text = describe(base)
        return text, f"values, each {text}", condition
    if _is_list(base):
        if origin is tuple and args and args[-1] is not Ellipsis:
            items = [_parts(a) for a in args]
            if len(set(items)) == 1:
                noun, plural, each = items[0]
                inner = f"{len(args)} {plural}" + (f", each {each}" if each else "")
            else:
                inner = f"{len(args)} ({', '.join(_singular(a) for a in args)})"
        elif args:
            noun, plural, each = _parts(args[0])
            inner = plural + (f", each {each}" if each else "")
        else:
            inner = "values"
        if shortest:  # Field(min_length=...)
            size = "non-empty " if shortest == 1 else ""
            inner = inner if shortest == 1 else f"at least {shortest} {inner}"
            return f"a {size}list of {inner}", f"{size}lists of {inner}", condition
        return f"a list of {inner}", f"lists of {inner}", condition
    if origin in (dict, collections.abc.Mapping) or base is dict:
        return "a mapping", "mappings", condition
    if inspect.isclass(base):
        name = base.__name__
        return f"{'an' if name[0].lower() in 'aeiou' else 'a'} {name}", f"{name}s", condition
    return str(base), f"values of {base}", condition


def _condition(meta: tuple[Any, ...]) -> str:
    """'>= 1', 'in [0, 1)', '> 0 (the contrastive temperature τ)' from Field/annotated_types."""
    bounds: dict[str, Any] = {}
    note = ""
    for m in meta:
        for item in (*getattr(m, "metadata", ()), m):
            for name in ("ge", "gt", "le", "lt"):
                if getattr(item, name, None) is not None:
                    bounds[name] = getattr(item, name)
        note = getattr(m, "description", None) or note
    low = (("[", bounds["ge"]) if "ge" in bounds else
           ("(", bounds["gt"]) if "gt" in bounds else None)
    high = (("]", bounds["le"]) if "le" in bounds else
            (")", bounds["lt"]) if "lt" in bounds else None)
    if low and high:
        text = f"in {low[0]}{_num(low[1])}, {_num(high[1])}{high[0]}"
    elif low:
        text = f"{'>=' if low[0] == '[' else '>'} {_num(low[1])}"
    elif high:
        text = f"{'<=' if high[0] == ']' else '<'} {_num(high[1])}"
    else:
        text = ""
    return f"{text} ({note})".strip() if note else text


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else str(x)
