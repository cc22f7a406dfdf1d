"""What every neural-ODE network shares: the call into torchdiffeq and the count of function
evaluations (NFE).

The solver is torchdiffeq's (Chen et al. 2018's reference library): ``odeint``
back-propagates through the solver's operations (memory grows with the number of steps),
``odeint_adjoint`` solves the adjoint ODE backwards in time instead (notes ``004``, "Neural
ordinary differential equations": a(t) = ∂L/∂z(t) obeys da/dt = −aᵀ ∂f/∂z, and ∂L/∂θ =
−∫ aᵀ ∂f/∂θ dt; memory constant in the number of steps, at the price of a second solve).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Literal

from torch import Tensor, nn
from torchdiffeq import odeint, odeint_adjoint

from mlnotes_zoo.constraints import Field

__all__ = ["Solver", "SolverOptions", "CountedDynamics", "solve", "ADAPTIVE", "FIXED_STEP",
           "Tolerance", "time_tensor"]

ADAPTIVE = ("dopri5", "bosh3", "adaptive_heun", "dopri8")  # error-controlled step size
FIXED_STEP = ("euler", "midpoint", "rk4")  # step_size (or one step per output interval)
Solver = Literal["dopri5", "bosh3", "adaptive_heun", "dopri8", "euler", "midpoint", "rk4"]
Tolerance = Annotated[float, Field(gt=0, lt=1, description="solver tolerance")]


@dataclass(frozen=True)
class SolverOptions:
    """How to integrate: the config keys ``solver``, ``rtol``, ``atol``, ``adjoint``,
    ``step_size`` of every ODE network, in one place.

    ``step_size`` is the fixed step of euler/midpoint/rk4 (None: one step per interval of the
    requested times); adaptive solvers ignore it and keep the local error below
    ``atol + rtol·|z|`` instead.
    """

    solver: str = "dopri5"
    rtol: float = 1e-3
    atol: float = 1e-3
    adjoint: bool = False
    step_size: float | None = None


class CountedDynamics(nn.Module):
    """Wraps a dynamics module f(t, z) and counts its evaluations (``nfe``).

    The count is a plain attribute (not in the state dict): a LightningModule reads it
    before and after a solve, and after the backward pass (the adjoint solve calls f again).
    """

    def __init__(self, func: nn.Module) -> None:
        super().__init__()
        self.func = func
        self.nfe = 0

    def forward(self, t: Tensor, state):
        self.nfe += 1
        return self.func(t, state)


def solve(dynamics: nn.Module, z0, times: Tensor, options: SolverOptions):
    """z(t) at each of ``times`` (T,), starting from ``z0`` at ``times[0]``: a tensor
    (T, *z0.shape), or a tuple of them when ``z0`` is a tuple of tensors.

    ``times`` may decrease (integration backwards in time, as the CNF's sampler and the
    ODE-RNN encoder do).
    """
    method_options = ({"step_size": options.step_size}
                      if options.solver in FIXED_STEP and options.step_size else {})
    kwargs = dict(rtol=options.rtol, atol=options.atol, method=options.solver,
                  options=method_options)
    times = times.to(z0[0] if isinstance(z0, tuple) else z0)
    if options.adjoint:
        # Only the dynamics' parameters get adjoint gradients: listing them explicitly also
        # keeps torchdiffeq from warning about parameters it cannot see.
        params = tuple(p for p in dynamics.parameters() if p.requires_grad)
        return odeint_adjoint(dynamics, z0, times, adjoint_params=params, **kwargs)
    return odeint(dynamics, z0, times, **kwargs)


def time_tensor(t: Tensor, like: Tensor) -> Tensor:
    """The solver's scalar time broadcast to (B, 1) in ``like``'s dtype and device."""
    return t.to(like).expand(like.shape[0], 1)

