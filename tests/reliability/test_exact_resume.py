"""Resumed runs equal uninterrupted ones, step by step (CPU, deterministic, fixed seed).

Each test trains a tiny config through the real ``mlnotes_zoo.train.main`` three times
over: straight for N epochs; for fewer epochs; then resumed from that run's ``last.ckpt``
up to N. The per-step losses that the CSV logger wrote must match to 1e-6 — which needs
the weights, optimizer and LR-scheduler states, the loop counters, the random state (data
order, sampling noise) and, with AMP, the loss scale all to come back.
"""

from __future__ import annotations

import csv
import functools
import os
import signal
import time
from pathlib import Path

import pytest
import pytorch_lightning as pl
import torch
from omegaconf import open_dict
from pytorch_lightning.plugins.precision import MixedPrecision

import mlnotes_zoo.scale.strategies as strategies
from mlnotes_zoo import list_models
from mlnotes_zoo.preemption import Preempted
from mlnotes_zoo.resume import RandomState
from mlnotes_zoo.train import main

TOL = dict(rtol=0, atol=1e-6)
# deterministic CPU run, every train step in the CSV log, no pictures or progress bar
COMMON = ["trainer.deterministic=true", "trainer.log_every_n_steps=1", "logger=csv",
          "callbacks.pictures=null", "callbacks.progress_bar=null", "test=false"]
VAE = ["model=vae", "model.net.hidden=32", "model.net.latent_dim=4", "data.batch_size=32",
       "trainer.limit_train_batches=3",
       # an epoch-interval LR schedule: its state must come back too
       "model.scheduler={_target_:torch.optim.lr_scheduler.StepLR,_partial_:true,"
       "step_size:1,gamma:0.5}"]
GAN = ["model=dcgan", "model.net.gen_width=8", "model.net.disc_width=8", "model.net.latent_dim=8",
       "model.classifier_steps=50", "model.fid_max_samples=200", "data.batch_size=32",
       "trainer.limit_train_batches=3"]


def _train(make_cfg, out: Path, *overrides: str) -> dict[int, dict[str, float]]:
    cfg = make_cfg(*COMMON, *overrides)
    with open_dict(cfg):
        cfg.paths.output_dir = str(out)
    main(cfg)
    return _logged(out)


def _logged(out: Path) -> dict[int, dict[str, float]]:
    """{step: {metric: value}} of csv/metrics.csv (train rows and val rows merged)."""
    rows: dict[int, dict[str, float]] = {}
    with (out / "csv" / "metrics.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            values = {k: float(v) for k, v in row.items() if v not in ("", None) and k != "step"}
            rows.setdefault(int(row["step"]), {}).update(values)
    return rows


def _assert_same(resumed: dict, straight: dict, steps: list[int]) -> None:
    assert steps, "nothing to compare"
    for step in steps:
        assert resumed[step].keys() == straight[step].keys(), step
        for key, value in straight[step].items():
            torch.testing.assert_close(resumed[step][key], value, **TOL,
                                       msg=f"{key} at step {step}")


def _train_steps(logged: dict, first: int) -> list[int]:
    return sorted(s for s, row in logged.items() if s >= first and "train/loss" in row)


def _weights(out: Path) -> dict[str, torch.Tensor]:
    return torch.load(out / "checkpoints" / "last.ckpt", weights_only=True)["state_dict"]


def test_vae_resume_auto_in_the_same_run_dir_matches_the_uninterrupted_run(make_cfg, tmp_path):
    straight = _train(make_cfg, tmp_path / "straight", *VAE, "trainer.max_epochs=3")
    _train(make_cfg, tmp_path / "run", *VAE, "trainer.max_epochs=1")
    first = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert first["global_step"] == 3 and RandomState().state_key in first["callbacks"]
    resumed = _train(make_cfg, tmp_path / "run", *VAE, "trainer.max_epochs=3", "resume=auto")

    # the run dir's CSV reads like one run: the rows up to the checkpoint are kept
    assert sorted(resumed) == sorted(straight)
    _assert_same(resumed, straight, sorted(straight))
    assert len(_train_steps(resumed, 3)) == 6  # two resumed epochs of three batches
    for key, value in _weights(tmp_path / "straight").items():
        torch.testing.assert_close(_weights(tmp_path / "run")[key], value, **TOL, msg=key)
    lrs = {out: [g["lr"] for g in torch.load(tmp_path / out / "checkpoints" / "last.ckpt",
                                             weights_only=True)["optimizer_states"][0]["param_groups"]]
           for out in ("straight", "run")}
    assert lrs["run"] == lrs["straight"] == [pytest.approx(1e-3 * 0.5 ** 3)]  # halved per epoch


def test_resume_auto_without_a_checkpoint_starts_fresh(make_cfg, tmp_path):
    logged = _train(make_cfg, tmp_path / "new", *VAE, "trainer.max_epochs=1", "resume=auto")
    assert _train_steps(logged, 0) == [0, 1, 2]


@pytest.fixture(scope="module")
def classifier_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("classifiers")  # the FID classifier, trained once


def test_gan_two_optimizers_resume_from_ckpt_path_matches(make_cfg, tmp_path, classifier_dir):
    # manual optimization: D and G steps alternate, two Adam states, noise from the RNG
    args = [*GAN, f"model.classifier_dir={classifier_dir}"]
    straight = _train(make_cfg, tmp_path / "straight", *args, "trainer.max_epochs=2")
    _train(make_cfg, tmp_path / "first", *args, "trainer.max_epochs=1")
    last = tmp_path / "first" / "checkpoints" / "last.ckpt"
    resumed = _train(make_cfg, tmp_path / "resumed", *args, "trainer.max_epochs=2",
                     f"ckpt_path={last}")
    steps = _train_steps(resumed, 0)  # logged per batch (global_step counts D and G steps)
    assert steps == _train_steps(straight, 0)[-3:] and len(steps) == 3
    assert torch.load(last, weights_only=True)["gan"]["disc_steps"] == 3
    assert {"train/disc_loss", "train/gen_loss"} <= straight[steps[0]].keys()
    _assert_same(resumed, straight, steps)


def test_amp_loss_scale_comes_back(make_cfg, tmp_path, monkeypatch):
    # A scaler that starts far too high and grows after every good step: overflowing steps
    # are skipped and the scale moves each step, so a resumed run that forgot the scale
    # would skip different steps.
    def jumpy_scaler() -> MixedPrecision:
        scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 24, growth_interval=1)
        return MixedPrecision("16-mixed", "cpu", scaler=scaler)

    monkeypatch.setattr(strategies, "cpu_mixed_precision", jumpy_scaler)
    args = [*VAE, "trainer.precision=16-mixed", "trainer.limit_train_batches=4"]
    straight = _train(make_cfg, tmp_path / "straight", *args, "trainer.max_epochs=2")
    _train(make_cfg, tmp_path / "first", *args, "trainer.max_epochs=1")
    last = torch.load(tmp_path / "first" / "checkpoints" / "last.ckpt", weights_only=True)
    assert last["MixedPrecision"]["scale"] < 2.0 ** 24  # overflows were skipped
    resumed = _train(make_cfg, tmp_path / "resumed", *args, "trainer.max_epochs=2",
                     f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}")
    steps = _train_steps(resumed, 0)
    assert steps == _train_steps(straight, 0)[-4:] and len(steps) == 4
    _assert_same(resumed, straight, steps)
    end = torch.load(tmp_path / "resumed" / "checkpoints" / "last.ckpt", weights_only=True)
    end_straight = torch.load(tmp_path / "straight" / "checkpoints" / "last.ckpt",
                              weights_only=True)
    assert end["MixedPrecision"] == end_straight["MixedPrecision"]


# Shrunk for speed; the rest of each model's default config (data, optimizer, scheduler,
# augmentation) is what `python train.py model=<name>` runs.
SMALLER = {
    "dcgan": ["model.classifier_steps=50", "model.fid_max_samples=200"],
    "wgan_gp": ["model.classifier_steps=50", "model.fid_max_samples=200"],
    "ctc": ["data.train_size=64", "data.val_size=16", "data.test_size=16"],
    "conformer_ctc": ["data.train_size=64", "data.val_size=16", "data.test_size=16"],
    "gpt": ["model.net.dim=32", "model.net.num_layers=1"],
    "rnn_seq2seq": ["data.train_size=512", "data.val_size=64", "data.test_size=64"],
    "hubert": ["data.train_size=64", "data.val_size=16", "data.test_size=16",
               "model.kmeans_utterances=16", "model.kmeans_iter=5", "model.net.dim=32",
               "model.net.num_layers=1", "model.net.num_heads=2", "model.net.ff_dim=32",
               "model.iteration_epochs=1", "model.teacher_layer=1"],  # epoch 2: iteration 2
    "hubert_ctc": ["data.train_size=64", "data.val_size=16", "data.test_size=16",
                   "model.net.dim=32", "model.net.num_layers=1", "model.net.num_heads=2",
                   "model.net.ff_dim=32"],
}


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_resumes_exactly(make_cfg, tmp_path, classifier_dir, name):
    # The interrupted run has the same config (an epoch count in a scheduler, T_max:
    # ${trainer.max_epochs}, must not differ) and stops after its first epoch via max_steps;
    # the GANs, whose step count depends on n_critic and who have no scheduler, via max_epochs.
    gan = name in ("dcgan", "wgan_gp")
    args = [f"model={name}", *SMALLER.get(name, []), "trainer.limit_train_batches=2",
            "trainer.max_epochs=2", *([f"model.classifier_dir={classifier_dir}"] if gan else [])]
    straight = _train(make_cfg, tmp_path / "straight", *args)
    _train(make_cfg, tmp_path / "first", *args,
           "trainer.max_epochs=1" if gan else "+trainer.max_steps=2")
    resumed = _train(make_cfg, tmp_path / "resumed", *args,
                     f"ckpt_path={tmp_path / 'first' / 'checkpoints' / 'last.ckpt'}")
    steps = _train_steps(resumed, 0)
    assert steps == _train_steps(straight, 0)[-2:] and len(steps) == 2
    _assert_same(resumed, straight, steps)


class _PreemptAt(pl.Callback):
    """SIGTERM to this process after batch ``batch`` of epoch ``epoch``: the run stops after
    the next batch and writes last.ckpt there (mlnotes_zoo.preemption)."""

    def __init__(self, epoch: int, batch: int) -> None:
        self.epoch, self.batch = epoch, batch

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if (trainer.current_epoch, batch_idx) == (self.epoch, self.batch):
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)


@pytest.mark.slow
@pytest.mark.parametrize("name", list_models())
def test_every_registered_model_resumes_exactly_mid_epoch(make_cfg, tmp_path, classifier_dir,
                                                          monkeypatch, name):
    # Signalled at the end of the first epoch: its validation runs, the run stops after the
    # first of two batches of the second epoch; resume=auto continues that epoch with its
    # second batch (the loaders resume mid-epoch).
    gan = name in ("dcgan", "wgan_gp")
    args = [f"model={name}", *SMALLER.get(name, []), "trainer.limit_train_batches=2",
            "trainer.max_epochs=2", *([f"model.classifier_dir={classifier_dir}"] if gan else [])]
    straight = _train(make_cfg, tmp_path / "straight", *args)
    real_init = pl.Trainer.__init__

    @functools.wraps(real_init)
    def init(self, *a, callbacks=None, **k):
        real_init(self, *a, callbacks=[*(callbacks or []), _PreemptAt(0, 1)], **k)

    monkeypatch.setattr(pl.Trainer, "__init__", init)
    with pytest.raises(Preempted):
        _train(make_cfg, tmp_path / "run", *args)
    monkeypatch.undo()
    ckpt = torch.load(tmp_path / "run" / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["callbacks"][RandomState().state_key]["mid_epoch"]
    resumed = _train(make_cfg, tmp_path / "run", *args, "resume=auto")
    steps = _train_steps(resumed, 0)
    assert steps == _train_steps(straight, 0) and len(steps) == 4
    _assert_same(resumed, straight, sorted(straight))
