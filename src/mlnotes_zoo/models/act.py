"""Adaptive Computation Time (Graves 2016): an RNN that decides how many steps to ponder each
input, and its objective.

``shared/notes/000`` calls PonderNet "an improvement of Alex Graves' ACT"; this is ACT itself,
on the same parity data. At step n the cell updates its state s_n from the input (a flag bit
marks the first step) and emits an output y_n and a halting unit h_n = σ(W_h s_n + b_h).
The pondering stops at

    N = min{n : Σ_{i≤n} h_i ≥ 1 − ε}        (N ≤ max_steps: the last step always halts)
    R = 1 − Σ_{n<N} h_n                       (the remainder)
    p_n = h_n for n < N,   p_N = R            (Σ_n p_n = 1)

and the output and state are the p-weighted means y = Σ_n p_n y_n, s = Σ_n p_n s_n. The ponder
cost ρ = N + R is added to the task loss with weight τ (:func:`act_loss`). N is piecewise
constant, so the gradient of ρ reaches the halting units only through R: ∂ρ/∂h_n = −1 for
n < N and 0 for h_N (Graves, eq. 12), which pushes the sum before the last step down, i.e.
fewer steps.

Reads top-down: the model, then the objective (:func:`act_halting`, :func:`act_loss`).
"""

from __future__ import annotations

from typing import Annotated, NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlnotes_zoo.constraints import Field, NonNegativeInt, PositiveInt
from mlnotes_zoo.models.shared import check_tensor
from mlnotes_zoo.registry import register_model

OBJECTIVE = ["act_halting", "act_loss"]
__all__ = ["ACT", "ACTOutput", "ACTHalting", *OBJECTIVE]

Epsilon = Annotated[float, Field(gt=0, lt=1, description="the halting threshold ε: halt at "
                                                         "Σ h ≥ 1 − ε")]


class ACTHalting(NamedTuple):
    halting_probs: Tensor  # p (n, B): h_n before N, R at N, 0 after
    steps: Tensor  # N (B,) int64, in 1..n
    remainder: Tensor  # R (B,)


class ACTOutput(NamedTuple):
    y_hat: Tensor  # Σ_n p_n y_n, (B, out_features): logits for classification
    ponder_cost: Tensor  # ρ = N + R, (B,)
    halting_probs: Tensor  # p (max_steps, B), zeros after N
    state: Tensor  # Σ_n p_n s_n, (B, hidden): the state a next input would start from
    steps: Tensor  # N (B,) int64


@register_model("act")
class ACT(nn.Module):
    """ACT with a GRU cell over one input vector (Graves 2016, parity experiment).

    Args:
        in_features: size of the input x (the parity vector length).
        hidden: GRU state size.
        out_features: size of each output y_n (1 logit for parity).
        max_steps: the most steps an input may take (M in the paper; N ≤ M).
        epsilon: ε of the halting rule Σ_{i≤n} h_i ≥ 1 − ε (so one step can suffice).
        embed_dim: when > 0, x first goes through Linear(in_features, embed_dim) + ReLU, once
            (as PonderNet's ``embed_dim``); 0: x straight into the cell.
        halting_bias: initial b_h of the halting unit (Graves initialises it to 1: h ≈ 0.73,
            about two steps at first).

    ``forward(x)`` → :class:`ACTOutput`. Steps stop once every example in the batch halted.
    """

    def __init__(
        self,
        *,
        in_features: PositiveInt = 16,
        hidden: PositiveInt = 64,
        out_features: PositiveInt = 1,
        max_steps: PositiveInt = 20,
        epsilon: Epsilon = 0.01,
        embed_dim: NonNegativeInt = 128,
        halting_bias: float = 1.0,
    ) -> None:
        super().__init__()
        self.in_features, self.hidden, self.out_features = in_features, hidden, out_features
        self.max_steps, self.epsilon = max_steps, epsilon
        self.embed = nn.Sequential(nn.Linear(in_features, embed_dim), nn.ReLU()) \
            if embed_dim > 0 else nn.Identity()
        # the input is presented at every step with a flag: 1 at the first step, 0 after
        self.cell = nn.GRUCell((embed_dim or in_features) + 1, hidden)
        self.output = nn.Linear(hidden, out_features)
        self.halting = nn.Linear(hidden, 1)
        nn.init.constant_(self.halting.bias, halting_bias)

    def forward(self, x: Tensor) -> ACTOutput:
        check_tensor(x, "x", ("B", self.in_features), where="ACT.forward")
        b = x.shape[0]
        e = self.embed(x)
        state = x.new_zeros(b, self.hidden)
        flag = x.new_ones(b, 1)
        states, outputs, halts = [], [], []
        total = x.new_zeros(b)
        for _ in range(self.max_steps):
            state = self.cell(torch.cat([e, flag], dim=-1), state)  # s_n = GRU([x; δ_n=1], s_{n−1})
            flag = torch.zeros_like(flag)
            h = torch.sigmoid(self.halting(state)).squeeze(-1)  # h_n = σ(W_h s_n + b_h)
            states.append(state)
            outputs.append(self.output(state))
            halts.append(h)
            total = total + h.detach()
            if bool((total >= 1 - self.epsilon).all()):
                break  # every example has halted: later steps would get p = 0
        halting = act_halting(torch.stack(halts), epsilon=self.epsilon)
        p = halting.halting_probs  # (n, B)
        y_hat = (p[..., None] * torch.stack(outputs)).sum(0)  # y = Σ_n p_n y_n
        mean_state = (p[..., None] * torch.stack(states)).sum(0)  # s = Σ_n p_n s_n
        ponder_cost = halting.steps.to(p.dtype) + halting.remainder  # ρ = N + R
        padded = F.pad(p, (0, 0, 0, self.max_steps - p.shape[0]))  # (max_steps, B)
        return ACTOutput(y_hat, ponder_cost, padded, mean_state, halting.steps)

    def example_input(self, batch_size: int = 2) -> Tensor:
        """A batch of parity vectors with entries in {−1, 0, 1}."""
        return torch.randint(-1, 2, (batch_size, self.in_features)).float()


# -- the objective: the halting distribution and the ponder cost ------------------------------
def act_halting(halting: Tensor, *, epsilon: float) -> ACTHalting:
    """N, R and p from the halting units h (n, B) of steps 1..n.

    N = min{n : Σ_{i≤n} h_i ≥ 1 − ε}, and the last given step when none reaches it (the
    network passes its max_steps steps then). R = 1 − Σ_{n<N} h_n; p_n = h_n (n < N),
    p_N = R, 0 after.
    """
    n_steps = halting.shape[0]
    cumulative = halting.cumsum(0)  # Σ_{i≤n} h_i
    reached = cumulative >= 1 - epsilon
    reached[-1] = True  # the last step always halts (N ≤ max_steps)
    steps = reached.float().argmax(0) + 1  # N: the first step that reached 1 − ε
    before = torch.cat([torch.zeros_like(cumulative[:1]), cumulative[:-1]])  # Σ_{i<n} h_i
    remainder = 1 - before.gather(0, (steps - 1)[None]).squeeze(0)  # R = 1 − Σ_{n<N} h_n
    n = torch.arange(1, n_steps + 1, device=halting.device)[:, None]  # (n, 1)
    p = torch.where(n < steps, halting, torch.where(n == steps, remainder, 0.0))
    return ACTHalting(p, steps, remainder)


def act_loss(y_hat: Tensor, y: Tensor, ponder_cost: Tensor, *, tau: float) -> dict[str, Tensor]:
    """Batch means of L = BCE(y, ŷ) + τ·ρ (ρ = N + R) and its parts; ŷ (B,) or (B, 1) logits,
    y (B,) in {0, 1}."""
    task = F.binary_cross_entropy_with_logits(y_hat.reshape(y.shape), y.to(y_hat.dtype))
    ponder = ponder_cost.mean()
    return {"loss": task + tau * ponder, "task": task, "ponder_cost": ponder}
