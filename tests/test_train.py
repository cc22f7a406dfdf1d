"""train.py end to end on a shrunk config: run-dir outputs, checkpoints, resume, multirun."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from mlnotes_zoo import load_checkpoint
from mlnotes_zoo.lit.vae import LitVAE
from mlnotes_zoo.train import main


def test_run_writes_everything_a_person_looks_for(make_cfg, tmp_path):
    metrics = main(make_cfg("model=vae", "trainer.max_epochs=2", "model.net.latent_dim=4",
                            "model.net.hidden=64"))
    assert {"test/loss", "test/elbo", "test/kl", "test/recon", "test/nll_iwae"} <= set(metrics)
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["metrics"] == pytest.approx(metrics)
    # IWAE bound is at least as tight as the ELBO: −log p(x) ≤ −IWAE ≤ −ELBO
    assert metrics["test/nll_iwae"] <= metrics["test/loss"] + 1e-3

    ckpts = tmp_path / "checkpoints"
    assert (ckpts / "last.ckpt").is_file() and list(ckpts.glob("best-epoch*.ckpt"))
    resolved = yaml.safe_load((tmp_path / "config.yaml").read_text())
    assert resolved["model"]["net"]["in_shape"] == [1, 8, 8]  # interpolations resolved
    assert resolved["model"]["net"]["latent_dim"] == 4
    csv_rows = (tmp_path / "csv" / "metrics.csv").read_text().splitlines()
    assert "val/loss" in csv_rows[0] and len(csv_rows) > 1
    events = EventAccumulator(str(tmp_path / "tensorboard")).Reload()
    assert "val/loss" in events.Tags()["scalars"] and "samples" in events.Tags()["images"]
    for name in ("reconstructions", "samples"):
        assert (tmp_path / "pictures" / f"{name}.png").is_file()
        assert (tmp_path / "pictures" / f"{name}_epoch001.png").is_file()


def test_checkpoint_rebuilds_the_network_without_pickled_modules(make_cfg, tmp_path):
    main(make_cfg("model=vae", "model.net.latent_dim=3", "model.net.hidden=32"))
    path = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, weights_only=True)  # only tensors and plain values inside
    assert ckpt["hyper_parameters"]["net"]["latent_dim"] == 3

    net = load_checkpoint(path)
    lit = LitVAE.load_from_checkpoint(path)
    assert net.latent_dim == 3 and lit.net.latent_dim == 3
    x = net.example_input(5)
    with torch.no_grad():
        torch.testing.assert_close(net.encode(x), lit.net.encode(x))
        torch.testing.assert_close(net.encode(x)[0], _weights_mu(ckpt, x))


def _weights_mu(ckpt, x):
    # μ computed straight from the stored tensors: an independent check of the loaded weights.
    state = ckpt["state_dict"]
    h = x.flatten(1)
    for i in (0, 2, 4):
        h = h @ state[f"net.encoder.net.{i + 1}.weight"].T + state[f"net.encoder.net.{i + 1}.bias"]
        if i < 4:
            h = torch.nn.functional.silu(h)
    return h.chunk(2, dim=-1)[0]


def test_resume_from_last_checkpoint_continues_training(make_cfg, tmp_path):
    main(make_cfg("model=vae", "trainer.max_epochs=1", "model.net.hidden=64"))
    last = tmp_path / "checkpoints" / "last.ckpt"
    first = torch.load(last, weights_only=True)
    assert first["epoch"] == 0 and first["global_step"] == 2
    main(make_cfg("model=vae", "trainer.max_epochs=2", "model.net.hidden=64", f"ckpt_path={last}"))
    resumed = torch.load(last, weights_only=True)
    assert resumed["epoch"] == 1 and resumed["global_step"] == 4
    assert not torch.equal(first["state_dict"]["net.encoder.net.1.weight"],
                           resumed["state_dict"]["net.encoder.net.1.weight"])


def test_last_checkpoint_is_the_latest_state_even_when_the_metric_stops_improving(
        make_cfg, tmp_path):
    # mode=max on a loss: only epoch 0 is ever "best"
    main(make_cfg("model=vae", "trainer.max_epochs=3", "model.net.hidden=64",
                  "callbacks.model_checkpoint.mode=max"))
    ckpts = tmp_path / "checkpoints"
    assert [p.name for p in ckpts.glob("best-*.ckpt")] == ["best-epoch000.ckpt"]
    assert torch.load(ckpts / "last.ckpt", weights_only=True)["epoch"] == 2


@pytest.mark.slow
def test_cli_multirun_sweeps_a_net_key(run_train, tmp_path):
    out = run_train("-m", "model.net.latent_dim=2,8", "trainer.max_epochs=1",
                    "+trainer.limit_train_batches=2", "+trainer.limit_val_batches=1",
                    "+trainer.limit_test_batches=1", cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    runs = sorted(Path(tmp_path, "multirun").glob("vae/*/*/metrics.json"))
    assert len(runs) == 2
    dims = [json.loads(r.read_text())["metrics"] and r.parent.joinpath("config.yaml").read_text()
            for r in runs]
    assert "latent_dim: 2" in dims[0] and "latent_dim: 8" in dims[1]


def test_a_first_run_prints_no_advertisement_or_deprecation(run_train, tmp_path):
    # the model summary included: Lightning's own, less its column of zero FLOPs
    out = run_train("model=vae", "trainer.max_epochs=1", "+trainer.limit_train_batches=2",
                    "+trainer.limit_val_batches=1", "+trainer.limit_test_batches=1",
                    cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-2000:]
    first = (out.stdout + out.stderr).split("Epoch 0")[0]
    assert "Total params" in first  # the summary is there
    for noise in ("Tip", "litlogger", "litmodels", "FLOPs", "deprecated", "Deprecation",
                  "FutureWarning"):
        assert noise not in first, first
