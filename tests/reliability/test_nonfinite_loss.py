"""A NaN/inf loss stops the run naming the step and the loss parts, keeps the last good
checkpoint and exits non-zero; under AMP the loss scaler skips such steps instead."""

from __future__ import annotations

import pytest
import torch
from omegaconf import open_dict

from mlnotes_zoo import load_checkpoint
from mlnotes_zoo.lit.base import NonFiniteLossError
from mlnotes_zoo.lit.vae import LitVAE
from mlnotes_zoo.train import _task, main

TINY = ["model=vae", "model.net.hidden=32", "model.net.latent_dim=4", "data.batch_size=32",
        "trainer.limit_train_batches=3", "trainer.max_epochs=3", "logger=none",
        "callbacks.pictures=null", "callbacks.progress_bar=null", "test=false"]


def _poison(monkeypatch, *, steps, kind: str = "loss") -> None:
    """Make LitVAE's training loss non-finite on the given global steps.

    kind="loss": the loss and its recon part are NaN. kind="grad": the loss stays finite
    but its gradient is NaN (√x at 0 times 0), so the weights go bad after the step.
    """
    model_step = LitVAE.model_step

    def poisoned(self, batch, stage):
        out = model_step(self, batch, stage)
        if stage == "train" and (steps == "all" or self.global_step in steps):
            if kind == "loss":
                out["recon"] = out["recon"] * float("nan")
                out["loss"] = out["loss"] + out["recon"]
            else:
                zero = (next(self.net.parameters()) * 0).sum()
                out["loss"] = out["loss"] + zero.sqrt() * 0
        return out

    monkeypatch.setattr(LitVAE, "model_step", poisoned)


def test_nan_loss_stops_naming_step_and_parts_and_keeps_last_good_checkpoint(
        make_cfg, tmp_path, monkeypatch, capsys):
    _poison(monkeypatch, steps={4})  # the second batch of epoch 1
    cfg = make_cfg(*TINY)
    with pytest.raises(SystemExit) as exit_info:
        _task(cfg)
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "non-finite loss at step 4 (epoch 1)" in err
    for part in ("loss=nan", "recon=nan", "kl=", "elbo="):
        assert part in err
    last = tmp_path / "checkpoints" / "last.ckpt"
    assert f"the last good checkpoint is {last}" in err
    ckpt = torch.load(last, weights_only=True)
    assert ckpt["epoch"] == 0 and ckpt["global_step"] == 3  # epoch 0's, not overwritten
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())
    load_checkpoint(last)


def test_nan_gradient_never_reaches_a_checkpoint(make_cfg, tmp_path, monkeypatch):
    # the last batch of epoch 1 has a finite loss but NaN gradients: the weights turn NaN
    # just before the validation that would write last.ckpt, which refuses to
    _poison(monkeypatch, steps={5}, kind="grad")
    with pytest.raises(NonFiniteLossError, match="non-finite weights after step 6"):
        main(make_cfg(*TINY))
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["global_step"] == 3
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_amp_scaler_skips_a_nan_step_and_the_run_goes_on(make_cfg, tmp_path, monkeypatch):
    _poison(monkeypatch, steps={4})
    main(make_cfg(*TINY, "trainer.precision=16-mixed"))
    ckpt = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    assert ckpt["epoch"] == 2
    assert ckpt["MixedPrecision"]["scale"] == 2.0 ** 16 / 2  # one skipped step halved it
    assert all(torch.isfinite(v).all() for v in ckpt["state_dict"].values())


def test_amp_gives_up_when_every_loss_is_nan(make_cfg, monkeypatch):
    _poison(monkeypatch, steps="all")
    with open_dict(cfg := make_cfg(*TINY, "trainer.precision=16-mixed",
                                   "trainer.limit_train_batches=30", "trainer.max_epochs=1")):
        cfg.data.batch_size = 8
    monkeypatch.setattr(LitVAE, "amp_max_skipped_steps", 5, raising=False)
    with pytest.raises(NonFiniteLossError, match="for 6 steps in a row despite AMP"):
        main(cfg)
