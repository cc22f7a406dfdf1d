"""Preemption: SIGTERM or SIGUSR1 end a run with a checkpoint of where it is, one line and
exit code 143 or 138 (128 + the signal's number), so a requeue loop can tell it from success.

Built on Lightning's own handling: once Lightning's SIGTERM handler has set
``trainer.received_sigterm``, its loops stop at the end of the batch (after the optimizer
step and its logging) by raising ``SIGTERMException``; the :class:`Preemption` callback then
writes the checkpoint in ``on_exception`` (as Lightning's ``OnExceptionCheckpoint`` does,
through the trainer's CheckpointIO, i.e. atomically), and :meth:`Preemption.stopped` turns
the exception, which Lightning lets end the process with exit code 0, into
:class:`Preempted`.

The signal itself is only remembered; the run acts on it at the start of the next batch,
where every rank of a distributed run is at the same point: the ranks agree (any rank
signalled: all stop) and all pass it to Lightning's handler together, so that the whole
run stops after that batch. (Lightning's handler, called by the signal where it lands,
broadcasts from rank 0 there, out of step with the other ranks' collectives.) A validation
under way is finished; a signal during the last batches of the run stops it once ``fit``
has ended, before testing.

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
    """The run was stopped by a preemption signal; the message names the checkpoint of where
    it stopped and how to continue; ``exit_code`` is 128 + the signal's number."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = int(signum)
        self.exit_code = exit_code(signum)


class Preemption(pl.Callback):
    """On SIGTERM/SIGUSR1: stop after the next batch, write ``checkpoint``, and (through
    :meth:`stopped`) raise :class:`Preempted`. ``run_dir`` is named in its message."""

    def __init__(self, checkpoint: str | os.PathLike, run_dir: str | os.PathLike) -> None:
        self.checkpoint = Path(checkpoint)
        self.run_dir = Path(run_dir)
        self.signum: int | None = None
        self.saved = False
        self._lightning_handler: Any = None  # Lightning's SIGTERM handler, under ours
        self._previous: dict[int, Any] = {}

    # -- signal handlers: remember the signal, nothing more
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        global _block_in_children
        _block_in_children = True
        self.signum, self.saved, self._lightning_handler = None, False, None
        self._previous = {signal.SIGTERM: signal.getsignal(signal.SIGTERM)}
        _install(signal.SIGTERM, self._remember)
        if not _lightning_requeues(trainer):
            self._previous[signal.SIGUSR1] = signal.getsignal(signal.SIGUSR1)
            _install(signal.SIGUSR1, self._remember)
        _SignalLogFilter.install()

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._on_top()

    def on_test_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._on_top()

    def _on_top(self) -> None:
        """Lightning has set its SIGTERM handler (keeping ours inside it): ours goes on top,
        so that a signal reaches Lightning only through :meth:`_act`."""
        current = signal.getsignal(signal.SIGTERM)
        if current != self._remember:
            self._lightning_handler = current
            _install(signal.SIGTERM, self._remember)

    def _remember(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is None:
            self.signum = signum

    # -- acting on it, on every rank at the same point
    def on_train_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                             batch: Any, batch_idx: int) -> None:
        self._act(trainer)

    def on_test_batch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                            batch: Any, batch_idx: int, dataloader_idx: int = 0) -> None:
        self._act(trainer)

    def _act(self, trainer: pl.Trainer) -> None:
        if trainer.received_sigterm or not self._signalled(trainer):
            return
        if self.signum is None:
            self.signum = signal.SIGTERM  # another rank was signalled
        if callable(self._lightning_handler):
            self._lightning_handler(signal.SIGTERM, None)  # all ranks at once: in step

    def _signalled(self, trainer: pl.Trainer) -> bool:
        """Whether any rank has had a signal (one collective per batch when distributed)."""
        return bool(trainer.strategy.reduce_boolean_decision(self.signum is not None,
                                                             all=False))

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._restore()

    def _restore(self) -> None:
        global _block_in_children
        _block_in_children = False
        for signum, handler in self._previous.items():
            _install(signum, handler)
        self._previous, self._lightning_handler = {}, None

    # -- the checkpoint, where the run is
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                     exception: BaseException) -> None:
        if not isinstance(exception, SIGTERMException) or trainer.state.fn != TrainerFn.FITTING:
            return  # while testing: nothing new to save
        trainer.save_checkpoint(self.checkpoint, weights_only=False)  # the full state
        self.saved = True

    @contextlib.contextmanager
    def stopped(self, trainer: pl.Trainer) -> Iterator[None]:
        """Around ``trainer.fit``/``trainer.test``: Lightning's ``SIGTERMException`` (exit
        code 0) becomes :class:`Preempted` with the signal's exit code and one line; so does
        a signal that came as the stage ended (every rank stops)."""
        try:
            yield
        except SIGTERMException:
            raise self._preempted(trainer) from None
        else:
            if self._signalled(trainer):
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
