"""PonderNet (Banino, Balaguer & Blundell 2021): a network that learns how long to think.

The notes (``shared/notes/000``, "PonderNet") describe it as the successor of Graves' ACT
and point at labml's annotated implementation. A step function s(x, h_{n-1}) runs up to N
times; at each step n it emits a prediction ŷ_n and a halting probability λ_n, the
conditional probability of halting at step n given that it did not halt before. The
network only returns (ŷ_n, λ_n) for n = 1..N; :mod:`mlnotes_zoo.losses.pondernet` turns
them into the halting distribution p_n = λ_n ∏_{j<n}(1 − λ_j) and the loss.

At inference the model halts adaptively (:meth:`PonderNet.infer`): either by sampling,
halting at step n with probability λ_n (the paper's rule), or deterministically at the
first step where the cumulative halting probability Σ_{j≤n} p_j reaches a threshold.
Reads top-down: the step block, then the model.
"""

from __future__ import annotations

from typing import ClassVar, Literal, NamedTuple

import torch
from torch import Tensor, nn

from mlnotes_zoo.models.shared import check_tensor
from mlnotes_zoo.registry import register_model

__all__ = ["PonderGRUStep", "PonderNet", "PonderOutput", "PonderInference"]

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
        in_features: int = 16,
        hidden: int = 64,
        out_features: int = 1,
        max_steps: int = 20,
        embed_dim: int = 0,
        step: nn.Module | None = None,
    ) -> None:
        super().__init__()
        if max_steps < 1:
            raise ValueError(f"max_steps must be >= 1, got {max_steps}")
        self.in_features = in_features
        self.hidden = hidden
        self.out_features = out_features
        self.max_steps = max_steps
        self.embed_dim = embed_dim
        # Optional input encoder, applied once before the steps (not part of the step).
        self.embed = nn.Sequential(nn.Linear(in_features, embed_dim), nn.ReLU()) \
            if embed_dim > 0 else nn.Identity()
        self.step = step if step is not None else PonderGRUStep(
            in_features=embed_dim or in_features, hidden=hidden, out_features=out_features)

    def initial_state(self, x: Tensor) -> Tensor:
        return x.new_zeros(x.shape[0], self.hidden)  # h_0 = 0

    def forward(self, x: Tensor) -> PonderOutput:
        """All N steps: ŷ (N, B, out_features) and λ (N, B) for x (B, in_features)."""
        check_tensor(x, "x", ("B", self.in_features), where="PonderNet.forward")
        h = self.initial_state(x)
        x = self.embed(x)
        y_hats, lambdas = [], []
        for _ in range(self.max_steps):
            h, y_hat, lam = self.step(x, h)
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
        x = self.embed(x)
        result = x.new_zeros(batch, self.out_features)
        halting_step = torch.zeros(batch, dtype=torch.long, device=x.device)
        not_halted_prob = x.new_ones(batch)  # ∏_{j<n} (1 − λ_j)
        cumulative = x.new_zeros(batch)  # Σ_{j≤n} p_j
        running = torch.ones(batch, dtype=torch.bool, device=x.device)
        n = 0
        for n in range(1, self.max_steps + 1):
            h, y_hat, lam = self.step(x, h)
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
