"""Exact, crash-safe resume: atomic checkpoint writes, random state, ``resume=<run dir>|auto``.

What a checkpoint holds, and who restores it when training continues:

- weights, optimizer states (both of the GAN's), LR schedulers, loop counters, callback
  states and AMP's loss scale (``MixedPrecision``): Lightning;
- the random state of torch (CPU and CUDA), NumPy and Python's ``random``: Lightning does
  not keep it, the :class:`RandomState` callback does (``configs/callbacks/default.yaml``
  adds it). With it the next epoch shuffles its batches, and the model draws its noise,
  exactly as the uninterrupted run would.

``last.ckpt`` is written after every validation, i.e. at the end of an epoch, and that is
where a resumed run is exact. A checkpoint written mid-epoch (``val_check_interval < 1``,
``every_n_train_steps``) restarts the interrupted epoch's batch count but not its order
(Lightning warns: the zoo's DataLoaders are not resumable mid-epoch).
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO

from mlnotes_zoo.errors import ZooError
from mlnotes_zoo.weights import atomic_path, safe_torch_load

__all__ = ["AtomicCheckpointIO", "RandomState", "rng_state", "set_rng_state", "ResumeError",
           "resume_checkpoint", "expand_resume", "continue_csv_logs"]


class AtomicCheckpointIO(TorchCheckpointIO):
    """Checkpoints written atomically (temporary file, fsync, rename) and read safely.

    A process killed while writing ``last.ckpt`` leaves the previous ``last.ckpt`` whole;
    reading uses ``torch.load(weights_only=True)``, so resuming from a file whose pickle
    would run code is refused (:class:`~mlnotes_zoo.weights.UnsafeCheckpointError`).
    Remote paths (``s3://...``) go through Lightning's own writer.
    """

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any,
                        storage_options: Any | None = None) -> None:
        if "://" in str(path):
            super().save_checkpoint(checkpoint, path, storage_options)
            return
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got "
                            f"{storage_options!r}")
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            torch.save(checkpoint, f)

    def load_checkpoint(self, path: Any, map_location: Callable | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        if not Path(path).is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return safe_torch_load(path, map_location=map_location or "cpu")


# -- random state -------------------------------------------------------------------------
class RandomState(pl.Callback):
    """Keeps the global random state (:func:`rng_state`) in every checkpoint and restores it
    when training resumes from one, at the moment the uninterrupted run would be at it.

    That moment is ``on_fit_start``: the training DataLoader's iterator, created before
    ``on_train_start``, draws its base seed (the epoch's batch order) from torch's generator.
    Strategies that restore a checkpoint only after ``on_fit_start`` get the state when it is
    loaded, which is still before that draw. ``trainer.test(ckpt_path=...)`` and
    ``load_from_checkpoint`` leave the random state alone.
    """

    def __init__(self) -> None:
        self._fitting = False
        self._pending: dict[str, Any] | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._fitting = stage == "fit"  # setup runs before any checkpoint is restored

    def state_dict(self) -> dict[str, Any]:
        return rng_state()

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._fitting:
            self._pending = state_dict
            set_rng_state(state_dict)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None:
            set_rng_state(self._pending)
        self._pending = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._fitting, self._pending = False, None


def rng_state() -> dict[str, Any]:
    """The global random state of torch, CUDA, NumPy and ``random`` as tensors and plain
    values (loadable with ``weights_only=True``)."""
    version, internal, gauss_next = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                  "has_gauss": int(has_gauss), "cached_gaussian": float(cached)},
        "python": {"version": version, "state": torch.tensor(internal, dtype=torch.int64),
                   "gauss_next": gauss_next},
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` returned."""
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    if "numpy" in state:
        s = state["numpy"]
        np.random.set_state((s["name"], s["keys"].numpy().astype(np.uint32), s["pos"],
                             s["has_gauss"], s["cached_gaussian"]))
    if "python" in state:
        s = state["python"]
        random.setstate((s["version"], tuple(s["state"].tolist()), s["gauss_next"]))


# -- resume=<run dir> | auto --------------------------------------------------------------
class ResumeError(ZooError, ValueError):
    """A resume request that cannot be met; the message is one line for the user."""


def last_checkpoint(run_dir: str | os.PathLike) -> Path:
    return Path(run_dir) / "checkpoints" / "last.ckpt"


def resume_checkpoint(ckpt_path: str | None, resume: str | None, output_dir: Path) -> str | None:
    """The checkpoint to continue from: ``ckpt_path=<file>``, ``resume=<run dir>`` (its
    ``checkpoints/last.ckpt``) or ``resume=auto`` (this run dir's ``last.ckpt`` when there is
    one, else a fresh start); None to start fresh."""
    if resume in (None, "", "null"):
        if ckpt_path is not None and not Path(ckpt_path).is_file():
            raise ResumeError(f"ckpt_path={ckpt_path}: no such checkpoint file")
        return None if ckpt_path is None else str(ckpt_path)
    if ckpt_path is not None:
        raise ResumeError(f"both ckpt_path={ckpt_path} and resume={resume} are set; "
                          "give one (ckpt_path: a file, resume: a run dir or auto)")
    if resume == "auto":
        last = last_checkpoint(output_dir)
        return str(last) if last.is_file() else None
    run_dir = Path(resume)
    if run_dir.is_file():
        raise ResumeError(f"resume={resume} is a file; resume takes a run dir (or auto), "
                          f"continue from a checkpoint file with ckpt_path={resume}")
    last = last_checkpoint(run_dir)
    if not last.is_file():
        what = "no such directory" if not run_dir.is_dir() else f"no {last.relative_to(run_dir)}"
        raise ResumeError(f"resume={resume}: {what} (resume takes the run dir of an earlier "
                          "train.py run, e.g. outputs/vae/<date>_<time>)")
    return str(last)


def expand_resume(argv: list[str]) -> list[str]:
    """``resume=<run dir>`` on the command line continues that run in that dir: its
    overrides (``.hydra/overrides.yaml``) come first, the new ones win, and
    ``hydra.run.dir`` is set to it. Other command lines are returned as they are."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    resume = [a.split("=", 1)[1] for a in argv if a.startswith("resume=")]
    if not resume or resume[-1] in ("auto", "null", ""):
        return argv
    run_dir = Path(resume[-1]).expanduser()
    if any(a in ("-m", "--multirun") for a in argv):
        raise ResumeError("resume=<run dir> continues one run; it cannot be combined with -m")
    resume_checkpoint(None, str(run_dir), run_dir)  # a clear error now if there is nothing
    parser = OverridesParser.create()
    new = [a for a in argv if not a.startswith("-")]
    new_keys = {o.key_or_group: o for o in parser.parse_overrides(new)}
    saved_file = run_dir / ".hydra" / "overrides.yaml"
    saved: list[str] = []
    if saved_file.is_file():
        import yaml

        saved = [str(s) for s in yaml.safe_load(saved_file.read_text()) or []]
    kept, forced = [], set()
    for line, o in zip(saved, parser.parse_overrides(saved), strict=True):
        key = o.key_or_group
        if key in ("resume", "ckpt_path") or key.startswith("hydra."):
            continue
        if key in new_keys:  # given again: the new value wins
            if o.is_add() or o.is_force_add():
                forced.add(key)  # the key exists only through the saved `+key=...`
            continue
        kept.append(line)
    out = []
    for arg in argv:
        key = arg.lstrip("+~").split("=", 1)[0]
        out.append("++" + arg.lstrip("+") if key in forced and "=" in arg else arg)
    if not any(a.startswith("hydra.run.dir=") for a in argv):
        out.append(f"hydra.run.dir={run_dir}")
    return [*kept, *out]


def continue_csv_logs(loggers: list[Any], ckpt_path: str | os.PathLike) -> None:
    """Keep a run dir's ``csv/metrics.csv`` rows up to the step of ``ckpt_path`` when the run
    continues there from it (call on rank 0 only).

    Lightning's CSVLogger deletes an existing ``metrics.csv`` when it starts; the rows of the
    steps the checkpoint covers are handed back to it, so the file reads like one run's.
    """
    import csv

    from pytorch_lightning.loggers import CSVLogger

    for logger in loggers:
        if not isinstance(logger, CSVLogger):
            continue
        path = Path(logger.log_dir) / "metrics.csv"
        if not path.is_file():
            continue
        # mmap: the step without reading every tensor of a large checkpoint
        step = int(safe_torch_load(ckpt_path, mmap=True).get("global_step", 0))
        with path.open(newline="") as f:
            rows = [r for r in csv.DictReader(f) if _row_step(r) <= step
                    and not any(v for k, v in r.items() if k.startswith("test/"))]
        writer = logger.experiment  # deletes the file; its rows come back on the next save
        writer.metrics[:0] = [{k: v for k, v in r.items() if v != ""} for r in rows]


def _row_step(row: dict[str, str]) -> int:
    try:
        return int(float(row.get("step") or 0))
    except ValueError:
        return sys.maxsize
