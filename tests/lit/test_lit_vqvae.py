"""LitVQVAE through train.main: metrics.json, split-level codebook usage, pictures, checkpoints."""

from __future__ import annotations

import json
import struct

import numpy as np
import pytest
import torch
from hydra.utils import instantiate

from mlnotes_zoo import create_model, load_checkpoint
from mlnotes_zoo.lit.vqvae import LitVQVAE
from mlnotes_zoo.train import main

SMALL = ["model=vqvae", "model.net.hidden=16", "model.net.residual_hidden=8",
         "model.net.num_codes=16", "model.net.embedding_dim=4", "model.net.restart_after=1"]


def test_train_reports_reconstruction_and_codebook_usage(make_cfg, tmp_path):
    cfg = make_cfg(*SMALL, "trainer.max_epochs=2")
    metrics = main(cfg)
    assert {"test/loss", "test/recon_mse", "test/codebook", "test/commitment",
            "test/perplexity", "test/codes_used"} <= set(metrics)
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["metrics"] == metrics
    assert (tmp_path / "pictures" / "reconstructions.png").is_file()
    assert (tmp_path / "pictures" / "reconstructions_epoch001.png").is_file()

    # Recompute the test figures from the saved network and the same (first) test batch.
    net = load_checkpoint(report["checkpoint"])
    datamodule = instantiate(cfg.data)
    datamodule.setup("test")
    x = next(iter(datamodule.test_dataloader()))[0]
    with torch.no_grad():
        x_hat, _, _, indices = net(x)
    counts = torch.bincount(indices.flatten(), minlength=16).float()
    p = counts[counts > 0] / counts.sum()
    assert abs(metrics["test/perplexity"] - torch.exp(-(p * p.log()).sum()).item()) < 1e-4
    assert metrics["test/codes_used"] == (counts > 0).sum().item()
    assert abs(metrics["test/recon_mse"] - (x_hat - x).pow(2).mean().item()) < 1e-5


def test_checkpoint_keeps_the_ema_codebook(make_cfg, tmp_path):
    main(make_cfg(*SMALL, "model.net.ema=true"))
    path = tmp_path / "checkpoints" / "last.ckpt"
    ckpt = torch.load(path, weights_only=True)
    state = ckpt["state_dict"]
    for name in ("codebook", "ema_cluster_size", "ema_embed_sum", "code_age"):
        assert f"net.quantizer.{name}" in state
    net = load_checkpoint(path)
    torch.testing.assert_close(net.quantizer.codebook, state["net.quantizer.codebook"])
    # Trained: the EMA moved the codes away from their tiny uniform initialisation.
    assert state["net.quantizer.codebook"].abs().max() > 1 / 16
    lit = LitVQVAE.load_from_checkpoint(path)
    assert lit.net.quantizer.ema and lit.beta == 0.25


def test_codebook_loss_trains_the_codes_only_without_ema():
    torch.manual_seed(0)
    x = torch.rand(8, 1, 8, 8)
    for ema in (False, True):
        lit = LitVQVAE(net=create_model("vqvae", hidden=16, residual_hidden=8, num_codes=8,
                                        embedding_dim=4, ema=ema))
        out = lit.model_step((x, None), "train")
        out["loss"].backward()
        grad = lit.net.quantizer.codebook.grad
        assert (grad is not None and grad.abs().sum() > 0) == (not ema)
        expected = out["recon_mse"] + 0.25 * out["commitment"] + (0 if ema else out["codebook"])
        torch.testing.assert_close(out["loss"], expected)


@pytest.mark.slow
def test_a_few_hundred_steps_fit_a_batch():
    torch.manual_seed(0)
    from mlnotes_zoo.data.digits import DigitsDataModule

    datamodule = DigitsDataModule(batch_size=64)
    datamodule.setup()
    x = next(iter(datamodule.train_dataloader()))[0]
    lit = LitVQVAE(net=create_model("vqvae", hidden=32, residual_hidden=16, num_codes=32,
                                    ema=True, restart_after=20))
    opt = torch.optim.Adam(lit.parameters(), lr=3e-3)
    for _ in range(150):
        loss = lit.model_step((x,), "train")["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
    lit.eval()
    with torch.no_grad():
        mse = lit.model_step((x,), "val")["recon_mse"].item()
    variance = x.var(0, unbiased=False).mean().item()  # MSE of predicting the mean image
    assert mse < 0.15 * variance


def _write_idx(path, array: np.ndarray) -> None:
    # IDX: magic (0, 0, 0x08 = ubyte, ndim), big-endian uint32 dims, then the raw bytes.
    path.parent.mkdir(parents=True, exist_ok=True)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
    path.write_bytes(header + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes())


def test_mnist_experiment_trains_on_idx_files_with_a_7x7_code_grid(make_cfg, tmp_path):
    rng = np.random.default_rng(0)
    for split, n in (("train", 40), ("t10k", 12)):
        _write_idx(tmp_path / "MNIST" / "raw" / f"{split}-images-idx3-ubyte",
                   rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        _write_idx(tmp_path / "MNIST" / "raw" / f"{split}-labels-idx1-ubyte",
                   rng.integers(0, 10, (n,), dtype=np.uint8))
    cfg = make_cfg("experiment=vqvae_mnist", f"data.root={tmp_path}", "data.val_size=8",
                   "data.batch_size=16", "model.net.hidden=16", "model.net.residual_hidden=8",
                   "model.net.num_codes=32", "trainer.max_epochs=1")
    assert list(cfg.model.net.in_shape) == [1, 28, 28]
    metrics = main(cfg)
    assert 1 <= metrics["test/codes_used"] <= 32 and metrics["test/recon_mse"] > 0
    net = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert net.encode(torch.rand(2, 1, 28, 28)).shape == (2, 7, 7)


def test_cifar10_experiment_composes_to_an_8x8_code_grid(make_cfg):
    cfg = make_cfg("experiment=vqvae_cifar10")
    net = instantiate(cfg.model.net, _convert_="all")
    assert net.in_shape == (3, 32, 32) and net.latent_shape == (8, 8) and net.num_codes == 512
