"""``train.py``, but hanging half-way through its n-th write of ``last.ckpt``.

usage: python _hang_in_checkpoint_write.py <marker file> <n> [train.py overrides ...]

On the n-th write of ``last.ckpt`` half of the checkpoint's bytes go to the file being
written, then ``<marker file>`` is created and the process sleeps, for the test to kill it
with SIGKILL there: a crash in the middle of a checkpoint write, made reproducible.
"""

import io
import sys
import time
from pathlib import Path

import torch

marker, nth = Path(sys.argv[1]), int(sys.argv[2])
real_save = torch.save
writes = 0


def half_then_hang(obj, f, *args, **kwargs):
    global writes
    name = str(getattr(f, "name", f))
    if "last.ckpt" in name:
        writes += 1
    if "last.ckpt" not in name or writes < nth:
        return real_save(obj, f, *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer, *args, **kwargs)
    data = buffer.getvalue()
    f.write(data[: len(data) // 2])
    f.flush()
    marker.write_text(name)
    time.sleep(600)


torch.save = half_then_hang

from mlnotes_zoo.train import cli  # noqa: E402 - after the patch

sys.argv = ["train.py", *sys.argv[3:]]
cli()
