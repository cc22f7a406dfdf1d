"""The PonderNet objective (Banino et al. 2021, eq. 2–6): halting distribution, expected
reconstruction loss and the KL regulariser towards a geometric prior.

    p_n = λ_n ∏_{j<n} (1 − λ_j),   n = 1..N,  with p_N = ∏_{j<N} (1 − λ_j) (the remainder)
    L   = Σ_n p_n · L(y, ŷ_n)  +  β · KL(p ‖ p_G(λ_p))
    p_G(n) ∝ λ_p (1 − λ_p)^{n−1},  n = 1..N  (the geometric prior truncated to N steps)

Tensors are laid out step-first, ``(N, B)``, as :class:`~mlnotes_zoo.models.pondernet.PonderNet`
returns them.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "halting_distribution",
    "expected_steps",
    "truncated_geometric",
    "reconstruction_loss",
    "halting_kl",
    "ponder_loss",
]


def halting_distribution(lambdas: Tensor, *, remainder_to_last: bool = True) -> Tensor:
    """p (N, B) from the conditional halting probabilities λ (N, B).

    With ``remainder_to_last`` the probability of never halting in N steps is given to the
    last step (λ_N := 1), so p sums to 1; without it Σ_n p_n = 1 − ∏_n (1 − λ_n) ≤ 1.
    """
    if remainder_to_last:
        lambdas = torch.cat([lambdas[:-1], torch.ones_like(lambdas[-1:])])
    # ∏_{j<n} (1 − λ_j): the probability of not having halted before step n (exclusive cumprod)
    not_halted = torch.cumprod(
        torch.cat([torch.ones_like(lambdas[:1]), 1 - lambdas[:-1]]), dim=0)
    # p_n = λ_n ∏_{j<n} (1 − λ_j)
    return lambdas * not_halted


def expected_steps(halting_probs: Tensor) -> Tensor:
    """E_p[n] = Σ_n n·p_n per example, (B,) for p (N, B)."""
    steps = torch.arange(1, halting_probs.shape[0] + 1, dtype=halting_probs.dtype,
                         device=halting_probs.device)
    return (steps.unsqueeze(-1) * halting_probs).sum(0)


def truncated_geometric(lambda_p: float, max_steps: int, *, device=None,
                        dtype=torch.float32) -> Tensor:
    """The prior p_G (N,): p_G(n) = λ_p (1 − λ_p)^{n−1}, renormalised over n = 1..N."""
    if not 0 < lambda_p <= 1:
        raise ValueError(f"lambda_p must be in (0, 1], got {lambda_p}")
    k = torch.arange(max_steps, device=device, dtype=torch.float64)  # k = n − 1
    # p_G(n) = λ_p (1 − λ_p)^{n−1}, then divided by its sum over n ≤ N (the truncation)
    prior = lambda_p * (1 - lambda_p) ** k
    return (prior / prior.sum()).to(dtype)


def reconstruction_loss(
    halting_probs: Tensor,
    y_hat: Tensor,
    y: Tensor,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> Tensor:
    """Σ_n p_n · L(y, ŷ_n) per example, (B,).

    ``y_hat`` is (N, B, ...) and ``y`` (B, ...); ``loss_fn(y_hat_n, y)`` must return one value
    per example without reduction. Default: binary cross-entropy on logits with a (B,) target
    in {0, 1} and ŷ of shape (N, B) or (N, B, 1).
    """
    if loss_fn is None:
        loss_fn = _bce_per_example
    per_step = torch.stack([loss_fn(y_hat[n], y) for n in range(y_hat.shape[0])])  # (N, B)
    # Σ_n p_n · L(y, ŷ_n)
    return (halting_probs * per_step).sum(0)


def _bce_per_example(logits: Tensor, y: Tensor) -> Tensor:
    logits = logits.reshape(y.shape)
    return F.binary_cross_entropy_with_logits(logits, y.to(logits.dtype), reduction="none")


def halting_kl(halting_probs: Tensor, prior: Tensor, *, eps: float = 1e-12) -> Tensor:
    """KL(p ‖ p_G) = Σ_n p_n (log p_n − log p_G(n)) per example, (B,); 0·log 0 := 0."""
    p = halting_probs
    prior = prior.to(p.dtype).unsqueeze(-1)  # (N, 1)
    # KL(p ‖ p_G) = Σ_n p_n log(p_n / p_G(n))
    terms = p * (torch.log(p.clamp_min(eps)) - torch.log(prior))
    return torch.where(p > 0, terms, torch.zeros_like(terms)).sum(0)


def ponder_loss(
    y_hat: Tensor,
    lambdas: Tensor,
    y: Tensor,
    *,
    beta: float,
    lambda_p: float,
    loss_fn: Callable[[Tensor, Tensor], Tensor] | None = None,
) -> dict[str, Tensor]:
    """Batch means of L = L_rec + β·L_reg and its parts, and p itself (N, B)."""
    p = halting_distribution(lambdas)
    prior = truncated_geometric(lambda_p, lambdas.shape[0], device=lambdas.device,
                                dtype=lambdas.dtype)
    rec = reconstruction_loss(p, y_hat, y, loss_fn).mean()
    kl = halting_kl(p, prior).mean()
    # L = Σ_n p_n L(y, ŷ_n) + β · KL(p ‖ p_G)
    return {"loss": rec + beta * kl, "reconstruction": rec, "kl": kl, "halting_probs": p}
