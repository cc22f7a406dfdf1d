"""The PonderNet objective against direct computations and torch.distributions."""

from __future__ import annotations

import pytest
import torch
from torch.distributions import Categorical, Geometric, kl_divergence

from mlnotes_zoo.losses.pondernet import (
    expected_steps,
    halting_distribution,
    halting_kl,
    ponder_loss,
    reconstruction_loss,
    truncated_geometric,
)


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
