"""Preemption: SIGTERM or SIGUSR1 end a run with a checkpoint of where it is, one line and
exit code 143 or 138 (128 + the signal's number), so a requeue loop can tell it from success.

Built on Lightning's own handling: Lightning's SIGTERM handler sets ``trainer.received_sigterm``
and its loops stop at the next batch boundary (after the optimizer step and its logging)
by raising ``SIGTERMException``; the :class:`Preemption` callback then writes the checkpoint
in ``on_exception`` (as Lightning's ``OnExceptionCheckpoint`` does, through the trainer's
CheckpointIO, i.e. atomically), and :meth:`Preemption.stopped` turns the exception, which
Lightning lets end the process with exit code 0, into :class:`Preempted`.

- SIGUSR1 is handled as SIGTERM is (outside SLURM nothing else handles it; its default
  action kills the process at once). Under SLURM with Lightning's auto-requeue (the
  ``SLURMEnvironment`` Lightning detects), SIGUSR1 stays Lightning's: it saves
  ``hpc_ckpt_<n>.ckpt``, requeues the job with ``scontrol requeue`` and trains on until
  SLURM's SIGTERM, which ends the run here.
- DataLoader workers (``data.num_workers>0``) ignore both signals, so signalling the whole
  process group (``kill -TERM -<pgid>``, SLURM, a container runtime) stops the run the same
  way instead of killing the workers under it: the workers forked during a run start with
  the two signals blocked (``os.register_at_fork``; the ``fork`` start method, Linux's
  default) and end when the main process shuts them down.
- The checkpoint is ``<run dir>/checkpoints/last.ckpt``, the one ``resume=auto`` and
  ``resume=<run dir>`` continue from.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import signal
from collections.abc import Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import pytorch_lightning as pl
from lightning_fabric.plugins.environments import SLURMEnvironment
from pytorch_lightning.trainer.states import TrainerFn
from pytorch_lightning.utilities.exceptions import SIGTERMException

from mlnotes_zoo.errors import ZooError

__all__ = ["Preemption", "Preempted", "PREEMPTION_SIGNALS", "exit_code"]

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)


def exit_code(signum: int) -> int:
    """The exit code of a run preempted by ``signum``: 128 + its number, as a shell reports
    a process the signal ended (SIGTERM 143, SIGUSR1 138 on Linux)."""
    return 128 + int(signum)


class Preempted(ZooError):
    """The run was stopped by a preemption signal; its state is in ``checkpoint``."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = exit_code(signum)


class Preemption(pl.Callback):
    """On SIGTERM/SIGUSR1: stop at the next batch boundary, write ``checkpoint``, and (through
    :meth:`stopped`) raise :class:`Preempted`. ``run_dir`` is named in its message.

    A signal that comes during the validation inside ``fit`` is passed on to Lightning when
    that validation ends: its metrics, its checkpoints and its random draws are then the
    uninterrupted run's, and the run stops after it, where a resumed run continues exactly.
    """

    def __init__(self, checkpoint: str | os.PathLike, run_dir: str | os.PathLike) -> None:
        self.checkpoint = Path(checkpoint)
        self.run_dir = Path(run_dir)
        self.signum: int | None = None
        self.saved = False
        self._trainer: pl.Trainer | None = None
        self._lightning_handler: Any = None  # Lightning's SIGTERM handler, under ours
        self._deferred = False
        self._previous: dict[int, Any] = {}

    # -- signal handlers
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        """Before Lightning sets its handlers up (it keeps ours, calling them after its own):
        a signal that comes now is remembered."""
        global _block_in_children
        _block_in_children = True
        self.signum, self.saved, self._deferred = None, False, False
        self._trainer, self._lightning_handler = trainer, None
        self._previous = {signal.SIGTERM: signal.getsignal(signal.SIGTERM)}
        _install(signal.SIGTERM, self._remember)
        if not _lightning_requeues(trainer):
            self._previous[signal.SIGUSR1] = signal.getsignal(signal.SIGUSR1)
            _install(signal.SIGUSR1, self._on_signal)
        _SignalLogFilter.install()

    # Lightning's handlers are in place from here on: ours goes on top of them
    def on_sanity_check_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._on_top()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._on_top()

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._on_top()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._deferred and not trainer.sanity_checking:
            self._deferred = False
            self._to_lightning()  # the run stops after this batch, validation done

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()

    def _on_top(self) -> None:
        current = signal.getsignal(signal.SIGTERM)
        if current != self._on_signal:
            self._lightning_handler = current
            _install(signal.SIGTERM, self._on_signal)
        trainer = self._trainer
        if (self.signum is not None and not self._deferred and trainer is not None
                and not trainer.received_sigterm):
            self._to_lightning()  # it came while the run was set up

    def _restore(self) -> None:
        global _block_in_children
        _block_in_children = False
        for signum, handler in self._previous.items():
            _install(signum, handler)
        self._previous, self._lightning_handler = {}, None

    def _remember(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._remember(signum, frame)
        trainer = self._trainer
        if (trainer is not None and trainer.state.fn == TrainerFn.FITTING and trainer.validating
                and not trainer.sanity_checking):
            self._deferred = True  # until this validation has ended (on_validation_end)
            return
        self._to_lightning()

    def _to_lightning(self) -> None:
        """Lightning's SIGTERM handler: ``trainer.received_sigterm``, the loops stop at the
        next batch boundary (DDP: every rank, through Lightning's broadcast)."""
        if callable(self._lightning_handler):
            self._lightning_handler(signal.SIGTERM, None)

    # -- the checkpoint, where the run is
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        if (not isinstance(exception, SIGTERMException) or trainer.sanity_checking
                or trainer.state.fn != TrainerFn.FITTING):
            return  # before training or while testing: nothing new to save
        trainer.save_checkpoint(self.checkpoint, weights_only=False)  # the full state
        self.saved = True

    @contextlib.contextmanager
    def stopped(self, trainer: pl.Trainer) -> Iterator[None]:
        """Around ``trainer.fit``/``trainer.test``: Lightning's ``SIGTERMException`` (exit
        code 0) becomes :class:`Preempted` with the signal's exit code and one line; so does
        a signal that came as the stage ended."""
        try:
            yield
        except SIGTERMException:
            raise self._preempted(trainer) from None
        else:
            if self.signum is not None:
                raise self._preempted(trainer)
        finally:
            self._restore()  # Lightning calls no teardown hook after an exception

    def _preempted(self, trainer: pl.Trainer) -> Preempted:
        signum = self.signum or signal.SIGTERM
        where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        if self.saved:
            state = f"{where} saved in {self.checkpoint}"
        elif self.checkpoint.is_file():
            state = f"at {where}; the last checkpoint is {self.checkpoint}"
        else:
            state = f"at {where}; no checkpoint was written"
        testing = " while testing" if trainer.state.fn == TrainerFn.TESTING else ""
        resume = (f"; continue with resume={self.run_dir} (or resume=auto with the same "
                  "hydra.run.dir)" if self.checkpoint.is_file() else "")
        return Preempted(f"preempted by {signal.Signals(signum).name}{testing}: {state}{resume}",
                         signum)


# -- helpers ------------------------------------------------------------------------------
def _install(signum: int, handler: Any) -> None:
    if handler is not None:
        with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
            signal.signal(signum, handler)


def _lightning_requeues(trainer: pl.Trainer) -> bool:
    """Whether Lightning's SLURM auto-requeue owns SIGUSR1 (its ``SLURMEnvironment``)."""
    environment = getattr(trainer.strategy, "cluster_environment", None)
    if environment is None and SLURMEnvironment.detect():
        environment = SLURMEnvironment()
    return isinstance(environment, SLURMEnvironment) and environment.auto_requeue


class _SignalLogFilter(logging.Filter):
    """Drops Lightning's "Received SIGTERM: 15" info line: :class:`Preempted` says it."""

    def filter(self, record: logging.LogRecord) -> bool:
        return re.match(r"(\[rank: \d+\] )?Received SIGTERM", str(record.msg)) is None

    @classmethod
    def install(cls) -> None:
        logger = logging.getLogger("pytorch_lightning.trainer.connectors.signal_connector")
        if not any(isinstance(f, cls) for f in logger.filters):
            logger.addFilter(cls())


_block_in_children = False  # True while a run handles preemption (setup .. teardown)


def _block_preemption_signals() -> None:
    """In a process forked during a run (a DataLoader worker): the preemption signals stay
    blocked, so that signalling the process group stops the run, not its workers."""
    if _block_in_children:
        signal.pthread_sigmask(signal.SIG_BLOCK, PREEMPTION_SIGNALS)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_block_preemption_signals)
