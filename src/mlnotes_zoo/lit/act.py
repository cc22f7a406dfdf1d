"""LightningModule for Adaptive Computation Time on parity: task loss + τ · ponder cost.

Evaluation as for PonderNet (:mod:`mlnotes_zoo.lit.pondernet`), so the two read side by side:
two dataloaders (0 = interpolation, logged as ``val/…``, ``test/…``; 1 = extrapolation,
``…/acc_extrap``, ``…/steps_extrap``), the rank correlation of the number of steps with the
number of non-zero entries (``test/steps_spearman``), and the same halting picture
(``pictures/halting.png``, ``pictures/halting_test.png`` + ``.json``). ACT halts
deterministically: the steps are N itself.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import EarlyStopping
from torch import Tensor, nn

from mlnotes_zoo.constraints import Fraction, NonNegativeFloat, NonNegativeInt
from mlnotes_zoo.lit.base import OptimizerFactory, SchedulerFactory
from mlnotes_zoo.lit.pondernet import ParityModule
from mlnotes_zoo.models.act import ACT, act_loss

__all__ = ["LitACT"]


class LitACT(ParityModule):
    """Trains :class:`~mlnotes_zoo.models.act.ACT` on BCE(y, Σ_n p_n y_n) + τ·(N + R).

    Args:
        net: the ACT network (or its registry spec when loaded from a checkpoint).
        tau: τ, the time penalty: weight of the ponder cost ρ = N + R (Graves 2016).
        grad_clip: gradient-norm clipping used when the trainer sets none; 0 disables it.
        stop_at_accuracy: stop training once val/acc (interpolation) reaches this value
            (Lightning ``EarlyStopping(stopping_threshold=...)``); None = never.
        patience: also stop after this many validation epochs without improvement of
            val/acc; None = never (parity sits at chance for a while before it is learnt).
        optimizer, scheduler, activation_checkpointing: see
            :class:`~mlnotes_zoo.lit.base.ZooModule`.

    Logged: ``loss``, ``task`` (BCE), ``ponder_cost`` (mean ρ), ``acc``, ``steps`` (mean N);
    in evaluation also ``acc_extrap``, ``steps_extrap`` and, at test, ``steps_spearman``.
    """

    net: ACT

    def __init__(
        self,
        *,
        net: nn.Module | Mapping[str, Any],
        tau: NonNegativeFloat = 1e-4,
        grad_clip: NonNegativeFloat = 1.0,
        stop_at_accuracy: Fraction | None = None,
        patience: NonNegativeInt | None = None,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(net=net, optimizer=optimizer, scheduler=scheduler, **base_kwargs)
        self.tau, self.grad_clip = tau, grad_clip
        self.stop_at_accuracy, self.patience = stop_at_accuracy, patience
        self.init_evaluation()

    def configure_callbacks(self) -> list[pl.Callback]:
        if self.stop_at_accuracy is None and self.patience is None:
            return []
        return [EarlyStopping(monitor="val/acc", mode="max",
                              patience=self.patience if self.patience is not None else 10**9,
                              stopping_threshold=self.stop_at_accuracy)]

    def model_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        x, y, _ = batch
        result = self.net(x)
        out = act_loss(result.y_hat, y, result.ponder_cost, tau=self.tau)
        out["acc"] = ((result.y_hat.reshape(y.shape) > 0).to(y.dtype) == y).float().mean()
        out["steps"] = result.steps.float().mean()
        self._last_eval = (result.halting_probs.detach(), result.steps)
        return out

    def halting_label(self) -> str:
        return "ACT"
