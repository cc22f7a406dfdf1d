"""One writer per run dir: a second job is refused while the first holds the lock, a lock left
by a dead job is taken over, and the atomic writer never deletes another process's file."""

from __future__ import annotations

import csv
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from mlnotes_zoo import runlock
from mlnotes_zoo.runlock import LOCK_NAME, RunDirInUse, RunDirLock
from mlnotes_zoo.weights import atomic_path

REPO = Path(__file__).resolve().parents[2]
PAUSE = Path(__file__).with_name("_pause_at_step.py")
TINY = ["model=vae", "model.net.hidden=32", "model.net.latent_dim=4", "data.batch_size=32",
        "logger=csv", "trainer.log_every_n_steps=1", "callbacks.pictures=null",
        "callbacks.progress_bar=null", "trainer.accelerator=cpu", "+trainer.limit_train_batches=3",
        "+trainer.limit_val_batches=1", "trainer.enable_model_summary=false",
        "trainer.max_epochs=2", "test=false"]
ENV = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}


def _forked(work) -> int:
    """A child process (forked: no interpreter start) that runs ``work()`` and exits with 0,
    or 1 and the error on stderr; returns its pid."""
    pid = os.fork()
    if pid == 0:  # the child
        code = 0
        try:
            work()
        except BaseException as err:  # noqa: BLE001 - reported through the exit code
            print(f"{type(err).__name__}: {err}", file=sys.stderr, flush=True)
            code = 1
        os._exit(code)
    return pid


def _holder(run_dir: Path) -> int:
    """Another process that takes the lock of ``run_dir`` and keeps it until it is killed."""
    read, write = os.pipe()

    def hold() -> None:
        RunDirLock(run_dir).acquire()
        os.write(write, b"locked")
        time.sleep(300)

    pid = _forked(hold)
    assert os.read(read, 6) == b"locked"
    os.close(read), os.close(write)
    return pid


def _kill(pid: int) -> None:
    os.kill(pid, signal.SIGKILL)  # dies holding what it holds
    os.waitpid(pid, 0)


def _dead_pid() -> int:
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True)
    return int(done.stdout)


def test_lock_refuses_while_held_and_takes_over_when_its_holder_died(tmp_path):
    run_dir = tmp_path / "run"
    holder = _holder(run_dir)
    try:
        with pytest.raises(RunDirInUse) as refused:
            RunDirLock(run_dir).acquire()
        message = str(refused.value)
        assert "\n" not in message and refused.value.exit_code == 2
        assert f"pid {holder} on {socket.gethostname()}, started " in message
        assert f"{run_dir} is in use by another job" in message
        assert str(run_dir / LOCK_NAME) in message
    finally:
        _kill(holder)  # dies holding it: the file stays, stale
    assert (run_dir / LOCK_NAME).is_file()
    lock = RunDirLock(run_dir)
    notice = lock.acquire()
    assert notice.startswith(f"note: {run_dir}: took over the lock of a job that is no longer "
                             f"running (pid {holder} on {socket.gethostname()}, started ")
    assert f'"pid": {os.getpid()}' in (run_dir / LOCK_NAME).read_text()
    lock.release()
    assert not (run_dir / LOCK_NAME).exists()  # released: gone, no notice next time
    again = RunDirLock(run_dir)
    assert again.acquire() is None
    again.release()


def test_without_file_locking_the_holder_pid_decides(tmp_path, monkeypatch):
    monkeypatch.setattr(runlock, "_try_lock", lambda fd: None)  # e.g. NFS without lockd
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    host = socket.gethostname()
    lock_file = run_dir / LOCK_NAME
    lock_file.write_text(f'{{"pid": {os.getppid()}, "host": "{host}", "started": "then"}}')
    with pytest.raises(RunDirInUse, match=f"pid {os.getppid()} on {host}"):  # alive
        RunDirLock(run_dir).acquire()
    lock_file.write_text('{"pid": 1, "host": "elsewhere", "started": "then"}')
    with pytest.raises(RunDirInUse, match="pid 1 on elsewhere"):  # cannot tell: refused
        RunDirLock(run_dir).acquire()
    dead = _dead_pid()
    lock_file.write_text(f'{{"pid": {dead}, "host": "{host}", "started": "then"}}')
    lock = RunDirLock(run_dir)
    assert f"(pid {dead} on {host}, started then)" in lock.acquire()
    lock.release()


def test_atomic_writes_of_two_processes_leave_each_other_alone(tmp_path):
    target = tmp_path / "last.ckpt"
    host = re.sub(r"[^\w.-]", "_", socket.gethostname())  # as atomic_path names them
    others = {  # temporaries of: a live process here, a dead one here, a process elsewhere
        "live": tmp_path / f".last.ckpt.{host}.{os.getppid()}.0a0a0a0a.tmp",
        "dead": tmp_path / f".last.ckpt.{host}.{_dead_pid()}.0b0b0b0b.tmp",
        "elsewhere": tmp_path / f".last.ckpt.otherhost.{os.getppid()}.0c0c0c0c.tmp",
    }
    for path in others.values():
        path.write_bytes(b"half a checkpoint")
    with atomic_path(target) as tmp:
        torch.save({"w": torch.ones(2)}, tmp)
    assert torch.load(target, weights_only=True)["w"].tolist() == [1.0, 1.0]
    assert others["live"].exists() and others["elsewhere"].exists()
    assert not others["dead"].exists()  # left by a dead process of this host: cleaned

    # two processes writing one file at once, 50 times each: no write fails, the file is whole
    go = tmp_path / "go"

    def write() -> None:
        while not go.exists():
            time.sleep(0.001)
        for i in range(50):
            with atomic_path(target) as tmp:
                torch.save({"i": torch.tensor(i), "w": torch.randn(256)}, tmp)

    writers = [_forked(write) for _ in range(2)]
    go.touch()  # both start writing now
    assert [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in writers] == [0, 0]
    assert torch.load(target, weights_only=True)["i"].item() == 49
    assert {p.name for p in tmp_path.glob(".last.ckpt.*.tmp")} == {
        others["live"].name, others["elsewhere"].name}


@pytest.mark.slow
def test_a_second_job_is_refused_then_a_dead_jobs_lock_is_taken_over(tmp_path, run_cli):
    run_dir = tmp_path / "run"
    marker = tmp_path / "paused"
    first = subprocess.Popen([sys.executable, str(PAUSE), str(marker), "2", *TINY,
                              f"hydra.run.dir={run_dir}"], cwd=tmp_path, env=ENV,
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 240
        while not marker.exists():  # the first job is training (paused after step 2)
            assert first.poll() is None, first.stderr.read()[-3000:]
            assert time.monotonic() < deadline
            time.sleep(0.05)
        before = {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")}
        code, err = run_cli(*TINY, f"hydra.run.dir={run_dir}", "resume=auto")
        assert code == 2
        assert err.splitlines()[-1] == (
            f"error: {run_dir} is in use by another job (pid {first.pid} on "
            f"{socket.gethostname()}, started {runlock._read_path(run_dir / LOCK_NAME)['started']}"
            f"); wait for it to end or give another hydra.run.dir (its lock: "
            f"{run_dir / LOCK_NAME})")
        # the refused job wrote nothing: not Hydra's .hydra/*.yaml, logs or checkpoints
        assert {p: p.stat().st_mtime_ns for p in run_dir.rglob("*")} == before
    finally:
        first.send_signal(signal.SIGKILL)  # dies holding the lock
        first.wait()

    # the next job finds the dead job's lock, says so in one line and runs
    second = subprocess.run([sys.executable, str(REPO / "train.py"), *TINY,
                             f"hydra.run.dir={run_dir}", "resume=auto"], cwd=tmp_path, env=ENV,
                            capture_output=True, text=True, timeout=300)
    assert second.returncode == 0, second.stderr[-3000:]
    notes = [line for line in second.stderr.splitlines() if "lock" in line]
    assert notes == [f"note: {run_dir}: took over the lock of a job that is no longer running "
                     f"(pid {first.pid} on {socket.gethostname()}, started "
                     f"{notes[0].rsplit('started ', 1)[-1]}"]
    with (run_dir / "csv" / "metrics.csv").open(newline="") as f:
        train_steps = [int(r["step"]) for r in csv.DictReader(f) if r.get("train/loss")]
    assert train_steps == list(range(6))  # one job's rows, each step once
    assert not (run_dir / LOCK_NAME).exists()


@pytest.mark.dist
def test_in_a_process_group_rank_zero_decides_for_every_rank(tmp_path):
    """Two gloo ranks (as torchrun starts them, the group made before Hydra runs) take the
    run dir's lock: rank 0 takes it and rank 1 goes on without it; on a run dir another job
    holds, rank 0 is refused and every rank stops with the same refusal (nobody waits)."""
    from mlnotes_zoo.runlock import LockRunDir

    def ranks(run_dir: Path) -> list[int]:
        init = f"file://{tmp_path / ('group-' + run_dir.name)}"
        results = tmp_path / f"{run_dir.name}-rank"

        def rank(r: int):
            def work() -> None:
                import torch.distributed as dist

                dist.init_process_group("gloo", init_method=init, rank=r, world_size=2)
                callback = LockRunDir()
                try:
                    callback._take(run_dir)
                    outcome = "holds" if callback.lock and callback.lock.holds() else "goes on"
                except RunDirInUse as err:
                    outcome = f"refused: {err}"
                Path(f"{results}{r}").write_text(outcome)
                dist.barrier()  # both ranks have decided before either lets go of the lock
                dist.destroy_process_group()
            return work

        pids = [_forked(rank(r)) for r in (0, 1)]
        codes = [os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) for pid in pids]
        assert codes == [0, 0]
        return [Path(f"{results}{r}").read_text() for r in (0, 1)]

    assert ranks(tmp_path / "free") == ["holds", "goes on"]
    held = tmp_path / "held"
    holder = _holder(held)
    try:
        outcomes = ranks(held)
    finally:
        _kill(holder)
    assert outcomes[0] == outcomes[1] and outcomes[0].startswith(
        f"refused: {held} is in use by another job (pid {holder} ")
