"""Latent ODE for irregularly sampled time series (Rubanova et al. 2019; Chen et al. 2018 §5),
and the RNN baseline it is compared with (the same model with GRUs in place of the ODEs).

Notes ``004`` ("Continuous time dynamics"): an ODE has a state at every time, between
observations too, so irregular gaps need no imputation or binning. The generative model

    z₀ ~ N(0, I),   z(t) = ODESolve(f, z₀, t),   x(t) ~ N(g(z(t)), σ²I)

is fitted by the ELBO with an encoder q(z₀ | x) run backwards in time over the observations.
The encoder is an ODE-RNN (Rubanova §3): between two observation times its hidden state
follows an ODE, at an observation a GRU cell updates it. The baseline (``encoder="gru"``,
``decoder="gru"``) replaces each ODE by a GRU step that takes the time gap Δt as input.

Every series of a batch lives on one time grid (T,); ``observed`` (B, T) marks which grid
times an example has. Masked updates keep each example's encoder state independent of the
rest of the batch. Reads top-down: dynamics, encoder, decoder, :class:`LatentODE`, objective.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import torch
from torch import Tensor, nn

from mlnotes_zoo.constraints import PositiveFloat, PositiveInt
from mlnotes_zoo.models.ode.solve import (
    CountedDynamics,
    Solver,
    SolverOptions,
    Tolerance,
    solve,
)
from mlnotes_zoo.models.shared import check_tensor
from mlnotes_zoo.registry import register_model

__all__ = ["MLPDynamics", "ODERNNEncoder", "LatentODE", "LatentODEOutput",
           "masked_gaussian_log_likelihood", "masked_mse", "standard_normal_kl"]


class MLPDynamics(nn.Module):
    """An autonomous vector field f(z) = MLP(z) (tanh hidden layers), (B, N) -> (B, N)."""

    def __init__(self, dim: int, hidden: int) -> None:
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim, hidden), nn.Tanh(), nn.Linear(hidden, hidden),
                                 nn.Tanh(), nn.Linear(hidden, dim))

    def forward(self, t: Tensor, z: Tensor) -> Tensor:
        return self.net(z)


class ODERNNEncoder(nn.Module):
    """q(z₀ | x): a GRU run backwards over the grid, its state evolved between grid times by
    an ODE (``"odernn"``, one Euler step per gap) or fed the gap Δt (``"gru"``).

    Returns (μ, log σ²), each (B, latent_dim).
    """

    def __init__(self, *, obs_dim: int, latent_dim: int, hidden: int,
                 kind: Literal["odernn", "gru"]) -> None:
        super().__init__()
        self.kind = kind
        extra = 1 if kind == "gru" else 0  # the time gap as an input
        self.cell = nn.GRUCell(obs_dim + 1 + extra, hidden)  # x, observed flag (, Δt)
        self.dynamics = MLPDynamics(hidden, hidden) if kind == "odernn" else None
        self.to_posterior = nn.Linear(hidden, 2 * latent_dim)
        self.hidden = hidden
        self.euler = SolverOptions("euler")

    def forward(self, values: Tensor, times: Tensor, observed: Tensor) -> tuple[Tensor, Tensor]:
        batch, steps = values.shape[:2]
        h = values.new_zeros(batch, self.hidden)
        for k in range(steps - 1, -1, -1):  # backwards in time: z₀'s posterior sees all
            gap = times[k + 1] - times[k] if k + 1 < steps else times.new_zeros(())
            if self.dynamics is not None and k + 1 < steps:
                # ODE-RNN: h evolves from t_{k+1} back to t_k between observations
                h = solve(self.dynamics, h, times[[k + 1, k]], self.euler)[-1]
            mask = observed[:, k, None]  # (B, 1)
            inputs = [values[:, k], mask]
            if self.kind == "gru":
                inputs.append(gap.expand(batch, 1))
            updated = self.cell(torch.cat(inputs, dim=-1), h)
            h = mask * updated + (1 - mask) * h  # only observed times update the state
        mu, logvar = self.to_posterior(h).chunk(2, dim=-1)
        return mu, logvar


class GRUDecoder(nn.Module):
    """The baseline's z(t): z(t_{k+1}) = GRUCell(Δt_k, z(t_k)), (B, T, L)."""

    def __init__(self, latent_dim: int) -> None:
        super().__init__()
        self.cell = nn.GRUCell(1, latent_dim)

    def forward(self, z0: Tensor, times: Tensor) -> Tensor:
        states = [z0]
        for k in range(1, len(times)):
            gap = (times[k] - times[k - 1]).expand(z0.shape[0], 1)
            states.append(self.cell(gap, states[-1]))
        return torch.stack(states, dim=1)


class LatentODEOutput(NamedTuple):
    mean: Tensor  # g(z(t)) at every grid time, (B, T, D) (or (S, B, T, D) for S samples)
    mu: Tensor  # q(z₀ | x), (B, L)
    logvar: Tensor  # (B, L)
    z0: Tensor  # the sample decoded, (B, L) or (S, B, L)


@register_model("latent_ode")
class LatentODE(nn.Module):
    """Irregular series -> q(z₀ | observations) -> trajectories g(z(t)) at every grid time.

    Args:
        obs_dim: D, the dimension of an observation.
        latent_dim: L, the size of z.
        hidden: width of the encoder's GRU state (and of its ODE's MLP).
        dynamics_hidden: width of the latent ODE's MLP f.
        decoder_hidden: width of the MLP g from z(t) to the observation mean.
        encoder: ``"odernn"`` (ODE between observations, Rubanova) or ``"gru"`` (Δt input).
        decoder: ``"ode"`` (z(t) = ODESolve) or ``"gru"`` (the RNN baseline).
        obs_std: σ of the Gaussian observation model.
        solver, rtol, atol, adjoint, step_size: how the latent ODE is integrated
            (:class:`~mlnotes_zoo.models.ode.solve.SolverOptions`); the encoder's ODE takes
            one Euler step per grid gap.
    """

    def __init__(
        self,
        *,
        obs_dim: PositiveInt = 2,
        latent_dim: PositiveInt = 6,
        hidden: PositiveInt = 32,
        dynamics_hidden: PositiveInt = 32,
        decoder_hidden: PositiveInt = 32,
        encoder: Literal["odernn", "gru"] = "odernn",
        decoder: Literal["ode", "gru"] = "ode",
        obs_std: PositiveFloat = 0.05,
        solver: Solver = "dopri5",
        rtol: Tolerance = 1e-3,
        atol: Tolerance = 1e-4,
        adjoint: bool = False,
        step_size: PositiveFloat | None = None,
    ) -> None:
        super().__init__()
        self.obs_dim = obs_dim
        self.latent_dim = latent_dim
        self.obs_std = obs_std
        self.decoder_kind = decoder
        self.solver_options = SolverOptions(solver, rtol, atol, adjoint, step_size)
        self.encoder = ODERNNEncoder(obs_dim=obs_dim, latent_dim=latent_dim, hidden=hidden,
                                     kind=encoder)
        self.dynamics = CountedDynamics(MLPDynamics(latent_dim, dynamics_hidden)
                                        if decoder == "ode" else nn.Identity())
        self.gru_decoder = GRUDecoder(latent_dim) if decoder == "gru" else None
        self.output = nn.Sequential(nn.Linear(latent_dim, decoder_hidden), nn.Tanh(),
                                    nn.Linear(decoder_hidden, obs_dim))

    @property
    def nfe(self) -> int:
        """Evaluations of the latent ODE's f so far."""
        return self.dynamics.nfe

    def encode(self, values: Tensor, times: Tensor, observed: Tensor) -> tuple[Tensor, Tensor]:
        """(μ, log σ²) of q(z₀ | the observed values), each (B, L)."""
        return self.encoder(values, times, observed)

    def decode(self, z0: Tensor, times: Tensor) -> Tensor:
        """Observation means g(z(t)) at ``times`` (T,) for z₀ (..., L): (..., T, D)."""
        flat = z0.reshape(-1, self.latent_dim)
        if self.gru_decoder is not None:
            z = self.gru_decoder(flat, times)  # (N, T, L)
        else:
            z = solve(self.dynamics, flat, times - times[0], self.solver_options)  # (T, N, L)
            z = z.transpose(0, 1)
        return self.output(z).reshape(*z0.shape[:-1], len(times), self.obs_dim)

    def forward(self, values: Tensor, times: Tensor, observed: Tensor,
                num_samples: int | None = None) -> LatentODEOutput:
        """values (B, T, D) and observed (B, T) at ``times`` (B, T): one increasing grid,
        the same in every row (as the batches of ``data=irregular_series`` have it).

        Decodes z₀ = μ + σ·ε (``num_samples`` of them when given, else one), in eval mode
        too: the posterior mean is ``decode(mu, times[0])``.
        """
        sizes = check_tensor(values, "values", ("B", "T", self.obs_dim),
                             where="LatentODE.forward")
        check_tensor(times, "times", ("B", "T"), where="LatentODE.forward", sizes=sizes)
        check_tensor(observed, "observed", ("B", "T"), where="LatentODE.forward", sizes=sizes)
        grid = times[0]
        if not torch.equal(times, grid.expand_as(times)) or bool((grid.diff() <= 0).any()):
            raise ValueError("LatentODE.forward: times must be one increasing grid, the same "
                             "in every row of the batch")
        times = grid
        mu, logvar = self.encode(values, times, observed)
        shape = mu.shape if num_samples is None else (num_samples, *mu.shape)
        z0 = mu + torch.exp(0.5 * logvar) * torch.randn(shape, dtype=mu.dtype, device=mu.device)
        return LatentODEOutput(self.decode(z0, times), mu, logvar, z0)

    def example_input(self, batch_size: int = 2) -> tuple[Tensor, Tensor, Tensor]:
        times = torch.linspace(0, 5, 20)
        values = torch.sin(times)[None, :, None] * torch.randn(batch_size, 1, self.obs_dim)
        observed = (torch.rand(batch_size, 20) < 0.5).float()
        return values, times.expand(batch_size, -1).clone(), observed


# -- the objective ----------------------------------------------------------------------------
def masked_gaussian_log_likelihood(mean: Tensor, values: Tensor, mask: Tensor,
                                   std: float) -> Tensor:
    """Σ over masked times and dimensions of log N(x; mean, σ²), per series: mean (..., B, T,
    D), values (B, T, D), mask (B, T) -> (..., B)."""
    normal = torch.distributions.Normal(mean, std)
    return (normal.log_prob(values) * mask[..., None]).sum(dim=(-1, -2))


def standard_normal_kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(μ, diag σ²) ‖ N(0, I)) per example, (B,) (torch.distributions)."""
    q = torch.distributions.Normal(mu, torch.exp(0.5 * logvar))
    p = torch.distributions.Normal(torch.zeros_like(mu), torch.ones_like(mu))
    return torch.distributions.kl_divergence(q, p).sum(-1)


def masked_mse(prediction: Tensor, values: Tensor, mask: Tensor) -> Tensor:
    """Mean squared error over the masked (time, dimension) entries of the batch: a scalar
    (0 when the mask is empty)."""
    squared = (prediction - values).pow(2) * mask[..., None]
    count = mask.sum() * values.shape[-1]
    return squared.sum() / count.clamp_min(1)
