"""Code two or more families use: the input checks at the top of every network's ``forward``.

A tensor of the wrong rank, size or dtype otherwise fails deep inside (a matmul that cannot
multiply 64 by 192, an embedding that wants Long), far from the cause. These checks turn it
into a ``ValueError`` that names the argument and the expected shape::

    VAE.forward: x must be a float tensor of shape (B, 1, 8, 8); got torch.int64 (4, 1, 8, 8)

A shape is a sequence of dimensions: an ``int`` must match exactly, a ``str`` names a free
size that must agree wherever the same name appears (``"B"`` across inputs), ``None`` is
anything. The checks read only shapes and dtypes (no values, so no device synchronisation)
and cost a few microseconds per call.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import torch
from torch import Tensor

__all__ = ["check_tensor", "format_shape"]

Dim = int | str | None
Kind = Literal["float", "int", "long", "any"]

_KIND_TEXT = {"float": "float", "int": "integer", "long": "int64", "any": ""}


def format_shape(shape: Sequence[Dim], sizes: dict[str, int] | None = None) -> str:
    """``("B", 1, None)`` -> ``"(B, 1, *)"``; named sizes already fixed are shown as numbers."""
    sizes = sizes or {}
    parts = [
        "*" if d is None else str(sizes.get(d, d)) if isinstance(d, str) else str(d)
        for d in shape
    ]
    return "(" + ", ".join(parts) + (",)" if len(parts) == 1 else ")")


def _kind_ok(x: Tensor, kind: Kind) -> bool:
    if kind == "float":
        return x.is_floating_point()
    if kind == "int":
        return x.dtype in (torch.int64, torch.int32)
    if kind == "long":
        return x.dtype == torch.int64
    return True


def check_tensor(
    x: object,
    name: str,
    shape: Sequence[Dim],
    *,
    where: str,
    kind: Kind = "float",
    sizes: dict[str, int] | None = None,
) -> dict[str, int]:
    """Raise ``ValueError`` unless ``x`` is a ``kind`` tensor of ``shape``.

    ``sizes`` carries the named sizes between calls (``"B"`` of ``src`` and ``tgt_in``);
    it is filled in and returned.
    """
    sizes = {} if sizes is None else sizes
    what = f"{_KIND_TEXT[kind]} tensor" if kind != "any" else "tensor"
    what = ("an " if what[0] in "aeiou" else "a ") + what
    if not isinstance(x, Tensor):
        raise ValueError(f"{where}: {name} must be {what} of shape "
                         f"{format_shape(shape, sizes)}; got {type(x).__name__}")
    seen = dict(sizes)
    ok = x.dim() == len(shape) and _kind_ok(x, kind)
    if ok:
        for dim, size in zip(shape, x.shape, strict=True):
            if isinstance(dim, int) and size != dim:
                ok = False
            elif isinstance(dim, str) and seen.setdefault(dim, size) != size:
                ok = False
    if not ok:
        raise ValueError(f"{where}: {name} must be {what} of shape "
                         f"{format_shape(shape, sizes)}; got {x.dtype} {tuple(x.shape)}")
    sizes.update(seen)
    return sizes
