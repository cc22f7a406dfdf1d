"""LightningModule for Adaptive Computation Time on parity: task loss + τ · ponder cost.

Evaluation as for PonderNet (:mod:`mlnotes_zoo.lit.pondernet`), so the two read side by side:
two dataloaders (0 = interpolation, logged as ``val/…``, ``test/…``; 1 = extrapolation,
``…/acc_extrap``, ``…/steps_extrap``), the rank correlation of the number of steps with the
number of non-zero entries (``test/steps_spearman``), and the same halting picture
(``pictures/halting.png``, ``pictures/halting_test.png`` + ``.json``). ACT halts
deterministically: the steps are N itself.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from PIL import Image
from pytorch_lightning.callbacks import EarlyStopping
from torch import Tensor, nn
from torchmetrics import MeanMetric, SpearmanCorrCoef

from mlnotes_zoo.constraints import Fraction, NonNegativeFloat, NonNegativeInt
from mlnotes_zoo.lit.base import OptimizerFactory, SchedulerFactory, ZooModule
from mlnotes_zoo.lit.pondernet import HaltingStatistics, draw_halting
from mlnotes_zoo.models.act import ACT, act_loss

__all__ = ["LitACT"]


class LitACT(ZooModule):
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
        self.acc_extrap, self.steps_extrap = MeanMetric(), MeanMetric()
        self.steps_spearman = SpearmanCorrCoef()
        self.halting_stats = HaltingStatistics(self.net.in_features + 1, self.net.max_steps)
        self._halting_table: dict[str, Any] | None = None

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

    def configure_gradient_clipping(self, optimizer, gradient_clip_val=None,
                                    gradient_clip_algorithm=None) -> None:
        if gradient_clip_val is None and self.grad_clip > 0:
            gradient_clip_val, gradient_clip_algorithm = self.grad_clip, "norm"
        self.clip_gradients(optimizer, gradient_clip_val=gradient_clip_val,
                            gradient_clip_algorithm=gradient_clip_algorithm)

    # -- evaluation: interpolation (0) and extrapolation (1) dataloaders ----------------------
    def validation_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        return self._eval_step(batch, "val", dataloader_idx)

    def test_step(self, batch: Any, batch_idx: int, dataloader_idx: int = 0) -> Any:
        return self._eval_step(batch, "test", dataloader_idx)

    def _eval_step(self, batch: Any, stage: str, dataloader_idx: int) -> dict[str, Tensor]:
        out = self.model_step(batch, stage)
        p, steps = self._last_eval
        k = batch[2]
        if dataloader_idx == 0:
            self.log_outputs(stage, out, k.shape[0])
        else:
            self.acc_extrap.update(out["acc"], weight=k.shape[0])
            self.steps_extrap.update(out["steps"], weight=k.shape[0])
        if stage == "test":
            self.steps_spearman.update(steps.float(), k.float())
        self.halting_stats.update(k, steps, p, interpolation=dataloader_idx == 0)
        return out

    def on_validation_epoch_start(self) -> None:
        self.halting_stats.reset()

    def on_test_epoch_start(self) -> None:
        self.halting_stats.reset()

    def on_validation_epoch_end(self) -> None:
        self._log_extrapolation("val")
        self._halting_table = self.halting_table()

    def on_test_epoch_end(self) -> None:
        self._log_extrapolation("test")
        if self.steps_spearman.preds:
            self.log("test/steps_spearman", self.steps_spearman.compute())
        self.steps_spearman.reset()
        table = self.halting_table()
        if self.trainer.is_global_zero and table is not None:
            out = Path(self.trainer.default_root_dir) / "pictures"
            out.mkdir(parents=True, exist_ok=True)
            (out / "halting_test.json").write_text(json.dumps(table, indent=1) + "\n")
            image = (draw_halting(table).permute(1, 2, 0) * 255).round().byte().numpy()
            Image.fromarray(image).save(out / "halting_test.png")

    def _log_extrapolation(self, stage: str) -> None:
        if self.acc_extrap.update_called:
            self.log(f"{stage}/acc_extrap", self.acc_extrap.compute())
            self.log(f"{stage}/steps_extrap", self.steps_extrap.compute())
        self.acc_extrap.reset()
        self.steps_extrap.reset()

    def halting_table(self) -> dict[str, Any] | None:
        """Per k (non-zero entries): count, mean N, mean p(n | k); None before evaluation."""
        if not self.halting_stats.update_called:
            return None
        return {**self.halting_stats.compute(), "halting": "ACT"}

    @torch.no_grad()
    def pictures(self, batch: Any) -> dict[str, Tensor]:
        return {"halting": draw_halting(self._halting_table)} if self._halting_table else {}
