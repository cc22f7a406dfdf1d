"""PonderNet network: step recurrence, outputs, adaptive inference against forward().

The PonderNet objective against direct computations and torch.distributions.
"""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.distributions import Categorical, Geometric, kl_divergence

from mlnotes_zoo import create_model
from mlnotes_zoo.models.pondernet import (
    PonderGRUStep,
    PonderNet,
    expected_steps,
    halting_distribution,
    halting_kl,
    ponder_loss,
    reconstruction_loss,
    truncated_geometric,
)


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
    from mlnotes_zoo.models.pondernet import ponder_loss

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
    with pytest.raises(ValueError, match="max_steps"):  # the range is in the signature
        create_model("pondernet", max_steps=0)


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


@pytest.mark.parametrize("embed_dim", [0, 10])
def test_first_step_flag_is_one_at_the_first_step_only(embed_dim):
    net = _net(embed_dim=embed_dim, first_step_flag=True, max_steps=6)
    width = embed_dim or 6
    assert net.step.cell.input_size == width + 1
    x = net.example_input(4)
    y_hat, lambdas = net(x)
    e = torch.relu(net.embed[0](x)) if embed_dim else x
    h = torch.zeros(4, 8)
    for n in range(net.max_steps):  # by hand: [e, 1] at step 1, [e, 0] after
        flag = torch.full((4, 1), 1.0 if n == 0 else 0.0)
        h, y_n, lam_n = net.step(torch.cat([e, flag], -1), h)
        torch.testing.assert_close(y_hat[n], y_n)
        torch.testing.assert_close(lambdas[n], lam_n)
    # adaptive inference runs the same steps: threshold halting picks forward()'s prediction
    p = halting_distribution(lambdas)
    out = net.infer(x, halting="threshold", threshold=0.5)
    expected = (p.cumsum(0) >= 0.5 - 1e-6).float().argmax(0) + 1
    assert (out.halting_step == expected).all()
    torch.testing.assert_close(out.y_hat, y_hat[expected - 1, torch.arange(4)])


# -- the objective ------------------------------------------------------------------------
def _lambdas(n_steps=7, batch=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n_steps, batch, generator=g, dtype=torch.float64)


def test_halting_distribution_matches_the_product_formula_step_by_step():
    lam = _lambdas()
    p = halting_distribution(lam, remainder_to_last=False)
    for n in range(lam.shape[0]):
        # p_n = λ_n ∏_{j<n} (1 − λ_j), written out with a loop
        expected = lam[n].clone()
        for j in range(n):
            expected = expected * (1 - lam[j])
        torch.testing.assert_close(p[n], expected)


def test_p_sums_to_at_most_one_and_to_one_with_the_remainder_on_the_last_step():
    lam = _lambdas(n_steps=6, batch=50)
    p_open = halting_distribution(lam, remainder_to_last=False)
    p = halting_distribution(lam)
    assert (p_open.sum(0) <= 1 + 1e-12).all() and (p_open >= 0).all()
    # the mass lost in the open form is the probability of never halting: ∏_n (1 − λ_n)
    torch.testing.assert_close(p_open.sum(0), 1 - (1 - lam).prod(0))
    torch.testing.assert_close(p.sum(0), torch.ones(50, dtype=torch.float64))
    torch.testing.assert_close(p[:-1], p_open[:-1])  # only the last step changes
    torch.testing.assert_close(p[-1], (1 - lam[:-1]).prod(0))


def test_halting_distribution_equals_sampling_the_sequential_rule():
    # Halting at step n with probability λ_n, given not halted before, is distributed as p.
    lam = torch.tensor([[0.3], [0.5], [0.2], [0.9]], dtype=torch.float64)
    g = torch.Generator().manual_seed(0)
    u = torch.rand(200_000, 4, generator=g, dtype=torch.float64)
    lam_last_one = torch.cat([lam[:-1, 0], torch.ones(1, dtype=torch.float64)])
    halted = u < lam_last_one
    first = halted.float().argmax(1)
    freq = torch.bincount(first, minlength=4).double() / len(first)
    torch.testing.assert_close(freq, halting_distribution(lam)[:, 0], atol=4e-3, rtol=0)


def test_truncated_geometric_is_torch_geometric_renormalised():
    prior = truncated_geometric(0.2, 10, dtype=torch.float64)
    # torch's Geometric counts failures k = n − 1 before the first success
    direct = Geometric(probs=torch.tensor(0.2, dtype=torch.float64)).log_prob(
        torch.arange(10, dtype=torch.float64)).exp()
    torch.testing.assert_close(prior, direct / direct.sum())
    assert truncated_geometric(1.0, 4).tolist() == [1.0, 0.0, 0.0, 0.0]
    with pytest.raises(ValueError, match="lambda_p"):
        truncated_geometric(0.0, 4)


def test_kl_term_equals_torch_distributions():
    p = halting_distribution(_lambdas(n_steps=8, batch=6))
    prior = truncated_geometric(0.3, 8, dtype=torch.float64)
    expected = kl_divergence(Categorical(probs=p.T), Categorical(probs=prior.expand(6, 8)))
    torch.testing.assert_close(halting_kl(p, prior), expected)
    # KL(p ‖ p) = 0 and zeros in p contribute nothing
    one_hot = torch.zeros(8, 1, dtype=torch.float64)
    one_hot[2] = 1
    torch.testing.assert_close(halting_kl(one_hot, prior),
                               -torch.log(prior[2:3]))


def test_reconstruction_loss_and_total_against_a_direct_computation():
    torch.manual_seed(0)
    n_steps, batch = 5, 4
    lam = torch.rand(n_steps, batch)
    y_hat = torch.randn(n_steps, batch, 1)
    y = torch.tensor([0.0, 1.0, 1.0, 0.0])
    p = halting_distribution(lam)
    rec = reconstruction_loss(p, y_hat, y)
    direct = torch.zeros(batch)
    for n in range(n_steps):
        for b in range(batch):
            prob = torch.sigmoid(y_hat[n, b, 0])
            bce = -(y[b] * torch.log(prob) + (1 - y[b]) * torch.log(1 - prob))
            direct[b] += p[n, b] * bce
    torch.testing.assert_close(rec, direct)
    out = ponder_loss(y_hat, lam, y, beta=0.1, lambda_p=0.25)
    kl = halting_kl(p, truncated_geometric(0.25, n_steps))
    torch.testing.assert_close(out["loss"], direct.mean() + 0.1 * kl.mean())
    torch.testing.assert_close(out["halting_probs"], p)
    torch.testing.assert_close(expected_steps(p), (torch.arange(1.0, 6).unsqueeze(1) * p).sum(0))


def test_gradients_reach_every_lambda_through_both_terms():
    torch.manual_seed(0)
    logits = torch.randn(6, 3, requires_grad=True)
    lam = torch.sigmoid(logits)
    y_hat = torch.randn(6, 3, 1)
    y = torch.tensor([1.0, 0.0, 1.0])
    for beta, part in ((0.0, "reconstruction"), (1.0, "kl")):
        logits.grad = None
        out = ponder_loss(y_hat, torch.sigmoid(logits), y, beta=beta, lambda_p=0.2)
        out[part].backward()
        # λ_N is replaced by 1 (the remainder), so steps 1..N−1 carry the gradient
        assert torch.isfinite(logits.grad).all()
        assert (logits.grad[:-1].abs() > 0).all(), part
        assert (logits.grad[-1] == 0).all()
    # and the gradient is the right one (autograd vs finite differences)
    assert torch.autograd.gradcheck(
        lambda lg: ponder_loss(y_hat.double(), torch.sigmoid(lg), y.double(), beta=0.5,
                               lambda_p=0.2)["loss"],
        (lam.detach().double().logit().requires_grad_(),))
