"""Checkpoint writes survive SIGKILL; resume=<run dir> / auto pick the right checkpoint."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import open_dict

from mlnotes_zoo.resume import AtomicCheckpointIO, ResumeError, expand_resume, resume_checkpoint
from mlnotes_zoo.train import main

REPO = Path(__file__).resolve().parents[2]
HANG = Path(__file__).with_name("_hang_in_checkpoint_write.py")
TINY = ["model=vae", "model.net.hidden=32", "model.net.latent_dim=4", "data.batch_size=32",
        "trainer.deterministic=true", "logger=none", "callbacks.pictures=null",
        "callbacks.progress_bar=null"]
CLI_SHRINK = ["trainer.accelerator=cpu", "+trainer.limit_train_batches=3",
              "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1",
              "trainer.enable_model_summary=false", "trainer.max_epochs=3"]


def test_a_failed_write_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    io = AtomicCheckpointIO()
    path = tmp_path / "checkpoints" / "last.ckpt"
    io.save_checkpoint({"epoch": 0, "w": torch.ones(3)}, path)

    def disk_full(obj, f, *args, **kwargs):
        f.write(b"PK\x03\x04 half a checkpoint")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", disk_full)
    with pytest.raises(OSError, match="No space left"):
        io.save_checkpoint({"epoch": 1, "w": torch.zeros(3)}, path)
    monkeypatch.undo()
    assert io.load_checkpoint(path)["epoch"] == 0
    assert [p.name for p in path.parent.iterdir()] == ["last.ckpt"]  # no temporary left


@pytest.mark.slow
def test_sigkill_while_writing_last_ckpt_then_resume(tmp_path, make_cfg):
    run_dir = tmp_path / "run"
    marker = tmp_path / "writing"
    log = (tmp_path / "killed.log").open("w")
    killed = subprocess.Popen(
        [sys.executable, str(HANG), str(marker), "2", *TINY, *CLI_SHRINK,
         f"hydra.run.dir={run_dir}"], cwd=tmp_path, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 240
    while not marker.exists():  # the 2nd last.ckpt (after epoch 1) is half written
        assert killed.poll() is None, (tmp_path / "killed.log").read_text()[-3000:]
        assert time.monotonic() < deadline, "the run never reached its second checkpoint"
        time.sleep(0.1)
    os.kill(killed.pid, signal.SIGKILL)
    assert killed.wait(timeout=60) == -signal.SIGKILL

    ckpts = run_dir / "checkpoints"
    partial = list(ckpts.glob(".last.ckpt.*.tmp"))
    assert len(partial) == 1 and partial[0].stat().st_size > 0  # the write it was killed in
    survivor = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert survivor["epoch"] == 0 and survivor["global_step"] == 3

    # the same run continues in its dir, with its own overrides (.hydra/overrides.yaml)
    resumed = subprocess.run([sys.executable, str(REPO / "train.py"), f"resume={run_dir}"],
                             cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert not list(ckpts.glob(".last.ckpt.*.tmp"))  # the stale temporary is cleaned up
    end = torch.load(ckpts / "last.ckpt", weights_only=True)
    assert end["epoch"] == 2 and end["global_step"] == 9
    assert (run_dir / "metrics.json").is_file()

    # ... and ends where a run that was never killed ends
    cfg = make_cfg(*TINY, "trainer.max_epochs=3", "trainer.limit_train_batches=3", "test=false")
    with open_dict(cfg):
        cfg.paths.output_dir = str(tmp_path / "straight")
    main(cfg)
    straight = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt", weights_only=True)
    for key, value in straight["state_dict"].items():
        torch.testing.assert_close(end["state_dict"][key], value, rtol=0, atol=1e-6, msg=key)


def _fake_run(run_dir: Path, overrides: list[str]) -> Path:
    (run_dir / ".hydra").mkdir(parents=True)
    (run_dir / ".hydra" / "overrides.yaml").write_text(yaml.safe_dump(overrides))
    (run_dir / "checkpoints").mkdir()
    (run_dir / "checkpoints" / "last.ckpt").write_bytes(b"")
    return run_dir


def test_resume_run_dir_replays_its_overrides_and_new_ones_win(tmp_path):
    run = _fake_run(tmp_path / "run", ["model=gpt", "model.net.dim=32", "+trainer.max_steps=5",
                                       "ckpt_path=/elsewhere/last.ckpt", "resume=auto"])
    argv = expand_resume([f"resume={run}", "trainer.max_steps=50", "model.net.dim=64"])
    assert argv == ["model=gpt", f"resume={run}", "++trainer.max_steps=50", "model.net.dim=64",
                    f"hydra.run.dir={run}"]
    assert expand_resume(["model=vae", "resume=auto"]) == ["model=vae", "resume=auto"]
    with pytest.raises(ResumeError, match="cannot be combined with -m"):
        expand_resume(["-m", f"resume={run}"])
    with pytest.raises(ResumeError, match="no checkpoints/last.ckpt"):
        expand_resume([f"resume={tmp_path}"])


def test_resume_checkpoint_choices(tmp_path):
    run = _fake_run(tmp_path / "run", [])
    last = str(run / "checkpoints" / "last.ckpt")
    assert resume_checkpoint(None, None, tmp_path) is None
    assert resume_checkpoint(last, None, tmp_path) == last
    assert resume_checkpoint(None, "auto", run) == last
    assert resume_checkpoint(None, "auto", tmp_path / "fresh") is None  # nothing yet: start
    assert resume_checkpoint(None, str(run), tmp_path) == last
    for ckpt, resume, message in [(None, str(tmp_path / "nope"), "no such directory"),
                                  (None, last, "is a file; .* ckpt_path="),
                                  (last, "auto", "both ckpt_path"),
                                  (str(tmp_path / "x.ckpt"), None, "no such checkpoint file")]:
        with pytest.raises(ResumeError, match=message):
            resume_checkpoint(ckpt, resume, tmp_path)
