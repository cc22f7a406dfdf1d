"""LightningModule for the normalizing flows: exact maximum likelihood on dequantized pixels."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader
from torchvision.utils import make_grid

from mlnotes_zoo.constraints import Field, NonNegativeInt, PositiveFloat
from mlnotes_zoo.lit.base import OptimizerFactory, SchedulerFactory, ZooModule
from mlnotes_zoo.models.flows import (
    MultiScaleFlow,
    fit_gaussian,
    flow_nll,
    gaussian_bits_per_dim,
    uniform_dequantize,
)


class LitFlow(ZooModule):
    """Trains :class:`~mlnotes_zoo.models.flows.RealNVP` / :class:`~.Glow` by minimising
    bits/dim = −(log p(y) − D log K) / (D log 2) of uniformly dequantized images y.

    Logged per stage: ``loss`` (= ``bpd``), ``bpd``, ``nll`` (nats per image), ``log_pz`` and
    ``log_det`` (the two terms of the change of variables). At test time also
    ``gaussian_bpd``: a full-covariance Gaussian fitted to the dequantized training split,
    the baseline the flow must beat (its images come from the DataModule's
    ``reference_data("train")``).

    Args:
        net: the flow (or its registry spec when loaded from a checkpoint).
        levels: K, the number of discrete pixel levels; ``None`` takes the datamodule's
            ``levels`` (17 for the digits) or 256 (8-bit images).
        temperature: temperature of the ``samples`` picture (Glow §5); ``samples_t1`` is
            always drawn at 1.
        num_pictures: samples per grid.
        gaussian_baseline: fit and report the Gaussian baseline at test time.
        optimizer, scheduler, activation_checkpointing: see
            :class:`~mlnotes_zoo.lit.base.ZooModule`.
    """

    net: MultiScaleFlow

    def __init__(
        self,
        *,
        net: nn.Module | Mapping[str, Any],
        levels: Annotated[int, Field(ge=2, description="discrete pixel levels")] | None = None,
        temperature: PositiveFloat = 0.7,
        num_pictures: NonNegativeInt = 64,
        gaussian_baseline: bool = True,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(net=net, optimizer=optimizer, scheduler=scheduler, **base_kwargs)
        self.levels = levels
        self.temperature = temperature
        self.num_pictures = num_pictures
        self.gaussian_baseline = gaussian_baseline
        self._gaussian = None

    @property
    def num_levels(self) -> int:
        if self.levels is not None:
            return self.levels
        datamodule = getattr(self._trainer, "datamodule", None) if self._trainer else None
        return int(getattr(datamodule, "levels", 256))

    def model_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        x = batch[0]
        y = uniform_dequantize(x, self.num_levels)  # fresh noise u each step
        z, log_det = self.net(y)
        parts = flow_nll(z, log_det, num_dims=y[0].numel(), levels=self.num_levels)
        out = {name: value.mean() for name, value in parts.items()}
        out["loss"] = out["bpd"]
        if stage == "test" and self._gaussian is not None:
            out["gaussian_bpd"] = gaussian_bits_per_dim(self._gaussian, y,
                                                        levels=self.num_levels).mean()
        return out

    def on_test_epoch_start(self) -> None:
        datamodule = self.trainer.datamodule
        if self.gaussian_baseline and hasattr(datamodule, "reference_data"):
            # The training images shuffled by the global random stream, in batches of the
            # test loader's size: the draws and batches of the training loader this baseline
            # was first measured with (its dequantization noise goes batch by batch).
            train = datamodule.reference_data("train")
            batch_size = getattr(self.trainer.test_dataloaders, "batch_size", None) or 256
            images = (batch[0] for batch in DataLoader(train, batch_size=batch_size,
                                                       shuffle=True))
            self._gaussian = fit_gaussian(images, levels=self.num_levels)

    @torch.no_grad()
    def pictures(self, batch: Any) -> dict[str, Tensor]:
        grids = {}
        for name, temperature in (("samples", self.temperature), ("samples_t1", 1.0)):
            samples = self.net.sample(self.num_pictures, temperature=temperature)
            grids[name] = make_grid(samples.float(), nrow=8, padding=1, pad_value=0.5)
        return grids
