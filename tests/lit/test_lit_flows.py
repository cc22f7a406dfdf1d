"""LitFlow wiring: train.py end to end for both flows, the logged bits/dim and the baseline."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mlnotes_zoo.lit.flows import LitFlow
from mlnotes_zoo.models.flows import bits_per_dim, standard_normal_log_prob
from mlnotes_zoo.train import main


@pytest.mark.parametrize("name,size", [("realnvp", "model.net.num_couplings=1"),
                                       ("glow", "model.net.depth=1")])
def test_train_py_reports_bits_per_dim_baseline_and_samples(make_cfg, tmp_path, name, size):
    metrics = main(make_cfg(f"model={name}", size, "model.net.hidden=8", "model.num_pictures=8"))
    assert {"test/loss", "test/bpd", "test/nll", "test/log_pz", "test/log_det",
            "test/gaussian_bpd"} <= set(metrics)
    assert metrics["test/loss"] == pytest.approx(metrics["test/bpd"])
    # nats per image and bits/dim are the same number in different units (D = 64, K = 17)
    assert metrics["test/bpd"] == pytest.approx(metrics["test/nll"] / (64 * math.log(2)), rel=1e-5)
    # a Gaussian fitted to the dequantized digits: far better than uniform (log2 17 = 4.09)
    assert 1.0 < metrics["test/gaussian_bpd"] < math.log2(17)
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["metrics"] == pytest.approx(metrics)
    for picture in ("samples", "samples_t1"):
        assert (tmp_path / "pictures" / f"{picture}.png").is_file()


def test_model_step_is_the_dequantized_change_of_variables():
    torch.manual_seed(0)
    lit = LitFlow(net={"name": "glow", "depth": 1, "hidden": 8}, levels=17)
    x = torch.randint(0, 17, (6, 1, 8, 8)).float() / 16
    torch.manual_seed(1)
    out = lit.model_step((x, torch.zeros(6)), "val")
    torch.manual_seed(1)
    y = (torch.round(x * 16) + torch.rand_like(x)) / 17  # same dequantization noise
    z, log_det = lit.net(y)
    log_prob = standard_normal_log_prob(z) + log_det - 64 * math.log(17)
    torch.testing.assert_close(out["bpd"], bits_per_dim(log_prob, 64).mean())
    torch.testing.assert_close(out["loss"], out["bpd"])
