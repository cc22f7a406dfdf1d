"""ZeRO-1 and ZeRO-3 (FSDP2) for any registered network.

- ZeRO-1 (Rajbhandari et al. 2020, stage 1): ``trainer=zero1`` runs DDP and shards the
  optimizer state across ranks with ``torch.distributed.optim.ZeroRedundancyOptimizer``.
- ZeRO-3: ``trainer=fsdp`` shards parameters, gradients and optimizer state with FSDP2's
  ``fully_shard``, one unit per repeated block plus the root, through Lightning's
  ModelParallelStrategy (data parallel over every process, no tensor parallelism).
"""

from __future__ import annotations

from functools import partial
from typing import Any

import torch
from torch import nn

from mlnotes_zoo.scale.activation_checkpointing import repeated_blocks

__all__ = ["fully_shard_model", "zero1_optimizer"]


def fully_shard_model(net: nn.Module, mesh: Any) -> int:
    """Apply FSDP2 ``fully_shard`` to each repeated block, then to ``net``; returns #units."""
    from torch.distributed.fsdp import FSDPModule, fully_shard

    if isinstance(net, FSDPModule):  # configure_model runs again for trainer.test()
        return 0
    kinds = repeated_blocks(net)
    units = [m for m in net.modules() if kinds and isinstance(m, kinds)]
    for block in units:
        fully_shard(block, mesh=mesh)
    fully_shard(net, mesh=mesh)
    return len(units) + 1


def zero1_optimizer(params: Any, factory: partial | type) -> torch.optim.Optimizer:
    """``ZeroRedundancyOptimizer`` around the optimizer a ``functools.partial`` describes."""
    from torch.distributed.optim import ZeroRedundancyOptimizer

    if isinstance(factory, partial):
        optimizer_class, kwargs = factory.func, dict(factory.keywords)
    else:
        optimizer_class, kwargs = factory, {}
    return ZeroRedundancyOptimizer(list(params), optimizer_class=optimizer_class, **kwargs)
