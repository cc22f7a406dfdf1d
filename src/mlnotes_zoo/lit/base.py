"""Shared LightningModule plumbing: network from the registry, optimizer, logging, pictures.

A family's LightningModule subclasses :class:`ZooModule` and implements ``model_step``
(used by train/val/test, lightning-hydra-template style) returning
``{"loss": ..., <named parts>}``; everything it returns is logged as ``<stage>/<name>``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from functools import partial
from typing import Any, Literal

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from mlnotes_zoo.registry import create_model
from mlnotes_zoo.resume import rng_state, set_rng_state
from mlnotes_zoo.scale.activation_checkpointing import apply_activation_checkpointing
from mlnotes_zoo.scale.sharding import fully_shard_model, zero1_optimizer

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class NonFiniteLossError(FloatingPointError):
    """A NaN/inf loss (or weights) outside AMP's loss scaling; the run stops on it."""


def build_net(net: nn.Module | Mapping[str, Any]) -> nn.Module:
    """A network, or the spec ``{"name": ..., **kwargs}`` a checkpoint keeps for it."""
    if isinstance(net, nn.Module):
        return net
    spec = dict(net)
    return create_model(spec.pop("name"), **spec)


class ZooModule(pl.LightningModule):
    """Base LightningModule: owns ``self.net`` and the optimizer; subclasses do the maths.

    ``model_step`` returns ``{"loss": ..., <named scalar parts>}``; every scalar is logged as
    ``train/<name>`` (per logged step) and ``val/<name>``, ``test/<name>`` (epoch means).

    Args:
        net: the network (``create_model(...)``), or its spec dict when rebuilt from a
            checkpoint.
        optimizer: ``functools.partial`` of an optimizer class taking the parameters
            (Hydra ``_partial_: true``); Adam(lr=1e-3) when None.
        scheduler: optional ``functools.partial`` of an LR scheduler taking the optimizer.
        monitor, monitor_mode: the validation metric that picks the best checkpoint
            (``configs/callbacks/model_checkpoint.yaml`` reads them from the model config).
        activation_checkpointing: recompute the activations of the network's
            ``repeated_blocks`` in the backward pass instead of storing them.
    """

    def __init__(
        self,
        *,
        net: nn.Module | Mapping[str, Any],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        monitor: str = "val/loss",
        monitor_mode: Literal["min", "max"] = "min",
        activation_checkpointing: bool = False,
    ) -> None:
        super().__init__()
        if monitor_mode not in ("min", "max"):
            raise ValueError(f"monitor_mode must be 'min' or 'max', got {monitor_mode!r}")
        self.net = build_net(net)
        self.monitor, self.monitor_mode = monitor, monitor_mode
        self.activation_checkpointing = activation_checkpointing
        if activation_checkpointing:
            apply_activation_checkpointing(self.net)
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # Keep the network's registry spec, never the module itself: a checkpoint then
        # rebuilds it from plain kwargs (mlnotes_zoo.load_checkpoint, load_from_checkpoint).
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        spec = getattr(self.net, "zoo_spec", None)
        if spec is not None:
            self.hparams["net"] = _plain(spec)
        self._resume_rng: dict[str, Any] | None = None
        self._skipped_amp_steps = 0  # non-finite losses in a row left to AMP's loss scaler

    # -- subclasses implement ------------------------------------------------------------
    def model_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        raise NotImplementedError

    # -- shared loop -----------------------------------------------------------------------
    # Logging is the main cost of a small model's step (each self.log call walks Lightning's
    # result collection), so: training values are logged only on the steps the loggers
    # write (log_every_n_steps); val/test values are summed here and logged once per epoch
    # as batch-size weighted means, reduced across ranks.
    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        out = self.model_step(batch, "train")
        self.check_finite(out)
        if self._trainer is None or self.trainer._logger_connector.should_update_logs:
            parts = {f"train/{k}": v.detach() for k, v in out.items()
                     if k != "loss" and v.dim() == 0}
            self.log_dict(parts, on_step=True, on_epoch=False, batch_size=_batch_size(batch))
            self.log("train/loss", out["loss"].detach(), prog_bar=True, on_step=True,
                     on_epoch=False, batch_size=_batch_size(batch))
        return out

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        return self._accumulate(self.model_step(batch, "val"), batch)

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        return self._accumulate(self.model_step(batch, "test"), batch)

    def on_validation_epoch_start(self) -> None:
        self._sums: dict[str, Tensor] = {}
        self._count = 0

    on_test_epoch_start = on_validation_epoch_start

    def _accumulate(self, out: dict[str, Tensor], batch: Any) -> dict[str, Tensor]:
        n = _batch_size(batch)
        for k, v in out.items():
            if v.dim() == 0:
                self._sums[k] = self._sums.get(k, 0.0) + v.detach().float() * n
        self._count += n
        return out

    def on_validation_epoch_end(self) -> None:
        self._log_epoch_means("val")

    def on_test_epoch_end(self) -> None:
        self._log_epoch_means("test")

    def _log_epoch_means(self, stage: str) -> None:
        if not self._sums:
            return
        names = sorted(self._sums)
        totals = torch.stack([self._sums[k] for k in names] + [
            torch.tensor(float(self._count), device=self.device)])
        totals = self.trainer.strategy.reduce(totals, reduce_op="sum")  # identity on one process
        means = totals[:-1] / totals[-1]
        for name, value in zip(names, means, strict=True):
            # already reduced; sync_dist only tells Lightning so (it is a no-op average)
            self.log(f"{stage}/{name}", value, prog_bar=name == "loss",
                     sync_dist=self.trainer.world_size > 1)

    def configure_model(self) -> None:
        # ZeRO-3 (trainer=fsdp): Lightning's ModelParallelStrategy sets a device mesh and
        # calls this hook before the optimizer is built; other strategies leave it None.
        if self.device_mesh is not None:
            fully_shard_model(self.net, self.device_mesh["data_parallel"])

    def configure_optimizers(self) -> Any:
        factory = self.optimizer_factory or partial(torch.optim.Adam, lr=1e-3)
        strategy = self._trainer.strategy if self._trainer is not None else None
        if getattr(strategy, "shard_optimizer_state", False) and strategy.world_size > 1:
            optimizer = zero1_optimizer(self.parameters(), factory)  # ZeRO-1 (trainer=zero1)
        else:
            optimizer = factory(self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer)
        return {
            "optimizer": optimizer,
            "lr_scheduler": {"scheduler": scheduler, "interval": "epoch"},
        }

    # -- non-finite losses ---------------------------------------------------------------
    # With AMP's GradScaler an overflow is routine: the scaler skips that step and halves the
    # loss scale. Elsewhere a NaN/inf loss would turn every weight into NaN, so the run stops
    # before its backward pass, and no checkpoint is written over the last good one.
    amp_max_skipped_steps = 25  # non-finite AMP losses in a row before giving up

    def check_finite(self, out: Mapping[str, Tensor], loss_key: str = "loss") -> bool:
        """True when ``out[loss_key]`` is finite; False when AMP's scaler will skip the step.

        Otherwise raises :class:`NonFiniteLossError` naming the step and every loss part.
        """
        loss = out[loss_key]
        if bool(torch.isfinite(loss.detach()).all()):  # one host sync per step
            self._skipped_amp_steps = 0
            return True
        parts = ", ".join(f"{k}={float(v):.6g}" for k, v in out.items()
                          if isinstance(v, Tensor) and v.numel() == 1)
        where = f"step {self.global_step} (epoch {self.current_epoch})"
        scaler = getattr(self._trainer.precision_plugin, "scaler", None) if self._trainer else None
        if scaler is not None and scaler.is_enabled():
            self._skipped_amp_steps += 1
            if self._skipped_amp_steps <= self.amp_max_skipped_steps:
                return False  # scaler.step() sees inf/NaN gradients and skips this update
            raise NonFiniteLossError(
                f"non-finite loss at {where} for {self._skipped_amp_steps} steps in a row "
                f"despite AMP loss scaling (scale {float(scaler.get_scale()):g}): {parts}")
        raise NonFiniteLossError(f"non-finite loss at {where}: {parts}")

    # -- exact resume ----------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        bad = [name for name, p in self.named_parameters() if not _finite(p, allow_inf=False)]
        bad += [name for name, b in self.named_buffers() if not _finite(b, allow_inf=True)]
        if bad:
            raise NonFiniteLossError(
                f"non-finite weights after step {self.global_step}: {', '.join(bad[:3])}"
                f"{f' (+{len(bad) - 3} more)' if len(bad) > 3 else ''}; not writing a "
                "checkpoint over the last good one")
        checkpoint["rng_states"] = rng_state()  # Lightning keeps everything else

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_checkpoint(checkpoint)
        # only when training resumes (not for test or load_from_checkpoint); now, for
        # strategies that restore after on_fit_start, and again in on_fit_start
        self._resume_rng = checkpoint.get("rng_states") if self._fitting() else None
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng)

    def on_fit_start(self) -> None:
        # on_fit_start, not on_train_start: the training DataLoader iterator is created
        # before on_train_start and draws its base seed (the batch order) from torch's RNG.
        if self._resume_rng is not None:
            set_rng_state(self._resume_rng)
        self._resume_rng = None

    def _fitting(self) -> bool:
        return self._trainer is not None and self.trainer.state.fn == "fit"

    def check_checkpoint(self, checkpoint: Mapping[str, Any]) -> None:
        """Raise IncompatibleWeightsError naming the model or the tensors that differ."""
        from mlnotes_zoo.weights import (
            IncompatibleWeightsError,
            check_state_dict,
            describe,
            spec_note,
        )

        saved = (checkpoint.get("hyper_parameters") or {}).get("net")
        ours = getattr(self.net, "zoo_spec", None)
        if isinstance(saved, Mapping) and ours is not None:
            if saved.get("name") != ours["name"]:
                raise IncompatibleWeightsError(
                    f"the checkpoint holds a {saved.get('name')!r} network ({describe(saved)}), "
                    f"but this run trains {ours['name']!r}; pick model={saved.get('name')}")
        if "state_dict" in checkpoint and self.strict_loading:
            check_state_dict(self.state_dict(), checkpoint["state_dict"], source="the checkpoint",
                             target=f"this run's model ({describe(ours or {})})",
                             note=spec_note(saved if isinstance(saved, Mapping) else None,
                                            ours or {}))

    # -- pictures ------------------------------------------------------------------------
    def pictures(self, batch: Any) -> dict[str, Tensor]:
        """Image grids (3, H, W) in [0, 1] worth looking at, keyed by name; none by default."""
        return {}


def paired_rows_grid(inputs: Tensor, outputs: Tensor, *, nrow: int = 8) -> Tensor:
    """An image grid (3, H', W') of ``inputs`` (N, C, H, W) in odd rows with ``outputs``
    (reconstructions) right below them, ``nrow`` pairs per row; a remainder of fewer than
    ``nrow`` pairs is dropped unless there are fewer than ``nrow`` in all."""
    from torchvision.utils import make_grid

    n = (inputs.shape[0] // nrow) * nrow or inputs.shape[0]
    nrow = min(nrow, n)
    rows = torch.stack([inputs[:n], outputs[:n]], dim=1)  # (N, 2, C, H, W)
    rows = rows.reshape(-1, nrow, 2, *inputs.shape[1:]).transpose(1, 2)
    return make_grid(rows.reshape(-1, *inputs.shape[1:]), nrow=nrow, padding=1, pad_value=0.5)


def _batch_size(batch: Any) -> int:
    first = batch[0] if isinstance(batch, (list, tuple)) else batch
    return int(first.shape[0]) if isinstance(first, Tensor) else 1


def _finite(t: Tensor, *, allow_inf: bool) -> bool:
    if not t.is_floating_point():
        return True
    t = t.to_local() if hasattr(t, "to_local") else t  # FSDP2 DTensor: this rank's shard
    return not bool(t.isnan().any()) if allow_inf else bool(t.isfinite().all())


def _plain(value: Any) -> Any:
    """Tuples/lists/dicts of plain values, safe for ``torch.load(weights_only=True)``."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, (str, int, float, bool)) or value is None:
        return value
    raise TypeError(
        f"network kwarg of type {type(value).__name__} cannot be kept in a checkpoint; "
        "pass plain values (numbers, strings, lists) to create_model"
    )
