"""PonderNet network: step recurrence, outputs, adaptive inference against forward()."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from mlnotes_zoo import create_model
from mlnotes_zoo.losses.pondernet import halting_distribution
from mlnotes_zoo.models.pondernet import PonderGRUStep, PonderNet


def _net(**kwargs) -> PonderNet:
    torch.manual_seed(0)
    return create_model("pondernet", **{"in_features": 6, "hidden": 8, "max_steps": 5, **kwargs})


def test_forward_is_the_gru_recurrence_written_out():
    net = _net()
    x = net.example_input(3)
    y_hat, lambdas = net(x)
    assert y_hat.shape == (5, 3, 1) and lambdas.shape == (5, 3)
    assert ((lambdas > 0) & (lambdas < 1)).all()
    step = net.step
    h = torch.zeros(3, 8)
    for n in range(5):
        # h_n = GRU(x, h_{n-1}) with torch.nn.functional ops, independent of GRUCell.forward
        w_ih, w_hh, b_ih, b_hh = (step.cell.weight_ih, step.cell.weight_hh, step.cell.bias_ih,
                                  step.cell.bias_hh)
        r_i, z_i, n_i = (x @ w_ih.T + b_ih).chunk(3, 1)
        r_h, z_h, n_h = (h @ w_hh.T + b_hh).chunk(3, 1)
        r, z = torch.sigmoid(r_i + r_h), torch.sigmoid(z_i + z_h)
        cand = torch.tanh(n_i + r * n_h)
        h = (1 - z) * cand + z * h
        torch.testing.assert_close(y_hat[n], step.output(h))
        torch.testing.assert_close(lambdas[n], torch.sigmoid(step.halting(h)).squeeze(-1))


def test_repeated_block_is_the_step_and_is_shared_across_steps():
    net = _net()
    assert PonderNet.repeated_blocks == (PonderGRUStep,)
    assert sum(isinstance(m, PonderGRUStep) for m in net.modules()) == 1
    calls = []
    net.step.register_forward_hook(lambda *args: calls.append(1))
    net(net.example_input(2))
    assert len(calls) == net.max_steps


def test_threshold_inference_halts_where_cumulative_p_first_reaches_the_threshold():
    net = _net(max_steps=8)
    x = net.example_input(64)
    y_hat, lambdas = net(x)
    p = halting_distribution(lambdas)
    for threshold in (0.3, 0.5, 0.9):
        out = net.infer(x, halting="threshold", threshold=threshold)
        reached = p.cumsum(0) >= threshold - 1e-6  # float32 sums: allow a rounding hair
        expected = reached.float().argmax(0) + 1
        assert (out.halting_step == expected).all()
        torch.testing.assert_close(out.y_hat, y_hat[expected - 1, torch.arange(64)])
        assert out.steps_run == int(expected.max())


def test_sampled_halting_steps_follow_the_halting_distribution():
    net = _net(max_steps=4)
    with torch.no_grad():  # make λ independent of the input, so all examples share p
        net.step.halting.weight.zero_()
        net.step.halting.bias.fill_(-0.5)
    x = net.example_input(1).expand(40_000, -1)
    p = halting_distribution(net(x[:1]).lambdas)[:, 0]
    out = net.infer(x, halting="sample", generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(out.halting_step - 1, minlength=4).float() / len(x)
    torch.testing.assert_close(freq, p, atol=0.01, rtol=0)


def test_inference_stops_early_when_every_example_halted():
    net = _net(max_steps=10)
    with torch.no_grad():
        net.step.halting.weight.zero_()
        net.step.halting.bias.fill_(20.0)  # λ ≈ 1: halt at the first step
    calls = []
    net.step.register_forward_hook(lambda *args: calls.append(1))
    out = net.infer(net.example_input(16))
    assert out.steps_run == 1 and len(calls) == 1 and (out.halting_step == 1).all()
    with pytest.raises(ValueError, match="halting"):
        net.infer(net.example_input(2), halting="greedy")


def test_gradients_reach_the_halting_head_from_the_loss():
    from mlnotes_zoo.losses.pondernet import ponder_loss

    net = _net()
    x = net.example_input(8)
    y = torch.randint(0, 2, (8,)).float()
    out = ponder_loss(*net(x), y, beta=0.0, lambda_p=0.2)  # reconstruction only
    out["loss"].backward()
    assert net.step.halting.weight.grad.abs().sum() > 0
    assert net.step.output.weight.grad.abs().sum() > 0


def test_custom_step_and_argument_checks():
    class Step(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(6 + 8, 8)

        def forward(self, x, h):
            h = torch.tanh(self.lin(torch.cat([x, h], -1)))
            return h, h[:, :1], torch.sigmoid(h[:, 1])

    net = PonderNet(in_features=6, hidden=8, max_steps=3, step=Step())
    y_hat, lambdas = net(net.example_input(2))
    assert y_hat.shape == (3, 2, 1) and lambdas.shape == (3, 2)
    with pytest.raises(ValueError, match="max_steps"):
        PonderNet(max_steps=0)


def test_input_encoder_is_applied_once_before_the_steps():
    net = _net(embed_dim=10)
    assert net.step.cell.input_size == 10
    x = net.example_input(3)
    y_hat, lambdas = net(x)
    # the same as running the step on the encoded input by hand
    h, e = torch.zeros(3, 8), torch.relu(net.embed[0](x))
    for n in range(net.max_steps):
        h, y_n, lam_n = net.step(e, h)
        torch.testing.assert_close(y_hat[n], y_n)
        torch.testing.assert_close(lambdas[n], lam_n)
    (y_hat.square().sum() + lambdas.square().sum()).backward()
    assert net.embed[0].weight.grad.abs().sum() > 0
