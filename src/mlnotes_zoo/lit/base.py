"""Shared LightningModule plumbing: network from the registry, optimizer, logging, pictures.

A family's LightningModule subclasses :class:`ZooModule` and implements ``model_step``
(used by train/val/test, lightning-hydra-template style) returning
``{"loss": ..., <named parts>}``; everything it returns is logged as ``<stage>/<name>``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from typing import IO, Any

import pytorch_lightning as pl
import torch
from torch import Tensor, nn

from mlnotes_zoo.constraints import check_arguments, parameters
from mlnotes_zoo.errors import ZooError
from mlnotes_zoo.registry import create_model
from mlnotes_zoo.scale.activation_checkpointing import apply_activation_checkpointing
from mlnotes_zoo.scale.sharding import fully_shard_model, zero1_optimizer

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., torch.optim.lr_scheduler.LRScheduler]


class NonFiniteLossError(ZooError, FloatingPointError):
    """A NaN/inf loss (or weights) outside AMP's loss scaling; the run stops on it, keeping
    the last good checkpoint (exit code 1: the run may continue from there)."""

    exit_code = 1


def build_net(net: nn.Module | Mapping[str, Any]) -> nn.Module:
    """A network, or the spec ``{"name": ..., **kwargs}`` a checkpoint keeps for it."""
    if isinstance(net, nn.Module):
        return net
    spec = dict(net)
    return create_model(spec.pop("name"), **spec)


class ZooModule(pl.LightningModule):
    """Base LightningModule: owns ``self.net`` and the optimizer; subclasses do the maths.

    ``model_step`` returns ``{"loss": ..., <named scalar parts>}``; every scalar is logged by
    Lightning as ``train/<name>`` (on the steps the loggers write) and ``val/<name>``,
    ``test/<name>`` (batch-size weighted epoch means over all ranks). The metric that picks
    the best checkpoint is the ModelCheckpoint callback's (``callbacks.model_checkpoint``);
    the random state travels in checkpoints with :class:`~mlnotes_zoo.resume.RandomState`.

    The constructor arguments of the whole class chain are checked against their
    annotations once, here (:mod:`mlnotes_zoo.constraints`).

    Args:
        net: the network (``create_model(...)``), or its spec dict when rebuilt from a
            checkpoint.
        optimizer: ``functools.partial`` of an optimizer class taking the parameters
            (Hydra ``_partial_: true``); Adam(lr=1e-3) when None.
        scheduler: optional ``functools.partial`` of an LR scheduler taking the optimizer.
        activation_checkpointing: recompute the activations of the network's
            ``repeated_blocks`` in the backward pass instead of storing them.
        compile: ``torch.compile`` the network's forward (``nn.Module.compile``: in place,
            so checkpoints keep their keys); the README's "Compiling" table says for which
            families it pays on a CPU (``scripts/bench.py --only compile``).
    """

    def __init__(
        self,
        *,
        net: nn.Module | Mapping[str, Any],
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        activation_checkpointing: bool = False,
        compile: bool = False,
    ) -> None:
        super().__init__()
        # Keep the network's registry spec, never the module itself: a checkpoint then
        # rebuilds it from plain kwargs (mlnotes_zoo.load_checkpoint, load_from_checkpoint).
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        check_arguments(type(self), self.hparams, where=f"{type(self).__name__}: ")
        self.net = build_net(net)
        self.activation_checkpointing = activation_checkpointing
        if activation_checkpointing:
            apply_activation_checkpointing(self.net)
        if compile:
            self.net.compile()  # the forward only; methods called directly stay eager
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        spec = getattr(self.net, "zoo_spec", None)
        if spec is not None:
            self.hparams["net"] = _plain(spec)
        self._skipped_amp_steps = 0  # non-finite losses in a row left to AMP's loss scaler

    # -- subclasses implement ------------------------------------------------------------
    def model_step(self, batch: Any, stage: str) -> dict[str, Tensor]:
        raise NotImplementedError

    # -- shared loop -----------------------------------------------------------------------
    def training_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        out = self.model_step(batch, "train")
        self.check_finite(out)
        if self.logs_this_step(self.global_step):
            self.log_outputs("train", out, _batch_size(batch))
        return out

    def validation_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        out = self.model_step(batch, "val")
        self.log_outputs("val", out, _batch_size(batch))
        return out

    def test_step(self, batch: Any, batch_idx: int) -> dict[str, Tensor]:
        out = self.model_step(batch, "test")
        self.log_outputs("test", out, _batch_size(batch))
        return out

    def log_outputs(self, stage: str, out: Mapping[str, Tensor], batch_size: int) -> None:
        """Log the scalars of ``out`` as ``<stage>/<name>`` (the loss also on the progress
        bar): the step's values in training; in validation and test, Lightning's epoch means
        weighted by ``batch_size`` and reduced over all ranks (``sync_dist``)."""
        train = stage == "train"
        values = {f"{stage}/{k}": v.detach() for k, v in out.items()
                  if isinstance(v, Tensor) and v.dim() == 0}
        loss = values.pop(f"{stage}/loss", None)
        options = dict(on_step=train, on_epoch=not train, sync_dist=not train,
                       batch_size=batch_size, add_dataloader_idx=False)
        self.log_dict(values, **options)
        if loss is not None:
            self.log(f"{stage}/loss", loss, prog_bar=True, **options)

    def logs_this_step(self, batches_done: int) -> bool:
        """Whether the loggers write the values logged at this training step.

        ``self.log`` costs about 0.2 ms a value in Lightning 2.6 (5 % of a small model's
        step for four values), and the loggers write only every ``log_every_n_steps``
        batches, so training values are logged on those batches only. ``batches_done``: the
        optimizer steps taken (``global_step``) or, under manual optimization, the batches
        trained on so far.
        """
        trainer = self._trainer
        if trainer is None:
            return False  # outside a Trainer nothing is written
        return ((batches_done + 1) % trainer.log_every_n_steps == 0 or trainer.should_stop
                or bool(trainer.fast_dev_run))

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

    # -- checkpoints ------------------------------------------------------------------------
    FAMILY_KEY = "mlnotes_zoo_module"  # checkpoint entry: the LightningModule's family

    @classmethod
    def family(cls) -> str:
        """The zoo LightningModule this class is or derives from (``LitGAN``): the family
        whose checkpoints it loads (a subclass written in a test or a notebook belongs to
        its parent's family)."""
        for klass in cls.__mro__:
            if klass.__module__.startswith("mlnotes_zoo.lit.") and klass is not ZooModule:
                return klass.__qualname__
        return cls.__qualname__

    @classmethod
    def load_from_checkpoint(  # type: ignore[override]
        cls,
        checkpoint_path: str | os.PathLike | IO,
        map_location: Any = None,
        hparams_file: str | os.PathLike | None = None,
        strict: bool | None = None,
        weights_only: bool | None = None,
        **kwargs: Any,
    ) -> ZooModule:
        """Lightning's ``load_from_checkpoint``, once the checkpoint is known to fit: written by
        this family (:meth:`check_family`), its network spec checked and its network compared
        with its tensors on the ``meta`` device before anything is built
        (:func:`mlnotes_zoo.weights.network_on_meta`), read with ``weights_only=True``."""
        if isinstance(checkpoint_path, (str, os.PathLike)) and Path(checkpoint_path).is_file():
            from mlnotes_zoo.weights import safe_torch_load

            # the tensors are mapped from the file, not read, to look at the hyper-parameters
            checkpoint = safe_torch_load(checkpoint_path, mmap=True)
            cls.check_family(checkpoint, source=str(checkpoint_path), given=kwargs,
                             compare=strict is not False)
        return super().load_from_checkpoint(
            checkpoint_path, map_location=map_location, hparams_file=hparams_file, strict=strict,
            weights_only=weights_only, **kwargs)

    @classmethod
    def check_family(cls, checkpoint: Any, *, source: str, given: Mapping[str, Any],
                     compare: bool = True) -> None:
        """Raise :class:`~mlnotes_zoo.weights.IncompatibleWeightsError` naming both families
        when ``checkpoint`` was written by another LightningModule (its recorded family, or
        hyper-parameters this class does not take), and check its network spec as a weight
        file's (:func:`~mlnotes_zoo.weights.check_spec`, ``network_on_meta``).
        ``given``: the keyword arguments that override the saved hyper-parameters;
        ``compare=False`` (``strict=False``): the tensors need not match, only the size
        limits apply."""
        from mlnotes_zoo.weights import (
            IncompatibleWeightsError,
            UnreadableWeightsError,
            check_spec,
            network_on_meta,
        )

        if not isinstance(checkpoint, Mapping):
            raise UnreadableWeightsError(f"{source}: not a Lightning checkpoint (a "
                                         f"{type(checkpoint).__name__}, not a mapping)")
        hparams = checkpoint.get("hyper_parameters") or {}
        if not isinstance(hparams, Mapping):
            raise UnreadableWeightsError(f"{source}: its 'hyper_parameters' is a "
                                         f"{type(hparams).__name__}, not a mapping")
        net = hparams.get("net")
        net_name = net.get("name") if isinstance(net, Mapping) else None
        written_by = checkpoint.get(cls.FAMILY_KEY)
        params, open_kwargs = parameters(cls)
        foreign = [str(k) for k in hparams if k not in params and k not in given]
        if (isinstance(written_by, str) and written_by != cls.family()) or (
                foreign and not open_kwargs):
            theirs = written_by if isinstance(written_by, str) else "another LightningModule"
            network = f" (a {net_name!r} network)" if isinstance(net_name, str) else ""
            takes = f"; {cls.__name__} takes no {', '.join(foreign[:3])}" if foreign else ""
            use = (f"{written_by}.load_from_checkpoint" if isinstance(written_by, str) else
                   f"the LightningModule of model={net_name}" if isinstance(net_name, str) else
                   "the LightningModule it was written by")
            raise IncompatibleWeightsError(
                f"{source} is a checkpoint of {theirs}{network}, not of {cls.family()}{takes}: "
                f"load it with {use}, or its network alone with mlnotes_zoo.load_checkpoint")
        if "net" in given or net is None:
            return
        spec = check_spec(net, source)
        state = checkpoint.get("state_dict")
        if isinstance(state, Mapping):
            tensors = {k[4:]: v for k, v in state.items()
                       if isinstance(k, str) and k.startswith("net.") and isinstance(v, Tensor)}
            network_on_meta(spec.pop("name"), spec, tensors, source=source, compare=compare)

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint[self.FAMILY_KEY] = self.family()
        bad = [name for name, p in self.named_parameters() if not _finite(p, allow_inf=False)]
        bad += [name for name, b in self.named_buffers() if not _finite(b, allow_inf=True)]
        if bad:
            raise NonFiniteLossError(
                f"non-finite weights after step {self.global_step}: {', '.join(bad[:3])}"
                f"{f' (+{len(bad) - 3} more)' if len(bad) > 3 else ''}; not writing a "
                "checkpoint over the last good one")

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.check_checkpoint(checkpoint)

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
