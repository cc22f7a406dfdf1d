"""One writer per run dir: ``<run dir>/.lock`` names the job that holds it.

Two jobs writing one run dir destroy each other's checkpoints and logs (a requeued job that
starts before the old one has died, ``resume=auto`` typed twice). :class:`LockRunDir`, a
Hydra callback (``configs/hydra/default.yaml``), takes the lock before Hydra writes anything
into the run dir and keeps it until the process ends; a second job is refused with one line
naming the holder (exit code 2, nothing written).

- The lock is a POSIX record lock (``fcntl.lockf``) on ``.lock``, which holds the holder's
  pid, host, start time and command line. The kernel (and NFS's lock manager) drops it when
  the holder dies, however it dies; a ``.lock`` left by a job that died is *stale*: the next
  job takes it over with a one-line notice. Where the file system cannot lock, a lock whose
  holder pid is not running on this host counts as stale.
- Distributed runs: only rank 0 takes the lock. Under torchrun (a process group exists
  before Hydra runs) rank 0 sends its verdict to every rank, which all stop or all go on;
  the processes Lightning's launcher starts later are ranks > 0 of a run whose rank 0 holds
  the lock; other launchers (``srun`` without torchrun) have ranks > 0 wait until the lock
  names their job (same ``SLURM_JOB_ID``/restart, or the same run stamp) and stop if rank 0
  was refused.
- A multirun's jobs (``-m``) take no lock: each writes a new dir of its own sweep.
"""

from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from mlnotes_zoo.errors import ZooError

__all__ = ["RunDirLock", "RunDirInUse", "LockRunDir", "LOCK_NAME"]

LOCK_NAME = ".lock"
_NO_LOCKING = {errno.ENOLCK, errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS}


class RunDirInUse(ZooError):
    """Another job holds the run dir's lock (exit code 2: nothing was run or written)."""


class RunDirLock:
    """The lock of one run dir, held by this process between :meth:`acquire` and
    :meth:`release` (or its end)."""

    def __init__(self, run_dir: str | os.PathLike) -> None:
        self.run_dir = Path(run_dir)
        self.path = self.run_dir / LOCK_NAME
        self._fd: int | None = None
        self._pid = os.getpid()

    def acquire(self) -> str | None:
        """Take the lock; returns a one-line notice when it took over a stale one, raises
        :class:`RunDirInUse` when another job holds it."""
        self.run_dir.mkdir(parents=True, exist_ok=True)
        for _ in range(20):  # the file can be replaced between open and lock: try again
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                locked = _try_lock(fd)
                holder = _read(fd)
                if locked is None:  # no locking here: the holder's pid decides
                    if holder and _alive(holder) is not False:
                        raise self._in_use(holder)
                elif not locked:
                    raise self._in_use(holder)
                if not _same_file(fd, self.path):
                    os.close(fd)
                    continue
            except BaseException:
                with contextlib.suppress(OSError):
                    os.close(fd)
                raise
            self._fd, self._pid = fd, os.getpid()
            _write(fd, _me())
            atexit.register(self.release)
            if holder and not _is_me(holder):
                return (f"note: {self.run_dir}: took over the lock of a job that is no longer "
                        f"running ({_describe(holder)})")
            return None
        raise RunDirInUse(f"{self.run_dir}: could not take {self.path} (it kept changing)")

    def release(self) -> None:
        """Give the lock back (the file goes); only the process that took it does."""
        fd, self._fd = self._fd, None
        if fd is None or os.getpid() != self._pid:
            return
        with contextlib.suppress(OSError):
            if _same_file(fd, self.path):
                self.path.unlink()
        with contextlib.suppress(OSError):
            os.close(fd)

    def holds(self) -> bool:
        return self._fd is not None

    def _in_use(self, holder: dict[str, Any]) -> RunDirInUse:
        return RunDirInUse(
            f"{self.run_dir} is in use by another job ({_describe(holder)}); wait for it to "
            f"end or give another hydra.run.dir (its lock: {self.path})")


class LockRunDir(Callback):
    """Hydra callback: the run dir's lock, taken before Hydra writes into the run dir, held
    until the process ends; a refused job prints one line and exits with code 2."""

    def __init__(self, wait_s: float = 60.0) -> None:
        self.wait_s = wait_s
        self.lock: RunDirLock | None = None

    def on_run_start(self, config: DictConfig, **kwargs: Any) -> None:
        run_dir = Path(str(config.hydra.run.dir))
        refusal = None
        try:
            notice = self._take(run_dir)
        except RunDirInUse as err:
            refusal, notice = err, None
        if notice and _rank() == 0:
            print(notice, file=sys.stderr)
        if refusal is not None:
            if _rank() == 0:
                print(f"error: {refusal}", file=sys.stderr)
            sys.exit(refusal.exit_code)

    def on_run_end(self, config: DictConfig, **kwargs: Any) -> None:
        if self.lock is not None:
            self.lock.release()

    def _take(self, run_dir: Path) -> str | None:
        import torch.distributed as dist

        group = dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1
        if group:  # torchrun: rank 0 decides for all
            verdict: list[Any] = [None]
            notice = None
            if dist.get_rank() == 0:
                self.lock = RunDirLock(run_dir)
                try:
                    notice = self.lock.acquire()
                except RunDirInUse as err:
                    verdict = [str(err)]
            dist.broadcast_object_list(verdict, src=0)
            if verdict[0] is not None:
                raise RunDirInUse(verdict[0])
            return notice
        if _rank() == 0:
            self.lock = RunDirLock(run_dir)
            return self.lock.acquire()
        if "LOCAL_RANK" in os.environ and "SLURM_PROCID" not in os.environ:
            return None  # started by Lightning's launcher: rank 0 holds the lock already
        self._wait_for_rank_zero(run_dir)
        return None

    def _wait_for_rank_zero(self, run_dir: Path) -> None:
        """A rank > 0 without a process group: go on once the lock names this job; stop
        quietly if it still names another after ``wait_s`` (rank 0 was refused)."""
        deadline = time.monotonic() + self.wait_s
        holder: dict[str, Any] = {}
        while time.monotonic() < deadline:
            holder = _read_path(run_dir / LOCK_NAME)
            if holder.get("job") == _job_key():
                return
            time.sleep(0.2)
        if holder:
            raise RunDirInUse(f"{run_dir} is in use by another job ({_describe(holder)})")


# -- helpers ------------------------------------------------------------------------------
def _rank() -> int:
    from lightning_fabric.utilities.rank_zero import rank_zero_only

    return int(getattr(rank_zero_only, "rank", 0) or 0)


def _job_key() -> str:
    """What every rank of one job shares: SLURM's job id and restart count, or the run stamp
    and rendezvous address."""
    env = os.environ
    if "SLURM_JOB_ID" in env:
        return f"slurm:{env['SLURM_JOB_ID']}.{env.get('SLURM_RESTART_COUNT', '0')}"
    return (f"run:{env.get('MLNOTES_RUN_STAMP', '')}@{env.get('MASTER_ADDR', '')}:"
            f"{env.get('MASTER_PORT', '')}")


def _me() -> dict[str, Any]:
    return {"pid": os.getpid(), "host": socket.gethostname(),
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "job": _job_key(),
            "command": " ".join(sys.argv)}


def _is_me(holder: dict[str, Any]) -> bool:
    """A lock this process left (an earlier run in the same process, e.g. a test's)."""
    return holder.get("pid") == os.getpid() and holder.get("host") == socket.gethostname()


def _describe(holder: dict[str, Any]) -> str:
    return (f"pid {holder.get('pid', '?')} on {holder.get('host', '?')}, started "
            f"{holder.get('started', '?')}")


def _try_lock(fd: int) -> bool | None:
    """True: locked; False: another process holds it; None: this file system cannot lock."""
    import fcntl

    try:
        fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        if err.errno in (errno.EACCES, errno.EAGAIN):
            return False
        if err.errno in _NO_LOCKING:
            return None
        raise
    return True


def _alive(holder: dict[str, Any]) -> bool | None:
    """Whether the holder's process runs (None: on another host, unknown)."""
    if holder.get("host") != socket.gethostname() or not isinstance(holder.get("pid"), int):
        return None
    try:
        os.kill(holder["pid"], 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.stat(path).st_ino == os.fstat(fd).st_ino
    except FileNotFoundError:
        return False


def _read(fd: int) -> dict[str, Any]:
    data = os.pread(fd, 65536, 0)
    try:
        holder = json.loads(data) if data.strip() else {}
    except ValueError:
        return {"pid": "?", "host": "?", "started": "? (unreadable lock file)"}
    return holder if isinstance(holder, dict) else {}


def _read_path(path: Path) -> dict[str, Any]:
    # read without opening the file for writing (a POSIX lock would not notice, but keep it
    # plain: this process holds no lock on it)
    try:
        holder = json.loads(path.read_text() or "{}")
    except (OSError, ValueError):
        return {}
    return holder if isinstance(holder, dict) else {}


def _write(fd: int, holder: dict[str, Any]) -> None:
    data = (json.dumps(holder) + "\n").encode()
    os.ftruncate(fd, 0)
    os.pwrite(fd, data, 0)
    os.fsync(fd)
