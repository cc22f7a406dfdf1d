"""Preemption: SIGTERM/SIGUSR1 end a run with a checkpoint of where it is, one line and a
non-zero exit code (143/138); the run then continues exactly. A checkpoint write that fails
(disk full, file too large) ends the run in one line, the previous checkpoint kept."""

from __future__ import annotations

import csv
import os
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict

from mlnotes_zoo.preemption import Preempted
from mlnotes_zoo.resume import CheckpointWriteError
from mlnotes_zoo.train import main

REPO = Path(__file__).resolve().parents[2]
PAUSE = Path(__file__).with_name("_pause_at_step.py")
# 3 epochs of 4 batches (12 steps), every train step in the CSV log, deterministic CPU
TINY = ["model=vae", "model.net.hidden=32", "model.net.latent_dim=4", "data.batch_size=32",
        "trainer.deterministic=true", "trainer.log_every_n_steps=1", "logger=csv",
        "callbacks.pictures=null", "callbacks.progress_bar=null", "test=false"]
CLI_SHRINK = ["trainer.accelerator=cpu", "+trainer.limit_train_batches=4",
              "+trainer.limit_val_batches=1", "trainer.enable_model_summary=false",
              "trainer.max_epochs=3"]


def _cfg(make_cfg, out: Path, *overrides: str):
    cfg = make_cfg(*TINY, "trainer.max_epochs=3", "trainer.limit_train_batches=4", *overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    return cfg


def _logged(run_dir: Path) -> dict[int, dict[str, float]]:
    rows: dict[int, dict[str, float]] = {}
    with (run_dir / "csv" / "metrics.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            values = {k: float(v) for k, v in row.items() if v not in ("", None) and k != "step"}
            rows.setdefault(int(row["step"]), {}).update(values)
    return rows


def _said(stderr: str) -> list[str]:
    """The lines about the run's end: the zoo's error line and any about the signal."""
    return [line for line in stderr.splitlines()
            if line.startswith("error:") or "SIGTERM" in line or "SIGUSR1" in line]


def _step(path: Path) -> int:
    return torch.load(path, weights_only=True)["global_step"]


class _SignalAt(pl.Callback):
    """Sends ``signum`` to this process after training step ``step`` (the run stops after
    the next one)."""

    def __init__(self, step: int, signum: int) -> None:
        self.step, self.signum = step, signum

    def on_train_batch_end(self, trainer, *args) -> None:
        if trainer.global_step == self.step:
            os.kill(os.getpid(), self.signum)
            time.sleep(0.05)  # the handler runs here, as it would between two batches


def _with_callback(monkeypatch, callback: pl.Callback) -> None:
    import functools

    real_init = pl.Trainer.__init__

    @functools.wraps(real_init)
    def init(self, *args, callbacks=None, **kwargs):
        real_init(self, *args, callbacks=[*(callbacks or []), callback], **kwargs)

    monkeypatch.setattr(pl.Trainer, "__init__", init)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGUSR1])
def test_signal_saves_where_the_run_is_and_exits_with_its_code(make_cfg, tmp_path, monkeypatch,
                                                                signum):
    _with_callback(monkeypatch, _SignalAt(5, signum))  # stops mid-epoch: epoch 1, 2 of 4
    before = signal.getsignal(signum)
    with pytest.raises(Preempted) as stopped:
        main(_cfg(make_cfg, tmp_path))
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert stopped.value.exit_code == 128 + signum == {signal.SIGTERM: 143,
                                                         signal.SIGUSR1: 138}[signum]
    message = str(stopped.value)
    assert "\n" not in message and signal.Signals(signum).name in message
    assert f"{last}" in message and f"resume={tmp_path}" in message and "resume=auto" in message
    assert _step(last) == 6  # written at the interruption, not the epoch's start
    assert signal.getsignal(signum) == before  # the handlers are put back


def test_a_signal_during_validation_lets_it_finish_and_the_run_resumes_exactly(make_cfg,
                                                                              tmp_path,
                                                                              monkeypatch):
    class SignalInValidation(pl.Callback):
        def on_validation_batch_end(self, trainer, *args, **kwargs) -> None:
            if trainer.current_epoch == 1 and not trainer.sanity_checking and args[-1] == 0:
                os.kill(os.getpid(), signal.SIGTERM)  # after the first of 3 batches
                time.sleep(0.05)

    val = "trainer.limit_val_batches=3"
    main(_cfg(make_cfg, tmp_path / "straight", val))
    monkeypatch_init = pytest.MonkeyPatch()
    _with_callback(monkeypatch_init, SignalInValidation())
    with pytest.raises(Preempted, match=r"epoch 2, step 9 saved in .*last.ckpt"):
        main(_cfg(make_cfg, tmp_path / "run", val))  # after epoch 1's validation and 1 batch
    monkeypatch_init.undo()
    main(_cfg(make_cfg, tmp_path / "run", val, "resume=auto"))
    straight, resumed = _logged(tmp_path / "straight"), _logged(tmp_path / "run")
    assert sorted(resumed) == sorted(straight) and "val/loss" in resumed[7]
    for step, row in straight.items():
        assert resumed[step].keys() == row.keys(), step
        for key, value in row.items():
            torch.testing.assert_close(resumed[step][key], value, rtol=0, atol=1e-6,
                                       msg=f"{key} at step {step}")


@pytest.mark.slow
def test_preempted_twice_then_resumed_equals_the_uninterrupted_run(make_cfg, tmp_path):
    # the same run straight through: the reference
    main(_cfg(make_cfg, tmp_path / "straight", "data.num_workers=1"))
    straight = _logged(tmp_path / "straight")

    run_dir = tmp_path / "run"
    env = {**os.environ, "HYDRA_FULL_ERROR": "0", "OMP_NUM_THREADS": "1"}

    def preempt(step: int, signum: int, group: bool, *args: str) -> subprocess.CompletedProcess:
        marker = tmp_path / f"at-{step}"
        job = subprocess.Popen(
            [sys.executable, str(PAUSE), str(marker), str(step), *args], cwd=tmp_path, env=env,
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        deadline = time.monotonic() + 240
        while not marker.exists() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert marker.exists(), job.communicate()[1][-3000:]
        # the whole process group (the run and its DataLoader worker) or the run alone
        (os.killpg if group else os.kill)(job.pid, signum)
        out, err = job.communicate(timeout=240)
        return subprocess.CompletedProcess(job.args, job.returncode, out, err)

    # 1. SIGTERM to the process group, DataLoader worker running: stops mid-epoch (step 6)
    first = preempt(5, signal.SIGTERM, True, *TINY, *CLI_SHRINK, "data.num_workers=1",
                    f"hydra.run.dir={run_dir}")
    last = run_dir / "checkpoints" / "last.ckpt"
    assert first.returncode == 143, first.stderr[-3000:]
    assert _said(first.stderr) == [
        f"error: preempted by SIGTERM: epoch 1, step 6 saved in {last}; continue with "
        f"resume={run_dir} (or resume=auto with the same hydra.run.dir)"]
    assert "Traceback" not in first.stderr and "DataLoader worker" not in first.stderr
    assert "weights_only" not in first.stderr  # no other line about the checkpoint
    assert _step(last) == 6

    # 2. resume=<run dir>, then SIGUSR1 to the process alone: stops in the next epoch (9)
    second = preempt(8, signal.SIGUSR1, False, f"resume={run_dir}")
    assert second.returncode == 138, second.stderr[-3000:]
    assert _said(second.stderr) == [
        f"error: preempted by SIGUSR1: epoch 2, step 9 saved in {last}; continue with "
        f"resume={run_dir} (or resume=auto with the same hydra.run.dir)"]
    assert "Traceback" not in second.stderr and _step(last) == 9

    # 3. resume=auto with the same command and run dir: to the end
    third = subprocess.run([sys.executable, str(REPO / "train.py"), *TINY, *CLI_SHRINK,
                            "data.num_workers=1", f"hydra.run.dir={run_dir}", "resume=auto"],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert _step(last) == 12

    # every logged value of every step equals the uninterrupted run's
    resumed = _logged(run_dir)
    assert sorted(resumed) == sorted(straight) == list(range(12))
    for step, row in straight.items():
        assert resumed[step].keys() == row.keys(), step
        for key, value in row.items():
            torch.testing.assert_close(resumed[step][key], value, rtol=0, atol=1e-6,
                                       msg=f"{key} at step {step}")


def test_a_checkpoint_write_that_fails_ends_in_one_line(tmp_path, run_cli):
    """RLIMIT_FSIZE makes the writes after the first checkpoint fail with EFBIG (File too
    large), as a full disk fails with ENOSPC."""

    class LimitFileSize(pl.Callback):
        def on_train_epoch_start(self, trainer, *args) -> None:
            if trainer.current_epoch == 1:  # after the first last.ckpt
                resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, limits[1]))

    limits = resource.getrlimit(resource.RLIMIT_FSIZE)
    run_dir = tmp_path / "run"
    monkeypatch = pytest.MonkeyPatch()
    _with_callback(monkeypatch, LimitFileSize())
    try:
        code, err = run_cli(*TINY, *CLI_SHRINK, f"hydra.run.dir={run_dir}")
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, limits)
        monkeypatch.undo()
    last = run_dir / "checkpoints" / "last.ckpt"
    assert code == CheckpointWriteError.exit_code == 1
    lines = err.splitlines()
    assert lines[-2].startswith("error: could not write the checkpoint ") and (
        "File too large (EFBIG)" in lines[-2]) and "Traceback" not in err
    assert lines[-1] == (f"stopped; the last good checkpoint is {last}; resume with "
                         f"resume={run_dir}")
    assert _step(last) == 4  # the previous checkpoint, whole
    assert not list(last.parent.glob(".*.tmp"))


def test_under_slurm_sigusr1_is_lightnings_requeue_and_sigterm_ends_the_run(
        make_cfg, tmp_path, monkeypatch):
    """With SLURM's variables set, Lightning's SLURMEnvironment (auto-requeue) owns SIGUSR1:
    it saves hpc_ckpt_1.ckpt and calls ``scontrol requeue <job>`` (a stand-in here), and the
    run trains on until SIGTERM stops it as anywhere else."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    calls = tmp_path / "scontrol.calls"
    (bin_dir / "scontrol").write_text(f'#!/bin/sh\necho "$@" >> {calls}\n')
    (bin_dir / "scontrol").chmod(0o755)
    monkeypatch.setenv("PATH", f"{bin_dir}{os.pathsep}{os.environ['PATH']}")
    for key, value in {"SLURM_NTASKS": "1", "SLURM_JOB_NAME": "zoo", "SLURM_JOB_ID": "4242",
                       "SLURM_PROCID": "0", "SLURM_LOCALID": "0", "SLURM_NODEID": "0"}.items():
        monkeypatch.setenv(key, value)

    class Signals(pl.Callback):
        def on_train_batch_end(self, trainer, *args) -> None:
            if trainer.global_step in (2, 5):
                os.kill(os.getpid(), signal.SIGUSR1 if trainer.global_step == 2 else
                        signal.SIGTERM)
                time.sleep(0.05)

    _with_callback(monkeypatch, Signals())
    # Lightning installs its SLURM handler only where SIGUSR1 has none
    previous = signal.signal(signal.SIGUSR1, signal.SIG_DFL)
    try:
        with pytest.raises(Preempted) as stopped:
            main(_cfg(make_cfg, tmp_path / "run"))
    finally:
        signal.signal(signal.SIGUSR1, previous)
    assert stopped.value.exit_code == 143 and "preempted by SIGTERM" in str(stopped.value)
    assert calls.read_text() == "requeue 4242\n"
    assert _step(tmp_path / "run" / "hpc_ckpt_1.ckpt") == 2  # Lightning's, at SIGUSR1
    assert _step(tmp_path / "run" / "checkpoints" / "last.ckpt") == 6  # a batch after SIGTERM
