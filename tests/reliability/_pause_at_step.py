"""``train.py``, but pausing after training step ``n`` until a signal arrives.

usage: python _pause_at_step.py <marker file> <n> [train.py overrides ...]

After the n-th optimizer step (``global_step == n``) ``<marker file>`` is created and the
run (each rank of it) waits, up to 120 s, until the zoo's Preemption callback has seen
SIGTERM or SIGUSR1: the test signals it there, so the step where a preemption lands is
known (the run stops after the next batch).
"""

import functools
import sys
import time
from pathlib import Path

import pytorch_lightning as pl

marker, step = Path(sys.argv[1]), int(sys.argv[2])


class PauseAt(pl.Callback):
    paused = False

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        if trainer.global_step != step or self.paused:
            return
        self.paused = True
        preemption = next(c for c in trainer.callbacks if type(c).__name__ == "Preemption")
        marker.write_text(str(step))
        deadline = time.monotonic() + 120
        while preemption.signum is None and time.monotonic() < deadline:
            time.sleep(0.01)


real_init = pl.Trainer.__init__


@functools.wraps(real_init)  # the config validation reads the Trainer's signature
def init_with_pause(self, *args, callbacks=None, **kwargs):
    real_init(self, *args, callbacks=[*(callbacks or []), PauseAt()], **kwargs)


pl.Trainer.__init__ = init_with_pause

from mlnotes_zoo.train import cli  # noqa: E402 - after the patch

sys.argv = ["train.py", *sys.argv[3:]]
cli()
