"""LitPonderNet: train.py end to end on a shrunk config, and the logged evaluation metrics
against direct computations with the network."""

from __future__ import annotations

import json

import pytest
import pytorch_lightning as pl
import torch

from mlnotes_zoo import create_model
from mlnotes_zoo.data.parity import ParityDataModule
from mlnotes_zoo.lit.pondernet import LitPonderNet, draw_halting
from mlnotes_zoo.train import main

SMALL = ["data.n_elems=8", "data.train_max_nonzero=5", "data.train_size=256",
         "data.val_size=64", "data.test_size=64", "data.batch_size=32", "model.net.hidden=16",
         "model.net.max_steps=6"]


def test_train_py_writes_metrics_halting_picture_and_report(make_cfg, tmp_path):
    metrics = main(make_cfg("model=pondernet", *SMALL))
    expected = {"test/loss", "test/reconstruction", "test/kl", "test/acc", "test/steps",
                "test/expected_steps", "test/acc_extrap", "test/steps_extrap",
                "test/steps_spearman"}
    assert expected <= set(metrics)
    assert 1 <= metrics["test/steps"] <= 6 and 0 <= metrics["test/acc"] <= 1
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"] == pytest.approx(metrics)
    pictures = tmp_path / "pictures"
    assert (pictures / "halting.png").is_file() and (pictures / "halting_test.png").is_file()
    table = json.loads((pictures / "halting_test.json").read_text())
    assert table["k"] == list(range(1, 9)) and table["train_max_nonzero"] == 5
    assert sum(table["count"]) == 128  # both test sets
    for probs in table["halting_probs"]:
        assert len(probs) == 6 and sum(probs) == pytest.approx(1, abs=1e-5)


def test_logged_evaluation_metrics_equal_a_direct_computation(tmp_path):
    torch.manual_seed(0)
    dm = ParityDataModule(n_elems=6, train_max_nonzero=3, train_size=64, val_size=50,
                          test_size=70, batch_size=16)
    net = create_model("pondernet", in_features=6, hidden=12, max_steps=5)
    lit = LitPonderNet(net=net, halting="threshold", threshold=0.5)
    trainer = pl.Trainer(accelerator="cpu", logger=False, enable_checkpointing=False,
                         enable_progress_bar=False, enable_model_summary=False,
                         default_root_dir=str(tmp_path))
    trainer.test(lit, datamodule=dm, verbose=False)
    logged = trainer.callback_metrics

    def direct(dataset):
        x, y, k = dataset.tensors
        out = net.infer(x, halting="threshold", threshold=0.5)
        acc = ((out.y_hat.squeeze(1) > 0).float() == y).float().mean()
        return acc, out.halting_step.float(), k

    acc_i, steps_i, k_i = direct(dm.splits["test"][0])
    acc_e, steps_e, k_e = direct(dm.splits["test"][1])
    torch.testing.assert_close(logged["test/acc"], acc_i)
    torch.testing.assert_close(logged["test/steps"], steps_i.mean())
    torch.testing.assert_close(logged["test/acc_extrap"], acc_e)
    torch.testing.assert_close(logged["test/steps_extrap"], steps_e.mean())
    # Spearman = Pearson on ranks (average ranks for ties), computed by hand
    steps, k = torch.cat([steps_i, steps_e]), torch.cat([k_i, k_e]).float()
    r = torch.corrcoef(torch.stack([_ranks(steps), _ranks(k)]))[0, 1]
    assert torch.isfinite(r)  # the random network's halting step varies, so r is defined
    torch.testing.assert_close(logged["test/steps_spearman"], r, atol=1e-4, rtol=0)
    table = json.loads((tmp_path / "pictures" / "halting_test.json").read_text())
    for kk, mean in zip(table["k"], table["mean_steps"], strict=True):
        assert mean == pytest.approx(float(steps[k == kk].mean()), abs=1e-5)


def _ranks(v: torch.Tensor) -> torch.Tensor:
    order = v.argsort()
    ranks = torch.empty_like(v)
    ranks[order] = torch.arange(1, len(v) + 1, dtype=v.dtype)
    for value in v.unique():  # ties share the mean rank
        tie = v == value
        ranks[tie] = ranks[tie].mean()
    return ranks


def test_draw_halting_image_shape_and_range():
    table = {"k": [1, 2, 3], "mean_steps": [1.0, 2.0, 3.5], "halting": "sample",
             "halting_probs": [[1, 0, 0, 0], [0, 1, 0, 0], [0, 0, 0.5, 0.5]],
             "train_max_nonzero": 2}
    image = draw_halting(table)
    assert image.dim() == 3 and image.shape[0] == 3
    assert image.min() >= 0 and image.max() <= 1 and image.min() < 0.5


def test_argument_checks():
    net = create_model("pondernet", in_features=4, hidden=4, max_steps=2)
    with pytest.raises(ValueError, match="halting"):
        LitPonderNet(net=net, halting="argmax")
    with pytest.raises(ValueError, match="lambda_p"):
        LitPonderNet(net=net, lambda_p=0)
