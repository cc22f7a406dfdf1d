"""Networks of the zoo and their objectives: torch only (no Lightning), one family per module.

``models/<family>.py`` (a package ``models/<family>/`` where it outgrows ~500 lines) holds a
family's networks, its objective (losses, bounds, metric maths) and the layers only it uses;
``models/shared.py`` what two or more families use. Importing this package imports every
family module in it, which registers its networks with :mod:`mlnotes_zoo.registry` (a new
family needs no line here).

Each family lists the functions of its objective in ``OBJECTIVE``; :data:`OBJECTIVES` maps
every such name to its function (each is property-tested in
``tests/reliability/test_properties.py``).
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Callable
from typing import Any

__all__ = ["FAMILIES", "OBJECTIVES"]

FAMILIES: list[str] = [info.name for info in pkgutil.iter_modules(__path__)
                       if info.name != "shared" and not info.name.startswith("_")]

OBJECTIVES: dict[str, Callable[..., Any]] = {}

for _family in FAMILIES:
    _module = importlib.import_module(f"{__name__}.{_family}")
    for _name in getattr(_module, "OBJECTIVE", ()):
        if _name in OBJECTIVES:
            raise ImportError(f"objective {_name!r} of models.{_family} is defined twice")
        OBJECTIVES[_name] = getattr(_module, _name)
