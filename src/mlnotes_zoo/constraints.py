"""Ranges of constructor arguments, written next to the parameters they constrain.

Every constructor a config can reach (networks, LightningModules, DataModules, callbacks)
annotates each argument with its type and, where a range applies, one of the aliases below
(or ``Annotated[T, Field(...)]`` for a one-off range)::

    def __init__(self, *, latent_dim: PositiveInt = 16, dropout: UnitInterval = 0.0): ...

Those annotations are the only statement of what a value may be: the command line, the
compose API and ``create_model`` all validate against them (pydantic reads them), and no
constructor re-checks a single value by hand. Checks that involve two values
(``block_size <= max_len``) stay in the code that knows both.

A leaf module: it imports nothing of the zoo.
"""

from __future__ import annotations

from typing import Annotated

from pydantic import Field

__all__ = [
    "PositiveInt", "NonNegativeInt", "PositiveFloat", "NonNegativeFloat", "Fraction",
    "UnitInterval", "Probability", "Seed", "Field",
]

PositiveInt = Annotated[int, Field(ge=1)]  # sizes, counts: >= 1
NonNegativeInt = Annotated[int, Field(ge=0)]  # >= 0 (0 usually means "none")
PositiveFloat = Annotated[float, Field(gt=0)]  # > 0: learning rates, scales
NonNegativeFloat = Annotated[float, Field(ge=0)]  # >= 0: weights of loss terms, decay
Fraction = Annotated[float, Field(ge=0, le=1)]  # [0, 1]: thresholds, shares
UnitInterval = Annotated[float, Field(ge=0, lt=1)]  # [0, 1): dropout, EMA decay, fractions held out
Probability = Annotated[float, Field(gt=0, le=1)]  # (0, 1]: a probability that must be > 0
Seed = Annotated[int, Field(ge=0, le=2**32 - 1)]  # NumPy's seed range
