"""LightningModule for PonderNet: the ponder loss in training, adaptive halting in evaluation.

Validation and test take two dataloaders (:class:`~mlnotes_zoo.data.parity.ParityDataModule`):
0 = interpolation, whose batch means are the usual ``val/…``, ``test/…`` metrics, and
1 = extrapolation, logged as ``…/acc_extrap`` and ``…/steps_extrap``. Both feed the halting
picture: the mean halting distribution p(n | k) for every number k of non-zero entries.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor, nn
from torchmetrics import MeanMetric, Metric, SpearmanCorrCoef
from torchvision.transforms.functional import pil_to_tensor

from mlnotes_zoo.constraints import NonNegativeFloat, Probability
from mlnotes_zoo.lit.base import OptimizerFactory, SchedulerFactory, ZooModule
from mlnotes_zoo.models.pondernet import PonderNet, expected_steps, ponder_loss


class ParityModule(ZooModule):
    """What LitPonderNet and LitACT share, so that the two read side by side: gradient-norm
    clipping by default (``self.grad_clip``), evaluation on the interpolation (0) and
    extrapolation (1) dataloaders, the steps' rank correlation with the number of non-zero
    entries at test, and the halting statistics, picture and report.

    A subclass calls :meth:`init_evaluation` in its constructor; its ``model_step`` leaves
    ``self._last_eval = (halting probabilities (N, B), halting steps (B,))``.
    """

    grad_clip: float

    def init_evaluation(self) -> None:
        self.acc_extrap = MeanMetric()
        self.steps_extrap = MeanMetric()
        self.steps_spearman = SpearmanCorrCoef()
        self.halting_stats = HaltingStatistics(self.net.in_features + 1, self.net.max_steps)
        self._halting_table: dict[str, Any] | None = None  # of the last validation epoch

    def halting_label(self) -> str:
        """How the model halts, for the report and picture."""
        raise NotImplementedError

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
            n = k.shape[0]
            self.acc_extrap.update(out["acc"], weight=n)
            self.steps_extrap.update(out["steps"], weight=n)
        if stage == "test":
            self.steps_spearman.update(steps.float(), k.float())
        # Halting statistics per number of non-zero entries k, for the picture.
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
        table = self.halting_table()  # on every rank: the statistics are reduced over all
        if self.trainer.is_global_zero and table is not None:
            self._write_halting_report(Path(self.trainer.default_root_dir), table)

    def _log_extrapolation(self, stage: str) -> None:
        if self.acc_extrap.update_called:
            self.log(f"{stage}/acc_extrap", self.acc_extrap.compute())
            self.log(f"{stage}/steps_extrap", self.steps_extrap.compute())
        self.acc_extrap.reset()
        self.steps_extrap.reset()

    def halting_table(self) -> dict[str, Any] | None:
        """Per k (non-zero entries) seen this epoch: count, mean halting step, mean p(n | k);
        None before any evaluation batch. Call it on every rank (it reduces over them)."""
        if not self.halting_stats.update_called:
            return None
        return {**self.halting_stats.compute(), "halting": self.halting_label()}

    def _write_halting_report(self, root: Path, table: Mapping[str, Any]) -> None:
        out = root / "pictures"
        out.mkdir(parents=True, exist_ok=True)
        (out / "halting_test.json").write_text(json.dumps(table, indent=1) + "\n")
        image = draw_halting(table)
        Image.fromarray(
            (image.permute(1, 2, 0) * 255).round().byte().numpy()).save(out / "halting_test.png")

    @torch.no_grad()
    def pictures(self, batch: Any) -> dict[str, Tensor]:
        # Called after the validation epoch: the statistics of all of it, not just `batch`.
        if not self._halting_table:
            return {}
        return {"halting": draw_halting(self._halting_table)}


class LitPonderNet(ParityModule):
    """Trains :class:`~mlnotes_zoo.models.pondernet.PonderNet` on L_rec + β·KL(p ‖ p_G).

    Args:
        net: the PonderNet (or its registry spec when loaded from a checkpoint).
        beta: β, weight of the KL regulariser towards the geometric prior.
        lambda_p: λ_p of the prior p_G(n) = λ_p (1 − λ_p)^{n−1}; its mean 1/λ_p steps is
            the prior's guess of how long to think.
        halting: evaluation rule, ``"sample"`` (halt at step n with probability λ_n, as in
            the paper) or ``"threshold"`` (halt once Σ_{j≤n} p_j ≥ ``threshold``).
        threshold: the cumulative halting probability of the ``"threshold"`` rule.
        grad_clip: gradient-norm clipping used when the trainer sets none (the recurrent
            step is applied N times; labml clips at 1 as well). 0 disables it.
        optimizer, scheduler, activation_checkpointing: see
            :class:`~mlnotes_zoo.lit.base.ZooModule`.

    Logged: ``loss``, ``reconstruction``, ``kl``, ``acc`` (prediction at the halting step),
    ``steps`` (the halting step under ``halting``), ``expected_steps`` (E_p[n]); in
    evaluation also ``acc_extrap``, ``steps_extrap`` and, at test, ``steps_spearman`` (rank
    correlation of halting step with the number of non-zero entries).
    """

    net: PonderNet

    def __init__(
        self,
        *,
        net: nn.Module | Mapping[str, Any],
        beta: NonNegativeFloat = 0.01,
        lambda_p: Probability = 0.1,
        halting: Literal["sample", "threshold"] = "sample",
        threshold: Probability = 0.5,
        grad_clip: NonNegativeFloat = 1.0,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        **base_kwargs: Any,
    ) -> None:
        super().__init__(net=net, optimizer=optimizer, scheduler=scheduler, **base_kwargs)
        self.beta, self.lambda_p = beta, lambda_p
        self.halting, self.threshold = halting, threshold
        self.grad_clip = grad_clip
        self.init_evaluation()

    # -- the step ------------------------------------------------------------------------
    def model_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        x, y, _ = batch
        y_hat, lambdas = self.net(x)  # (N, B, 1), (N, B)
        out = ponder_loss(y_hat, lambdas, y, beta=self.beta, lambda_p=self.lambda_p)
        p = out.pop("halting_probs")  # (N, B)
        if stage == "train":
            # The halting step drawn from p: what sampled inference would have answered.
            with torch.no_grad():
                steps = torch.multinomial(p.detach().T.float().clamp_min(0), 1).squeeze(1)
                pred = y_hat.detach()[steps, torch.arange(x.shape[0], device=x.device)]
            steps = steps + 1
        else:
            pred, steps = self.net.infer(x, halting=self.halting, threshold=self.threshold)[:2]
        out["acc"] = ((pred.reshape(y.shape) > 0).to(y.dtype) == y).float().mean()
        out["steps"] = steps.float().mean()
        out["expected_steps"] = expected_steps(p.detach()).mean()
        self._last_eval = (p.detach(), steps)
        return out

    def halting_label(self) -> str:
        return self.halting


class HaltingStatistics(Metric):
    """Halting per number k of non-zero entries, summed over batches and ranks: examples,
    Σ halting step and Σ p(n | x) per k, and the largest k of the interpolation set.

    ``compute()``: ``{"k", "count", "mean_steps", "halting_probs", "train_max_nonzero"}``
    over the k seen (lists, for the JSON report and :func:`draw_halting`).
    """

    full_state_update = False

    def __init__(self, num_k: int, max_steps: int) -> None:
        super().__init__()
        self.add_state("count", torch.zeros(num_k), dist_reduce_fx="sum")
        self.add_state("steps", torch.zeros(num_k), dist_reduce_fx="sum")
        self.add_state("probs", torch.zeros(num_k, max_steps), dist_reduce_fx="sum")
        self.add_state("train_max_k", torch.tensor(0), dist_reduce_fx="max")

    def update(self, k: Tensor, steps: Tensor, halting_probs: Tensor, *,
               interpolation: bool) -> None:
        """k (B,) non-zero entries, steps (B,) halting steps, halting_probs (N, B)."""
        self.probs.index_add_(0, k, halting_probs.T.float())
        self.steps.index_add_(0, k, steps.float())
        self.count.index_add_(0, k, torch.ones_like(k, dtype=torch.float))
        if interpolation:
            self.train_max_k = torch.maximum(self.train_max_k, k.max())

    def compute(self) -> dict[str, Any]:
        seen = self.count > 0
        return {
            "k": torch.nonzero(seen).squeeze(1).tolist(),
            "count": self.count[seen].long().tolist(),
            "mean_steps": (self.steps[seen] / self.count[seen]).tolist(),
            "halting_probs": (self.probs[seen] / self.count[seen, None]).tolist(),
            "train_max_nonzero": int(self.train_max_k),
        }


def draw_halting(table: Mapping[str, Any], cell: int = 14) -> Tensor:
    """A heat map of p(n | k): k (non-zero entries) across, step n down; the mean halting
    step per k as a red line; a dashed line where extrapolation starts. (3, H, W) in [0, 1].
    """
    ks, probs, means = table["k"], table["halting_probs"], table["mean_steps"]
    k_max, n_steps = max(ks), len(probs[0])
    left, top, right, bottom = 44, 28, 12, 40
    width, height = left + k_max * cell + right, top + n_steps * cell + bottom
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    try:
        font = ImageFont.load_default(size=11)  # Pillow >= 10.1: a scalable font
    except TypeError:
        font = ImageFont.load_default()
    for k, column in zip(ks, probs, strict=True):
        peak = max(column) or 1.0
        for n, prob in enumerate(column):
            shade = prob / peak  # each column scaled to its own maximum
            colour = tuple(int(255 - shade * (255 - c)) for c in (8, 48, 107))
            x0, y0 = left + (k - 1) * cell, top + n * cell
            draw.rectangle([x0, y0, x0 + cell - 1, y0 + cell - 1], fill=colour)
    points = [(left + (k - 0.5) * cell, top + (m - 0.5) * cell) for k, m in zip(ks, means,
                                                                                 strict=True)]
    if len(points) > 1:
        draw.line(points, fill=(220, 30, 30), width=2)
    for point in points:
        draw.ellipse([point[0] - 2, point[1] - 2, point[0] + 2, point[1] + 2], fill=(220, 30, 30))
    boundary = table.get("train_max_nonzero", 0)
    if 0 < boundary < k_max:
        x = left + boundary * cell
        for y in range(top, top + n_steps * cell, 6):
            draw.line([(x, y), (x, y + 3)], fill=(0, 0, 0), width=1)
    draw.rectangle([left - 1, top - 1, left + k_max * cell, top + n_steps * cell],
                   outline="black")
    for k in range(1, k_max + 1):
        if k == 1 or k % 4 == 0:
            draw.text((left + (k - 1) * cell + 2, top + n_steps * cell + 3), str(k),
                      fill="black", font=font)
    for n in range(1, n_steps + 1):
        if n == 1 or n % 5 == 0:
            draw.text((left - 20, top + (n - 1) * cell + 1), str(n), fill="black", font=font)
    draw.text((left, height - 16), "non-zero elements k  (| = train range end)", fill="black",
              font=font)
    draw.text((4, 4), f"p(halt at step n | k), red: mean halting step ({table['halting']})",
              fill="black", font=font)
    draw.text((4, top + n_steps * cell // 2), "n", fill="black", font=font)
    return pil_to_tensor(image).float() / 255
