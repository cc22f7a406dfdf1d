"""Exact, crash-safe resume: atomic checkpoint writes, random state, ``resume=<run dir>|auto``.

What a checkpoint holds, and who restores it when training continues:

- weights, optimizer states (both of the GAN's), LR schedulers, loop counters, callback
  states and AMP's loss scale (``MixedPrecision``): Lightning;
- the random state of torch (CPU and CUDA), NumPy and Python's ``random``: Lightning does
  not keep it, the :class:`RandomState` callback does (``configs/callbacks/default.yaml``
  adds it). With it the next epoch shuffles its batches, and the model draws its noise,
  exactly as the uninterrupted run would.

``last.ckpt`` is written after every validation, i.e. at the end of an epoch, and when a
run is preempted (:mod:`mlnotes_zoo.preemption`), after the batch it was at. A resumed run is
exact from either: mid-epoch, the zoo's DataLoaders (:class:`ResumableDataLoader`) hand out
the rest of the interrupted epoch in its order, and :class:`RandomState` sets the random
state once they have.

A checkpoint write that fails (disk full, file too large) stops the run with
:class:`CheckpointWriteError`, one line naming the file and the reason; the previous file is
kept (the write goes to a temporary file first).
"""

from __future__ import annotations

import errno
import os
import random
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
from pytorch_lightning.plugins.io import TorchCheckpointIO
from torch.utils.data import DataLoader

from mlnotes_zoo.errors import ZooError
from mlnotes_zoo.weights import atomic_path, safe_torch_load

__all__ = ["AtomicCheckpointIO", "CheckpointWriteError", "RandomState", "rng_state",
           "set_rng_state", "ResumableDataLoader", "ResumeError",
           "resume_checkpoint", "expand_resume", "replayed_overrides", "ReplayError",
           "hydra_value", "continue_csv_logs"]


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
        try:
            with atomic_path(path) as tmp, open(tmp, "wb") as f:
                torch.save(checkpoint, f)
        except (OSError, RuntimeError) as err:
            reason = _os_reason(err)
            if reason is None:
                raise
            raise CheckpointWriteError(f"could not write the checkpoint {path}: {reason}; "
                                       "the previous one is kept") from err

    def load_checkpoint(self, path: Any, map_location: Callable | None = None,
                        weights_only: bool | None = None) -> dict[str, Any]:
        if "://" in str(path):
            return super().load_checkpoint(path, map_location, weights_only=True)
        if not Path(path).is_file():
            raise FileNotFoundError(f"Checkpoint file not found: {path}")
        return safe_torch_load(path, map_location=map_location or "cpu")


class CheckpointWriteError(ZooError, OSError):
    """A checkpoint could not be written (disk full, file too large, no permission ...):
    the run stops (exit code 1); the previous checkpoint file is whole."""

    exit_code = 1


def _os_reason(err: BaseException) -> str | None:
    """The operating system's reason in ``err`` or what caused it (torch's zip writer turns
    a failed ``write`` into a RuntimeError whose context is the OSError), e.g.
    "No space left on device (ENOSPC)"; None when no OSError is involved."""
    seen: set[int] = set()
    cause: BaseException | None = err
    while cause is not None and id(cause) not in seen:
        seen.add(id(cause))
        if isinstance(cause, OSError) and (cause.errno or cause.strerror):
            name = errno.errorcode.get(cause.errno or 0)
            text = cause.strerror or os.strerror(cause.errno or 0)
            return f"{text} ({name})" if name else text
        cause = cause.__cause__ or cause.__context__
    return None


# -- random state -------------------------------------------------------------------------
class RandomState(pl.Callback):
    """Keeps the global random state (:func:`rng_state`) in every checkpoint and restores it
    when training resumes from one, at the moment the uninterrupted run would be at it.

    That moment is ``on_fit_start``: the training DataLoader's iterator, created before
    ``on_train_start``, draws its base seed (the epoch's batch order) from torch's generator.
    Strategies that restore a checkpoint only after ``on_fit_start`` get the state when it is
    loaded, which is still before that draw. A checkpoint written mid-epoch is marked so
    (``mid_epoch``): the iterator then continues the interrupted epoch from its own state
    (:class:`ResumableDataLoader`), and the random state is set again at ``on_train_start``,
    after it. ``trainer.test(ckpt_path=...)`` and ``load_from_checkpoint`` leave the random
    state alone.
    """

    def __init__(self) -> None:
        self._fitting = False
        self._pending: dict[str, Any] | None = None
        self._trainer: pl.Trainer | None = None

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._fitting = stage == "fit"  # setup runs before any checkpoint is restored
        self._trainer = trainer

    def state_dict(self) -> dict[str, Any]:
        state = rng_state()
        trainer = self._trainer
        if trainer is not None and self._fitting:
            batches = trainer.fit_loop.epoch_loop.batch_progress
            state["mid_epoch"] = bool(batches.current.ready and not batches.is_last_batch)
        return state

    def on_save_checkpoint(self, trainer: pl.Trainer, pl_module: pl.LightningModule,
                           checkpoint: dict[str, Any]) -> None:
        # ResumableDataLoader's state, in the fit loop's: it is used only mid-epoch
        fit_loop = checkpoint.get("loops", {}).get("fit_loop", {}).get("state_dict", {})
        mid_epoch = bool(checkpoint.get("callbacks", {}).get(self.state_key, {}).get("mid_epoch"))
        for loader_state in fit_loop.get("combined_loader", []):
            if isinstance(loader_state, dict) and "batches" in loader_state:
                loader_state["mid_epoch"] = mid_epoch

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if self._fitting:
            self._pending = state_dict
            set_rng_state(state_dict)

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._pending is not None:
            set_rng_state(self._pending)
        if not (self._pending or {}).get("mid_epoch"):
            self._pending = None

    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # Resumed mid-epoch: the training DataLoader, created since on_fit_start, continues
        # its epoch from its own state (a stateful loader, see the module docstring) and
        # drew a base seed from torch's generator that the uninterrupted run never drew.
        if self._pending is not None:
            set_rng_state(self._pending)
        self._pending = None

    def teardown(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        self._fitting, self._pending, self._trainer = False, None, None


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


# -- the training batches, resumable mid-epoch ---------------------------------------------
class ResumableDataLoader(DataLoader):
    """torch's DataLoader (the same batches, order and random draws) that Lightning can
    resume mid-epoch: the rest of the interrupted epoch, in its order.

    Its state (Lightning's ``state_dict``/``load_state_dict``, kept in the checkpoint's fit
    loop) is the global random state at the moment the epoch's iterator was created — torch
    draws the epoch's order and the workers' base seed from it — and the number of batches
    handed out since. Resumed from a state :class:`RandomState` marks as mid-epoch, the next
    iterator is created from that random state and skips those batches (loading them, so a
    dataset that draws random numbers per item draws the same ones), and the random state
    goes back to what it was (:class:`RandomState` then sets the checkpoint's). A state saved
    at an epoch's end is ignored: the next epoch starts afresh, as in the uninterrupted run.

    With workers (``num_workers > 0``) their base seed comes from ``torch.initial_seed()``
    instead of torch's global generator, so that a resumed run, which starts its workers
    anew, draws the same model noise; what workers draw themselves (augmentation in the
    workers) is not restored.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._epoch_rng: dict[str, Any] | None = None
        self._batches = 0
        self._resume: dict[str, Any] | None = None

    def __iter__(self) -> Iterator[Any]:  # type: ignore[override]
        resume, self._resume = self._resume, None
        before = rng_state() if resume else None
        if resume:
            set_rng_state(resume["rng"])
        if self.num_workers > 0 and self.generator is None:
            # The workers' base seed from the run's seed, not from torch's generator: a
            # resumed run starts its (persistent) workers once more than the uninterrupted
            # one, and each start would shift the model's random draws.
            self.generator = torch.Generator().manual_seed(torch.initial_seed())
        self._epoch_rng = rng_state()
        iterator = super().__iter__()
        self._batches = 0
        if resume:
            for _ in range(int(resume["batches"])):
                if next(iterator, _END) is _END:
                    break
                self._batches += 1
            set_rng_state(before)
        return self._counted(iterator)

    def _counted(self, iterator: Iterator[Any]) -> Iterator[Any]:
        for batch in iterator:
            self._batches += 1
            yield batch

    def state_dict(self) -> dict[str, Any]:
        if self._epoch_rng is None:
            return {}
        return {"rng": self._epoch_rng, "batches": self._batches}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if state_dict.get("mid_epoch") and state_dict.get("batches"):
            self._resume = state_dict


_END = object()


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


def expand_resume(argv: list[str],
                  check: Callable[[Path, list[tuple[str, Any]]], None] | None = None) -> list[str]:
    """``resume=<run dir>`` on the command line continues that run in that dir: its
    overrides (``.hydra/overrides.yaml``) come first, the new ones win, and
    ``hydra.run.dir`` is set to it. Other command lines are returned as they are.

    A run dir is data, perhaps someone else's: its overrides may only set values. Each saved
    line is refused (:class:`ReplayError`, nothing run) when it names a ``_target_`` or
    another ``_..._`` key, sets ``hydra.*``, a package (``@``) or where the run writes, adds
    or deletes anything but what ``check`` allows, or has a value that is not plain data (a
    dict, an interpolation ``${...}``, a sweep). ``check(file, [(line, override), ...])``
    (``mlnotes_zoo.config.check_replayed``, which knows the configs) then vets group choices
    and ``+key=`` additions against the zoo's config schema.
    """
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()
    resume = [parser.parse_overrides([a])[0].value() for a in argv if a.startswith("resume=")]
    if not resume or resume[-1] in ("auto", "null", "", None):
        return argv
    run_dir = Path(str(resume[-1])).expanduser()
    if any(a in ("-m", "--multirun") for a in argv):
        raise ResumeError("resume=<run dir> continues one run; it cannot be combined with -m")
    resume_checkpoint(None, str(run_dir), run_dir)  # a clear error now if there is nothing
    _refuse_links_out(run_dir)
    new = [a for a in argv if not a.startswith("-")]
    new_keys = {o.key_or_group: o for o in parser.parse_overrides(new)}
    saved_file = run_dir / ".hydra" / "overrides.yaml"
    saved = _saved_overrides(saved_file, parser)
    for line, o in saved:
        _refuse_unsafe(saved_file, line, o)
    if check is not None:
        check(saved_file, saved)
    kept, forced = [], set()
    for line, o in saved:
        key = o.key_or_group
        if key in ("resume", "ckpt_path"):
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
        out.append(f"hydra.run.dir={hydra_value(str(run_dir))}")
    return [*kept, *out]


def replayed_overrides(saved_file: Path, check: Callable[[Path, list[tuple[str, Any]]], None]
                       | None = None) -> list[tuple[str, Any]]:
    """``[(line, parsed override), ...]`` of a run dir's ``.hydra/overrides.yaml``, each held
    to what :func:`expand_resume` accepts (``check`` as there); for ``eval.py`` and
    ``predict.py``, which compose a checkpoint's run again without writing in its dir."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    saved = _saved_overrides(saved_file, OverridesParser.create())
    for line, o in saved:
        _refuse_unsafe(saved_file, line, o)
    if check is not None:
        check(saved_file, saved)
    return saved


class ReplayError(ResumeError):
    """A run dir's saved overrides ask for more than values: refused before anything runs."""


# what a replayed override may not touch, and why (one line each)
_REPLAY_ALLOWED = ("a run dir's overrides may only set values of the zoo's configs "
                   "(key=value, +key=value for a parameter of the node's target, "
                   "group=<a file of configs/<group>/>)")
# tracking_uri: MLflow's store or server
_OUTPUT_KEYS = {"dirpath", "save_dir", "default_root_dir", "output_dir", "tracking_uri"}
_OUTPUT_NAMES = {"filename", "name", "version", "sub_dir"}  # file names: a "/" leaves the dir
# deleting these would stop resuming from being exact or last.ckpt from being written
_KEPT_NODES = {"callbacks.last_checkpoint", "callbacks.random_state"}


def replay_error(saved_file: Path, line: str, why: str) -> ReplayError:
    """One line: the file, the refused override, why, and what is allowed."""
    return ReplayError(f"resume: refusing {line!r} in {saved_file}: {why}; {_REPLAY_ALLOWED}")


def _refuse_links_out(run_dir: Path) -> None:
    """A resumed run writes into its run dir (Hydra's ``.hydra/*.yaml``, ``train.log``, the
    CSV log, checkpoints): a symlink in it that leads out of it would have those writes land
    on another file."""
    root = run_dir.resolve()
    for folder, dirs, files in os.walk(run_dir):
        for name in [*dirs, *files]:
            path = Path(folder, name)
            if path.is_symlink() and not path.resolve().is_relative_to(root):
                raise ReplayError(f"resume: {path} is a symlink to {os.readlink(path)}, out of "
                                  "the run dir; a resumed run writes into its run dir only "
                                  "(replace the link by a copy)")


def _saved_overrides(saved_file: Path, parser: Any) -> list[tuple[str, Any]]:
    """The saved overrides, each parsed alone (so that an error names its line)."""
    import yaml

    if not saved_file.is_file():
        return []
    try:
        lines = yaml.safe_load(saved_file.read_text())  # data only: no YAML tags run
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        reason = " ".join(str(err).split())[:120]
        raise ReplayError(f"resume: {saved_file} is not valid YAML ({reason}); it must be the "
                          "list of overrides Hydra wrote for that run") from None
    if lines is None:
        return []
    if not isinstance(lines, list) or not all(isinstance(s, str) for s in lines):
        raise ReplayError(f"resume: {saved_file} must be a YAML list of override strings "
                          f"(key=value), found {type(lines).__name__}"
                          + (" with non-string items" if isinstance(lines, list) else ""))
    parsed = []
    for line in lines:
        try:
            parsed.append((line, parser.parse_overrides([line])[0]))
        except Exception as err:  # noqa: BLE001 - Hydra's parse errors have several types
            raise replay_error(saved_file, line, f"cannot be parsed ({str(err).splitlines()[0]})"
                               ) from None
    return parsed


def _refuse_unsafe(saved_file: Path, line: str, o: Any) -> None:
    """Refuse a saved override that could do more than set a value (no schema needed)."""
    key = str(o.key_or_group)
    parts = key.replace("/", ".").split(".")
    why = None
    if parts[0] == "hydra":
        why = "it changes Hydra itself (hydra.*: launcher, callbacks, run dir, logging)"
    elif any(p.startswith("_") for p in parts):
        why = f"{key} is a {'_target_' if '_target_' in parts else '_..._'} key (what to build)"
    elif o.package is not None:
        why = "it places a config with @package"
    elif (parts[-1] in _OUTPUT_KEYS or key.startswith("paths.")
          or (parts[0] in ("callbacks", "logger") and parts[-1] in _OUTPUT_NAMES
              and any(c in str(o.value()) for c in "/\\"))):
        why = "it moves where the run writes (a resumed run writes into its run dir)"
    elif o.is_delete():
        if len(parts) != 2 or parts[0] not in ("callbacks", "logger") or key in _KEPT_NODES:
            why = ("it deletes a node; only a callback or logger may be switched off "
                   f"(~callbacks.<name>, ~logger.<name>; not {', '.join(sorted(_KEPT_NODES))})")
    elif o.is_sweep_override():
        why = "it is a sweep; a run has one value per key"
    else:
        why = _not_plain(o.value())
    if why:
        raise replay_error(saved_file, line, why)


def _not_plain(value: Any) -> str | None:
    """Why ``value`` is not plain data (None when it is: a scalar or a list of them)."""
    if isinstance(value, dict):
        return "its value is a config node (a dict)"
    if isinstance(value, list):
        return next((why for v in value if (why := _not_plain(v))), None)
    if isinstance(value, str) and "${" in value:
        return "its value is an interpolation ${...} (resolved from the environment or code)"
    if value is not None and not isinstance(value, (str, int, float, bool)):
        return f"its value is a {type(value).__name__}"
    return None


def hydra_value(text: str) -> str:
    """``text`` as a Hydra override value that parses back to ``text`` exactly: as it is
    when it already does (a plain path), else single-quoted with ``'`` and ``${`` escaped
    (a path with ``=``, ``,``, brackets, quotes ...)."""
    import re

    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        if "${" not in text and OverridesParser.create().parse_overrides(
                [f"k={text}"])[0].value() == text:
            return text
    except Exception:  # noqa: BLE001, S110 - not a plain value: quote it
        pass
    quoted = re.sub(r"(\\*)'", lambda m: m.group(1) * 2 + "\\'", text.replace("${", "\\${"))
    quoted = re.sub(r"(\\+)$", lambda m: m.group(1) * 2, quoted)
    return f"'{quoted}'"


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
