"""Command lines that used to end in a parse error or a traceback: paths with ``=`` (Lightning
names checkpoints ``epoch=3-step=40.ckpt``), a GPU asked for on a CPU-only machine, a run
without a progress bar; and ``train.log``, which holds what the console shows.

The CLI runs in-process (``mlnotes_zoo.train.cli``, tiny runs of one or two epochs of two
batches); one behaviour, a run that fails after its run dir exists, runs as a real
``python train.py`` subprocess.
"""

from __future__ import annotations

import logging
import shutil
import sys

import pytest
import torch
from hydra.core.global_hydra import GlobalHydra

from mlnotes_zoo.config import compose
from mlnotes_zoo.resume import expand_resume
from mlnotes_zoo.train import _path_as_given

TINY = ["model=vae", "model.net.hidden=32", "model.net.latent_dim=4", "data.batch_size=32",
        "trainer.accelerator=cpu", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
        "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1",
        "trainer.enable_model_summary=false", "logger=none", "callbacks.pictures=null"]


@pytest.fixture
def train(monkeypatch, capfd):
    """``train(*overrides)``: ``mlnotes-zoo-train overrides`` in-process; returns (exit code,
    stdout, stderr) with the process' own file descriptors captured (Lightning's console
    handler writes to the stderr it found at import). Logging and Hydra are put back."""
    from mlnotes_zoo.train import _FILE_LOG, _OWN_CONSOLE_LOGGERS, cli

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    for name in ("MLNOTES_RUN_STAMP", "HYDRA_FULL_ERROR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(sys, "argv", ["train.py"])
    capfd.readouterr()

    def _run(*overrides: str) -> tuple[int, str, str]:
        code = 0
        try:
            cli(list(overrides))
        except SystemExit as exit_info:
            code = exit_info.code
        out = capfd.readouterr()
        return code, out.out, out.err

    yield _run
    root.handlers[:], root.level = handlers, level
    for name in [*_OWN_CONSOLE_LOGGERS, _FILE_LOG.name]:  # no handler on a test's train.log
        logger = logging.getLogger(name)
        for handler in [h for h in logger.handlers if isinstance(h, logging.FileHandler)]:
            logger.removeHandler(handler)
            handler.close()
    GlobalHydra.instance().clear()


def _one_line_exit_2(code: int, err: str) -> str:
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "Traceback" not in err, err
    return lines[0]


# -- paths holding "=" and other characters of Hydra's grammar ------------------------------
@pytest.mark.parametrize("name", ["epoch=3-step=40.ckpt", "a,b.ckpt", "it's [1].ckpt",
                                  "x y=z'.ckpt", "plain.ckpt"])
def test_a_path_is_taken_as_typed_and_as_hydra_quoted(tmp_path, name):
    path = str(tmp_path / name)
    assert compose([_path_as_given(f"ckpt_path={path}")]).ckpt_path == path
    if "'" not in path:  # the quoting Hydra's docs give works as well: ckpt_path='"<path>"'
        assert compose([_path_as_given(f'ckpt_path="{path}"')]).ckpt_path == path
    assert _path_as_given("ckpt_path=null") == "ckpt_path=null"
    assert _path_as_given("resume=auto") == "resume=auto"


def test_a_lightning_checkpoint_name_resumes(train, tmp_path):
    code, out, err = train(*TINY, "test=false", f"hydra.run.dir={tmp_path / 'first'}")
    assert code == 0, err
    assert "Epoch 0/0" in out + err  # the default progress bar (none in the test below)
    named = tmp_path / "kept" / "epoch=0-step=2.ckpt"  # what Lightning's default names look like
    named.parent.mkdir()
    shutil.copy(tmp_path / "first" / "checkpoints" / "last.ckpt", named)
    code, _, err = train(*TINY, "test=false", "trainer.max_epochs=2", f"ckpt_path={named}",
                         f"hydra.run.dir={tmp_path / 'second'}")
    assert code == 0, err
    last = torch.load(tmp_path / "second" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1 and last["global_step"] == 4  # continued from step 2


def test_a_missing_checkpoint_file_stops_before_the_run_dir(train, tmp_path):
    code, _, err = train(*TINY, f"ckpt_path={tmp_path / 'epoch=9-step=90.ckpt'}",
                         f"hydra.run.dir={tmp_path / 'run'}")
    line = _one_line_exit_2(code, err)
    assert f"ckpt_path={tmp_path / 'epoch=9-step=90.ckpt'}: no such checkpoint file" in line
    assert not (tmp_path / "run").exists()


def test_a_run_dir_with_equals_signs_continues(train, tmp_path):
    run_dir = tmp_path / "lr=1e-3,bs=32"
    code, _, err = train(*TINY, "test=false", f"hydra.run.dir={run_dir}")
    assert code == 0, err
    assert (run_dir / ".hydra" / "overrides.yaml").is_file()
    # typed as is (the shell's resume='<dir>'), and quoted for Hydra (resume='"<dir>"')
    for given in (f"resume={run_dir}", f'resume="{run_dir}"'):
        argv = expand_resume([_path_as_given(given)])
        assert argv[-1] == f"hydra.run.dir='{run_dir}'", argv
    code, _, err = train(f"resume={run_dir}", "trainer.max_epochs=2")
    assert code == 0, err
    last = torch.load(run_dir / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["epoch"] == 1 and last["global_step"] == 4
    assert sorted(p.name for p in tmp_path.iterdir()) == [run_dir.name]  # no other run dir


def test_another_value_with_equals_gets_the_quoting_hint(train):
    code, _, err = train("data.root=/data/a=b")
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: cannot parse 'data.root=/data/a=b'")
    assert lines[1].endswith("""data.root='"/data/a=b"' (shell quotes around Hydra's)"""), err


# -- a GPU asked for where there is none ------------------------------------------------------
@pytest.mark.parametrize("override", ["trainer.accelerator=gpu", "trainer.accelerator=cuda",
                                      "trainer=gpu"])
def test_a_gpu_on_a_cpu_only_machine_is_one_line(train, tmp_path, monkeypatch, override):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # CPU-only, on any machine
    code, _, err = train(override, f"hydra.run.dir={tmp_path / 'run'}")
    line = _one_line_exit_2(code, err)
    name = override.rpartition("=")[2]
    assert line == (f"error: trainer.accelerator={name}: this machine has no {name.upper()} "
                    "device (torch sees none); use trainer.accelerator=cpu|auto"), line
    assert not (tmp_path / "run").exists()


# -- no progress bar; train.log ---------------------------------------------------------------
def test_no_progress_bar_and_train_log_holds_the_console_log(train, tmp_path):
    run_dir = tmp_path / "run"
    code, out, err = train(*TINY, "trainer.enable_progress_bar=false", f"hydra.run.dir={run_dir}")
    assert code == 0, err
    console = out + err
    assert "Epoch 0/0" not in console  # no bar (the default one draws "Epoch 0/0 ━━━ 2/2")
    assert (run_dir / "metrics.json").is_file()

    log = (run_dir / "train.log").read_text()
    for line in ("Seed set to 42", "`Trainer.fit` stopped: `max_epochs=1` reached.",
                 "Loaded model weights from the checkpoint at"):
        assert line in log, log
        assert console.count(line) == 1, console  # on the console once, not twice
    metrics = {k: v for k, v in (m.split(" = ") for m in log.split("test metric ")[1:])}
    assert set(metrics) >= {"test/loss", "test/elbo", "test/kl"}, log
    assert f"run dir: {run_dir}" in log


def test_a_failed_run_writes_its_error_line_to_train_log(run_train, tmp_path):
    """A data error after the run dir exists: the console's error line is in train.log too."""
    (tmp_path / "empty").mkdir()
    out = run_train(*TINY, "data=mnist", f"data.root={tmp_path / 'empty'}",
                    "hydra.run.dir=run", cwd=tmp_path, timeout=180)
    assert out.returncode == 2, out.stderr[-2000:]
    error = out.stderr.strip().splitlines()[-1]
    assert error.startswith("error: ") and "MNIST" in error, out.stderr
    assert out.stderr.count("error: ") == 1
    log = (tmp_path / "run" / "train.log").read_text()
    assert log.strip().splitlines()[-1].endswith(f"[ERROR] - {error}"), log
    assert "Seed set to 42" in log


def test_checkpoints_and_loggers_switched_off_in_the_trainer_config(train, tmp_path):
    """Lightning refuses enable_checkpointing=False beside a ModelCheckpoint and takes one
    logger argument: the callbacks and logger groups' ones are left out instead."""
    run_dir = tmp_path / "run"
    code, _, err = train(*[a for a in TINY if a != "logger=none"], "+trainer.logger=false",
                         "+trainer.enable_checkpointing=false", f"hydra.run.dir={run_dir}")
    assert code == 0, err
    assert not list(run_dir.rglob("*.ckpt")) and not (run_dir / "csv").exists()
    assert not (run_dir / "tensorboard").exists() and (run_dir / "metrics.json").is_file()
    code, _, err = train("+trainer.logger=csv", f"hydra.run.dir={run_dir}-2")
    assert "trainer.logger='csv'" in _one_line_exit_2(code, err)
    assert not (tmp_path / "run-2").exists()
