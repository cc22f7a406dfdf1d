"""Lightning strategies and plugins behind ``trainer=zero1|fsdp`` and ``precision=16-mixed``."""

from __future__ import annotations

from typing import Any

import torch
from pytorch_lightning.plugins.precision import MixedPrecision
from pytorch_lightning.strategies import DDPStrategy, ModelParallelStrategy

__all__ = ["ZeRO1Strategy", "FSDP2Strategy", "cpu_mixed_precision"]


class ZeRO1Strategy(DDPStrategy):
    """DDP whose optimizer state is sharded across ranks (ZeRO stage 1).

    The sharding happens in :meth:`ZooModule.configure_optimizers`, which wraps the
    configured optimizer in ``ZeroRedundancyOptimizer`` when this strategy runs more than
    one process (a single process keeps the plain optimizer). Lightning consolidates the
    shards on rank 0 when it writes a checkpoint.
    """

    shard_optimizer_state = True


class FSDP2Strategy(ModelParallelStrategy):
    """ZeRO-3 with FSDP2: data parallel over every process, no tensor parallelism.

    ``ZooModule.configure_model`` applies ``fully_shard`` per repeated block and to the
    root network on the data-parallel mesh.
    """

    def __init__(self, **kwargs: Any) -> None:
        kwargs.setdefault("save_distributed_checkpoint", False)
        super().__init__(data_parallel_size="auto", tensor_parallel_size=1, **kwargs)

    def setup_environment(self) -> None:
        # ModelParallelStrategy's "auto" means one data-parallel group per node; ZeRO-3
        # shards across every process instead.
        self._data_parallel_size = self.num_nodes * self.num_processes
        super().setup_environment()


def cpu_mixed_precision() -> MixedPrecision:
    """``16-mixed`` on CPU with a real loss scaler (Lightning alone has none there).

    float16 autocast on CPU and a ``torch.amp.GradScaler("cpu")``: the loss is multiplied
    by the scale, steps whose gradients hold inf/NaN are skipped and the scale is halved.
    """
    return MixedPrecision("16-mixed", "cpu", scaler=torch.amp.GradScaler("cpu"))
