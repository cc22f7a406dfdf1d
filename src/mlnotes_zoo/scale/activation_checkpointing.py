"""Activation checkpointing of a network's repeated blocks.

Every network with repeated blocks declares them: ``repeated_blocks = (Block, ...)``. With
``model.activation_checkpointing=true`` each such block is wrapped so that its activations
are recomputed in the backward pass instead of being kept (Chen et al. 2016): memory drops
from O(L) block activations to O(1) per block boundary, for one extra forward.
"""

from __future__ import annotations

from functools import partial

from torch import nn
from torch.distributed.algorithms._checkpoint.checkpoint_wrapper import (
    CheckpointWrapper,
    checkpoint_wrapper,
)
from torch.utils.checkpoint import checkpoint

__all__ = ["repeated_blocks", "apply_activation_checkpointing"]


def repeated_blocks(net: nn.Module) -> tuple[type[nn.Module], ...]:
    """The block classes ``net`` declares as repeated (empty if none)."""
    return tuple(getattr(net, "repeated_blocks", ()))


def apply_activation_checkpointing(net: nn.Module) -> int:
    """Wrap every repeated block of ``net`` in place; returns how many were wrapped."""
    kinds = repeated_blocks(net)
    if not kinds:
        raise ValueError(
            f"{type(net).__name__} declares no repeated_blocks, so there is nothing to "
            "checkpoint; set model.activation_checkpointing=false"
        )
    # use_reentrant=False is passed explicitly: the non-reentrant implementation supports
    # keyword arguments, inputs without requires_grad and torch.compile.
    wrap = partial(checkpoint_wrapper, checkpoint_fn=partial(checkpoint, use_reentrant=False))
    count = 0
    for parent in list(net.modules()):
        if isinstance(parent, CheckpointWrapper):
            continue
        for name, child in list(parent.named_children()):
            if isinstance(child, kinds) and not isinstance(parent, CheckpointWrapper):
                setattr(parent, name, wrap(child))
                count += 1
    return count
