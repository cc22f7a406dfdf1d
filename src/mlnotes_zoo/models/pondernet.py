"""PonderNet (Banino, Balaguer & Blundell 2021): a network that learns how long to think, and
its objective.

The notes (``shared/notes/000``, "PonderNet") describe it as the successor of Graves' ACT
and point at labml's annotated implementation. A step function s(x, h_{n-1}) runs up to N
times; at each step n it emits a prediction ŷ_n and a halting probability λ_n, the
conditional probability of halting at step n given that it did not halt before. The
network only returns (ŷ_n, λ_n) for n = 1..N; the objective (paper, eq. 2–6) turns them into
the halting distribution, the expected reconstruction loss and the KL regulariser towards a
geometric prior:

    p_n = λ_n ∏_{j<n} (1 − λ_j),   n = 1..N,  with p_N = ∏_{j<N} (1 − λ_j) (the remainder)
    L   = Σ_n p_n · L(y, ŷ_n)  +  β · KL(p ‖ p_G(λ_p))
    p_G(n) ∝ λ_p (1 − λ_p)^{n−1},  n = 1..N  (the geometric prior truncated to N steps)

Tensors are laid out step-first, ``(N, B)``, as :class:`PonderNet` returns them.

At inference the model halts adaptively (:meth:`PonderNet.infer`): either by sampling,
halting at step n with probability λ_n (the paper's rule), or deterministically at the
first step where the cumulative halting probability Σ_{j≤n} p_j reaches a threshold.
Reads top-down: the step block, the model, then the objective.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import ClassVar, Literal, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlnotes_zoo.constraints import NonNegativeInt, PositiveInt
from mlnotes_zoo.models.shared import check_tensor
from mlnotes_zoo.registry import register_model

OBJECTIVE = ["halting_distribution", "expected_steps", "truncated_geometric",
             "reconstruction_loss", "halting_kl", "ponder_loss"]
__all__ = ["PonderGRUStep", "PonderNet", "PonderOutput", "PonderInference", *OBJECTIVE]

HALTING_RULES = ("sample", "threshold")


class PonderGRUStep(nn.Module):
    """One ponder step: h_n = GRUCell(x, h_{n-1}); ŷ_n = W_y h_n; λ_n = σ(w_λ·h_n).

    The same block (shared weights) is applied at every step, as in the paper's parity
    model: the input x is presented again each step and only the state h changes.
    """

    def __init__(self, *, in_features: int, hidden: int, out_features: int) -> None:
        super().__init__()
        self.cell = nn.GRUCell(in_features, hidden)
        self.output = nn.Linear(hidden, out_features)
        self.halting = nn.Linear(hidden, 1)

    def forward(self, x: Tensor, h: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """(x (B, D), h (B, H)) -> (h_n (B, H), ŷ_n (B, out), λ_n (B,))."""
        h = self.cell(x, h)
        return h, self.output(h), torch.sigmoid(self.halting(h)).squeeze(-1)


class PonderOutput(NamedTuple):
    y_hat: Tensor  # predictions at every step, (N, B, out_features): logits for classification
    lambdas: Tensor  # conditional halting probabilities λ_n, (N, B); λ_N is kept as computed


class PonderInference(NamedTuple):
    y_hat: Tensor  # the prediction at the halting step, (B, out_features)
    halting_step: Tensor  # the step n ∈ {1..N} each example halted at, (B,) int64
    steps_run: int  # how many step evaluations the batch needed (max over the batch)


@register_model("pondernet")
class PonderNet(nn.Module):
    """PonderNet with a GRU-cell step function (Banino et al. 2021, parity experiment).

    Args:
        in_features: size of the input vector x (the parity task: the vector length).
        hidden: GRU state size.
        out_features: size of each prediction ŷ_n (1 logit for binary parity).
        max_steps: N, the most steps the network may take (training always runs all N;
            the halting distribution gives the last step the remaining probability).
        embed_dim: when > 0, x first goes through Linear(in_features, embed_dim) + ReLU,
            once, and the GRU reads that instead of x (0: the paper's model, x straight
            into the GRU). On parity it shortens the initial plateau: |x_i|, which the
            count of non-zero entries needs, is one ReLU layer away but hard for the GRU.
        first_step_flag: append to the step's input a bit that is 1 at step 1 and 0 after
            (Graves' ACT flag, as :class:`~mlnotes_zoo.models.act.ACT` has it), so the first
            step can read the input differently from the steps that iterate on it.
        step: pass your own step block to replace the GRU one; it must map
            (x (B, in_features), h (B, hidden)) to (h, ŷ (B, out_features), λ (B,)).

    ``forward(x)`` runs all N steps and returns :class:`PonderOutput`; ``infer(x)`` halts
    early and returns :class:`PonderInference`.
    """

    # The step block is applied N times on tensors: the scale layer may checkpoint it.
    repeated_blocks: ClassVar[tuple[type[nn.Module], ...]] = (PonderGRUStep,)

    def __init__(
        self,
        *,
        in_features: PositiveInt = 16,
        hidden: PositiveInt = 64,
        out_features: PositiveInt = 1,
        max_steps: PositiveInt = 20,
        embed_dim: NonNegativeInt = 0,
        first_step_flag: bool = False,
        step: nn.Module | None = None,
    ) -> None:
        super().__init__()
        self.in_features = in_features
        self.hidden = hidden
        self.out_features = out_features
        self.max_steps = max_steps
        self.embed_dim = embed_dim
        self.first_step_flag = first_step_flag
        # Optional input encoder, applied once before the steps (not part of the step).
        self.embed = nn.Sequential(nn.Linear(in_features, embed_dim), nn.ReLU()) \
            if embed_dim > 0 else nn.Identity()
        self.step = step if step is not None else PonderGRUStep(
            in_features=(embed_dim or in_features) + int(first_step_flag), hidden=hidden,
            out_features=out_features)

    def initial_state(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0], self.hidden)  # h_0 = 0

    def step_inputs(self, e: Tensor) -> tuple[Tensor, Tensor]:
        """The step's input at step 1 and at steps 2..N: the encoded x, with the flag bit
        (1 then 0) appended when ``first_step_flag``."""
        if not self.first_step_flag:
            return e, e
        return torch.cat([e, e.new_ones(e.shape[0], 1)], -1), \
            torch.cat([e, e.new_zeros(e.shape[0], 1)], -1)

    def forward(self, x: Tensor) -> PonderOutput:
        """All N steps: ŷ (N, B, out_features) and λ (N, B) for x (B, in_features)."""
        check_tensor(x, "x", ("B", self.in_features), where="PonderNet.forward")
        h = self.initial_state(x)
        first, later = self.step_inputs(self.embed(x))
        y_hats, lambdas = [], []
        for n in range(self.max_steps):
            h, y_hat, lam = self.step(first if n == 0 else later, h)
            y_hats.append(y_hat)
            lambdas.append(lam)
        return PonderOutput(torch.stack(y_hats), torch.stack(lambdas))

    @torch.no_grad()
    def infer(
        self,
        x: Tensor,
        *,
        halting: Literal["sample", "threshold"] = "sample",
        threshold: float = 0.5,
        generator: torch.Generator | None = None,
    ) -> PonderInference:
        """Adaptive computation: stop stepping once every example in the batch has halted.

        ``halting="sample"``: at step n an example that has not halted yet halts with
        probability λ_n (so the halting step is distributed as p_n); ``"threshold"``: it
        halts at the first n with Σ_{j≤n} p_j ≥ ``threshold`` (0.5: the median of p).
        Examples that never halt stop at step N.
        """
        if halting not in HALTING_RULES:
            raise ValueError(f"halting must be one of {HALTING_RULES}, got {halting!r}")
        check_tensor(x, "x", ("B", self.in_features), where="PonderNet.infer")
        batch = x.shape[0]
        h = self.initial_state(x)
        first, later = self.step_inputs(self.embed(x))
        result = x.new_zeros(batch, self.out_features)
        halting_step = torch.zeros(batch, dtype=torch.long, device=x.device)
        not_halted_prob = x.new_ones(batch)  # ∏_{j<n} (1 − λ_j)
        cumulative = x.new_zeros(batch)  # Σ_{j≤n} p_j
        running = torch.ones(batch, dtype=torch.bool, device=x.device)
        n = 0
        for n in range(1, self.max_steps + 1):
            h, y_hat, lam = self.step(first if n == 1 else later, h)
            if halting == "sample":
                u = torch.rand(batch, generator=generator, device=x.device, dtype=x.dtype)
                halt_now = u < lam
            else:
                cumulative = cumulative + lam * not_halted_prob  # + p_n
                not_halted_prob = not_halted_prob * (1 - lam)
                halt_now = cumulative >= threshold
            if n == self.max_steps:
                halt_now = torch.ones_like(halt_now)
            newly = running & halt_now
            result[newly] = y_hat[newly]
            halting_step[newly] = n
            running &= ~newly
            if not running.any():
                break
        return PonderInference(result, halting_step, n)

    def example_input(self, batch_size: int = 2) -> Tensor:
        """A batch of parity vectors with entries in {−1, 0, 1}."""
        return torch.randint(-1, 2, (batch_size, self.in_features)).float()


# -- the objective: halting distribution, expected loss, KL to the geometric prior ------
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
