"""Continuous normalizing flow (FFJORD, Grathwohl et al. 2019; Chen et al. 2018 §4).

Notes ``004`` ("Density modeling"): when the change of z is instantaneous the change of
variables needs no determinant, only a trace. For dz/dt = f(t, z) carrying a data point
x = z(0) to z(T),

    d log p(z(t))/dt = −tr(∂f/∂z(t))          (instantaneous change of variables)
    log p(x) = log N(z(T); 0, I) + ∫_0^T tr(∂f/∂z(t)) dt

and the integral is the log-determinant of the flow map, log |det ∂z(T)/∂x| (Liouville).
The trace is exact (one backward pass per dimension) in low dimension and Hutchinson's
estimate εᵀ(∂f/∂z)ε (one vector-Jacobian product, E[εεᵀ] = I) otherwise, with one probe ε
per example drawn once per solve, so the integrand is one smooth function the adaptive
solver can integrate.

Reads top-down: the time-conditioned layer, the dynamics (velocity and trace), :class:`CNF`,
then the objective.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Annotated, Literal, NamedTuple

import torch
from torch import Tensor, nn

from mlnotes_zoo.constraints import Field, PositiveFloat, PositiveInt
from mlnotes_zoo.models.ode.solve import (
    CountedDynamics,
    Solver,
    SolverOptions,
    Tolerance,
    solve,
    time_tensor,
)
from mlnotes_zoo.models.shared import check_tensor
from mlnotes_zoo.registry import register_model

__all__ = ["ConcatSquashLinear", "CNFDynamics", "CNF", "CNFOutput", "exact_trace",
           "hutchinson_trace", "cnf_log_likelihood", "standard_normal_log_density"]


class ConcatSquashLinear(nn.Module):
    """FFJORD's time-conditioned layer: (W x + b) ⊙ σ(W_g t + b_g) + w_b t."""

    def __init__(self, in_features: int, out_features: int) -> None:
        super().__init__()
        self.linear = nn.Linear(in_features, out_features)
        self.gate = nn.Linear(1, out_features)
        self.time_bias = nn.Linear(1, out_features, bias=False)

    def forward(self, t: Tensor, x: Tensor) -> Tensor:
        time = time_tensor(t, x)  # (B, 1)
        return self.linear(x) * torch.sigmoid(self.gate(time)) + self.time_bias(time)


def exact_trace(velocity: Tensor, z: Tensor, *, create_graph: bool) -> Tensor:
    """tr(∂f/∂z) per example, (B,): one backward pass per dimension, Σ_i ∂f_i/∂z_i.

    Exact because examples do not interact: ∂(Σ_b f_bi)/∂z_b = ∂f_bi/∂z_b.
    """
    diagonal = [torch.autograd.grad(velocity[:, i].sum(), z, create_graph=create_graph,
                                    retain_graph=True)[0][:, i]
                for i in range(z.shape[1])]
    return torch.stack(diagonal, dim=1).sum(dim=1)


def hutchinson_trace(velocity: Tensor, z: Tensor, probe: Tensor, *,
                     create_graph: bool) -> Tensor:
    """Hutchinson's unbiased estimate εᵀ (∂f/∂z) ε per example, (B,), for a probe ε (B, D)
    with E[εεᵀ] = I (Rademacher or standard normal)."""
    vjp = torch.autograd.grad(velocity, z, grad_outputs=probe, create_graph=create_graph,
                              retain_graph=True)[0]  # εᵀ ∂f/∂z, (B, D)
    return (vjp * probe).sum(dim=1)


class CNFDynamics(nn.Module):
    """The augmented state (z, ∫tr) of FFJORD: d/dt (z, ℓ) = (f(t, z), tr ∂f/∂z).

    ``probe`` (B, D) is set before each solve when the trace is estimated; None means the
    exact trace.
    """

    def __init__(self, *, dim: int, hidden: int, num_layers: int) -> None:
        super().__init__()
        widths = [dim] + [hidden] * (num_layers - 1) + [dim]
        self.layers = nn.ModuleList(ConcatSquashLinear(a, b)
                                    for a, b in zip(widths[:-1], widths[1:], strict=True))
        self.probe: Tensor | None = None

    def velocity(self, t: Tensor, z: Tensor) -> Tensor:
        """f(t, z), (B, D): softplus between the layers (smooth, so the trace is too)."""
        h = z
        for i, layer in enumerate(self.layers):
            h = layer(t, h)
            if i < len(self.layers) - 1:
                h = nn.functional.softplus(h)
        return h

    def forward(self, t: Tensor, state: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        z, _ = state
        # The trace needs ∂f/∂z even when the solve runs without a graph (evaluation, the
        # adjoint's forward pass); a graph of the trace itself only when gradients flow.
        create_graph = torch.is_grad_enabled()
        with torch.enable_grad():
            if not z.requires_grad:
                z = z.detach().requires_grad_(True)
            velocity = self.velocity(t, z)
            if self.probe is None:
                trace = exact_trace(velocity, z, create_graph=create_graph)
            else:
                trace = hutchinson_trace(velocity, z, self.probe, create_graph=create_graph)
        if not create_graph:
            velocity, trace = velocity.detach(), trace.detach()
        return velocity, trace


class _Velocity(nn.Module):
    """f(t, z) alone: the sampler's backward solve needs no trace."""

    def __init__(self, dynamics: CNFDynamics) -> None:
        super().__init__()
        self.dynamics = dynamics

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return self.dynamics.velocity(t, z)


class CNFOutput(NamedTuple):
    z: Tensor  # z(T), (B, D)
    log_det: Tensor  # ∫_0^T tr(∂f/∂z) dt = log |det ∂z(T)/∂x|, (B,)


@register_model("cnf")
class CNF(nn.Module):
    """FFJORD: points x (B, D) -> (z(T), log|det ∂z(T)/∂x|) by one ODE solve.

    Args:
        dim: D, the dimension of the data.
        hidden, num_layers: width and depth of the dynamics network (ConcatSquash layers).
        trace: ``"exact"``, ``"hutchinson"``, or ``"auto"`` (exact when D ≤
            ``exact_trace_max_dim``).
        exact_trace_max_dim: the largest D for which ``"auto"`` computes the exact trace.
        probe: distribution of Hutchinson's probe ε, ``"rademacher"`` (±1, the lower
            variance) or ``"gaussian"``.
        solver, rtol, atol, adjoint, step_size: how the flow is integrated
            (:class:`~mlnotes_zoo.models.ode.solve.SolverOptions`).
        integration_time: T.
    """

    def __init__(
        self,
        *,
        dim: PositiveInt = 2,
        hidden: PositiveInt = 64,
        num_layers: Annotated[int, Field(ge=2, description="layers of the dynamics")] = 3,
        trace: Literal["auto", "exact", "hutchinson"] = "auto",
        exact_trace_max_dim: PositiveInt = 8,
        probe: Literal["rademacher", "gaussian"] = "rademacher",
        solver: Solver = "dopri5",
        rtol: Tolerance = 1e-3,
        atol: Tolerance = 1e-3,
        adjoint: bool = False,
        step_size: PositiveFloat | None = None,
        integration_time: PositiveFloat = 1.0,
    ) -> None:
        super().__init__()
        self.dim = dim
        self.exact_trace = trace == "exact" or (trace == "auto" and dim <= exact_trace_max_dim)
        self.probe = probe
        self.solver_options = SolverOptions(solver, rtol, atol, adjoint, step_size)
        self.integration_time = integration_time
        self.dynamics = CountedDynamics(CNFDynamics(dim=dim, hidden=hidden,
                                                    num_layers=num_layers))

    @property
    def nfe(self) -> int:
        return self.dynamics.nfe

    def draw_probe(self, like: Tensor) -> Tensor:
        """One probe per example for this solve: Rademacher ±1 or N(0, I), (B, D)."""
        if self.probe == "gaussian":
            return torch.randn_like(like)
        return torch.randint(0, 2, like.shape, device=like.device).to(like) * 2 - 1

    def forward(self, x: Tensor) -> CNFOutput:
        check_tensor(x, "x", ("B", self.dim), where="CNF.forward")
        self.dynamics.func.probe = None if self.exact_trace else self.draw_probe(x)
        times = torch.tensor([0.0, self.integration_time])
        zero = torch.zeros(x.shape[0], dtype=x.dtype, device=x.device)
        z, log_det = solve(self.dynamics, (x, zero), times, self.solver_options)
        self.dynamics.func.probe = None
        return CNFOutput(z[-1], log_det[-1])

    def log_prob(self, x: Tensor) -> Tensor:
        """log p(x) in nats, (B,) (an unbiased estimate under Hutchinson's trace)."""
        return cnf_log_likelihood(*self(x))

    def inverse(self, z: Tensor) -> Tensor:
        """x = z(0) for z(T) = ``z``: the flow solved backwards from T to 0, (B, D)."""
        times = torch.tensor([self.integration_time, 0.0])
        options = dataclasses.replace(self.solver_options, adjoint=False)
        return solve(_Velocity(self.dynamics.func), z, times, options)[-1]

    @torch.no_grad()
    def sample(self, num_samples: int) -> Tensor:
        """x = F⁻¹(z), z ~ N(0, I): (num_samples, D)."""
        device = next(self.parameters()).device
        return self.inverse(torch.randn(num_samples, self.dim, device=device))

    def example_input(self, batch_size: int = 2) -> Tensor:
        return torch.randn(batch_size, self.dim)


# -- the objective ----------------------------------------------------------------------------
_LOG_2PI = math.log(2 * math.pi)


def standard_normal_log_density(z: Tensor) -> Tensor:
    """log N(z; 0, I) summed over the last dimension: −½ (D log 2π + |z|²)."""
    return -0.5 * (z.shape[-1] * _LOG_2PI + z.pow(2).sum(-1))


def cnf_log_likelihood(z: Tensor, log_det: Tensor) -> Tensor:
    """log p(x) = log N(z(T); 0, I) + ∫ tr(∂f/∂z) dt, per example (B,)."""
    return standard_normal_log_density(z) + log_det
