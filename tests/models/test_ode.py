"""Neural ODEs (models/ode/): the solver glue, the ODE-Net, the CNF and the latent ODE against
independent computations (closed forms, autograd Jacobians, Monte Carlo, torchdiffeq's own
back-propagation)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from mlnotes_zoo import create_model
from mlnotes_zoo.models.ode import CountedDynamics, SolverOptions, solve

F64 = torch.float64


class Linear(nn.Module):
    """dz/dt = A z (no bias): z(T) = exp(A T) z(0)."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a.clone())

    def forward(self, t, z):
        return z @ self.a.T


def _grads(model: nn.Module, loss) -> dict[str, torch.Tensor]:
    """Gradients of ``loss(model)`` with respect to the model's parameters."""
    model.zero_grad()
    loss(model).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


# -- the solver glue --------------------------------------------------------------------------
@pytest.mark.parametrize("adjoint", [False, True])
def test_gradient_of_a_linear_ode_is_the_matrix_exponential(adjoint):
    # ∂(gᵀ z(T))/∂z(0) = exp(Aᵀ T) g, the adjoint a(0) of da/dt = −Aᵀ a, a(T) = g
    g = torch.Generator().manual_seed(0)
    a = 0.5 * torch.randn(3, 3, generator=g, dtype=F64)
    z0 = torch.randn(2, 3, generator=g, dtype=F64, requires_grad=True)
    weights = torch.randn(2, 3, generator=g, dtype=F64)
    t_end = 1.3
    options = SolverOptions("dopri5", 1e-10, 1e-10, adjoint)
    z = solve(Linear(a), z0, torch.tensor([0.0, t_end]), options)[-1]
    torch.testing.assert_close(z, z0.detach() @ torch.linalg.matrix_exp(a * t_end).T)
    (weights * z).sum().backward()
    expected = weights @ torch.linalg.matrix_exp(a.T * t_end).T
    torch.testing.assert_close(z0.grad, expected, rtol=1e-6, atol=1e-7)


def test_counted_dynamics_counts_every_evaluation_of_a_fixed_step_solver():
    func = CountedDynamics(Linear(torch.eye(2, dtype=F64)))
    solve(func, torch.ones(1, 2, dtype=F64), torch.tensor([0.0, 1.0]),
          SolverOptions("rk4", step_size=0.1))
    assert func.nfe == 4 * 10  # four stages per RK4 step, ten steps


def _saved_bytes(adjoint: bool, steps: int) -> int:
    """Bytes autograd keeps for backward through an rk4 solve of ``steps`` steps."""
    torch.manual_seed(0)
    func = nn.Sequential(nn.Linear(8, 32), nn.Tanh(), nn.Linear(32, 8)).double()

    class F(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = func

        def forward(self, t, z):
            return self.net(z)

    dynamics = F()
    z0 = torch.randn(16, 8, dtype=F64, requires_grad=True)
    seen: dict[int, int] = {}

    def pack(t):
        seen[id(t)] = t.numel() * t.element_size()  # unique tensors, parameters included
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        solve(dynamics, z0, torch.tensor([0.0, 1.0]),
              SolverOptions("rk4", adjoint=adjoint, step_size=1.0 / steps))[-1].sum()
    return sum(seen.values())


def test_adjoint_memory_is_constant_in_the_steps_and_backprop_memory_grows_linearly():
    adjoint = [_saved_bytes(True, n) for n in (10, 20, 40)]
    backprop = [_saved_bytes(False, n) for n in (10, 20, 40)]
    assert adjoint[0] == adjoint[1] == adjoint[2]
    per_step = (backprop[1] - backprop[0]) / 10
    assert per_step > 0 and backprop[2] - backprop[1] == pytest.approx(20 * per_step, rel=0.01)
    assert adjoint[0] < backprop[0] / 5


# -- ODE-Net ----------------------------------------------------------------------------------
def test_odenet_with_one_euler_step_is_the_residual_block():
    torch.manual_seed(0)
    ode = create_model("odenet", solver="euler", integration_time=1.0).eval()
    resnet = create_model("odenet", block="resnet").eval()
    resnet.load_state_dict(ode.state_dict())  # the same parameters, by construction
    x = ode.example_input(5)
    with torch.no_grad():
        h = ode.downsample(x)
        # h + Δt·f(0, h) with Δt = T = 1, written out
        expected = ode.head(h + ode.dynamics.func(torch.tensor(0.0), h))
        torch.testing.assert_close(ode(x), expected)
        torch.testing.assert_close(resnet(x), expected)
    assert sum(p.numel() for p in ode.parameters()) == sum(p.numel() for p in resnet.parameters())


def test_odenet_adjoint_gradients_equal_backprop_through_the_solver():
    x = torch.rand(3, 1, 8, 8, generator=torch.Generator().manual_seed(1), dtype=F64)
    grads = []
    for adjoint in (False, True):
        torch.manual_seed(0)
        model = create_model("odenet", channels=8, adjoint=adjoint, rtol=1e-8,
                             atol=1e-8).double()
        grads.append(_grads(model, lambda m: m(x).square().sum()))
    assert grads[0].keys() == grads[1].keys()
    for name, value in grads[0].items():
        torch.testing.assert_close(grads[1][name], value, rtol=1e-5, atol=1e-6, msg=name)


def test_odenet_counts_its_function_evaluations_forward_and_in_the_adjoint_backward():
    torch.manual_seed(0)
    model = create_model("odenet", channels=8, adjoint=True)
    model(model.example_input(2)).sum().backward()
    forward = model.nfe
    assert forward >= 6  # at least one dopri5 step (6 evaluations, FSAL)
    model(model.example_input(2)).sum().backward()
    assert model.nfe > 2 * forward - 1  # the adjoint solve evaluated f again


def test_an_examples_output_alone_and_in_a_batch_agree_to_the_solver_tolerance():
    # Adaptive steps are chosen from the error norm over the whole batch: the outputs of one
    # image alone and inside a batch differ, by less as the tolerance tightens.
    x = torch.rand(6, 1, 8, 8, generator=torch.Generator().manual_seed(2), dtype=F64)
    gaps = []
    for tol in (1e-3, 1e-8):
        torch.manual_seed(0)
        model = create_model("odenet", rtol=tol, atol=tol).double().eval()
        with torch.no_grad():
            gaps.append(float((model(x)[:1] - model(x[:1])).abs().max()))
    assert gaps[1] < 1e-6 and gaps[1] < gaps[0] / 100


# -- CNF ------------------------------------------------------------------------------------
def _cnf(**kwargs) -> nn.Module:
    torch.manual_seed(0)
    options = dict(hidden=16, rtol=1e-9, atol=1e-9)
    return create_model("cnf", **{**options, **kwargs}).double()


def test_cnf_log_det_is_the_log_determinant_of_the_solved_flow_maps_jacobian():
    model = _cnf(dim=3)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    z, log_det = model(x)
    for i in range(len(x)):
        jacobian = torch.autograd.functional.jacobian(lambda p: model(p[None]).z[0], x[i])
        torch.testing.assert_close(log_det[i], torch.linalg.slogdet(jacobian)[1],
                                   rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize("trace", ["exact", "hutchinson"])
def test_cnf_change_of_log_density_for_a_linear_field_is_t_times_the_trace(trace):
    # dz/dt = A z: log |det ∂z(T)/∂x| = log det exp(A T) = T·tr(A); Hutchinson's estimate of
    # it is T·εᵀAε for the example's probe ε, right on average over the probes
    model = _cnf(dim=4, trace=trace, integration_time=0.7)
    a = torch.randn(4, 4, generator=torch.Generator().manual_seed(4), dtype=F64)
    model.dynamics.func.velocity = lambda t, z: z @ a.T
    x = torch.randn(2000 if trace == "hutchinson" else 3, 4, dtype=F64,
                    generator=torch.Generator().manual_seed(5))
    log_det = model(x).log_det
    expected = 0.7 * torch.trace(a)
    if trace == "exact":
        torch.testing.assert_close(log_det, expected.expand(3), rtol=1e-6, atol=1e-7)
    else:
        # each example's estimate 0.7·εᵀAε is unbiased; the mean over 2,000 probes is within
        # four standard errors of T·tr(A)
        stderr = log_det.std() / math.sqrt(len(x))
        assert abs(log_det.mean() - expected) < 4 * stderr
        assert log_det.std() > 0.1  # the estimates do vary: a probe was used


@pytest.mark.parametrize("probe", ["rademacher", "gaussian"])
def test_hutchinson_estimate_is_unbiased_for_the_exact_trace(probe):
    from mlnotes_zoo.models.ode.cnf import CNFDynamics, exact_trace, hutchinson_trace

    torch.manual_seed(0)
    dynamics = CNFDynamics(dim=5, hidden=16, num_layers=3).double()
    z = torch.randn(3, 5, dtype=F64, requires_grad=True)
    velocity = dynamics.velocity(torch.tensor(0.3), z)
    exact = exact_trace(velocity, z, create_graph=False)
    # the exact trace is the trace of the autograd Jacobian
    for i in range(3):
        jac = torch.autograd.functional.jacobian(
            lambda p: dynamics.velocity(torch.tensor(0.3), p[None])[0], z[i].detach())
        torch.testing.assert_close(exact[i], torch.trace(jac))
    model = _cnf(dim=5, probe=probe)
    n = 20_000
    probes = torch.stack([model.draw_probe(z.detach()) for _ in range(n)])  # (n, 3, 5)
    if probe == "rademacher":
        assert set(probes.unique().tolist()) == {-1.0, 1.0}
    estimates = torch.stack([hutchinson_trace(velocity, z, p, create_graph=False)
                             for p in probes[:2000]])
    # E[εεᵀ] = I makes E[εᵀJε] = tr J: check on the second moment of all probes, then the
    # estimator's Monte-Carlo mean on 2,000 of them
    torch.testing.assert_close(torch.einsum("nbi,nbj->ij", probes, probes) / (3 * n),
                               torch.eye(5, dtype=F64), atol=0.03, rtol=0)
    stderr = estimates.std(0) / math.sqrt(len(estimates))
    assert ((estimates.mean(0) - exact).abs() < 4 * stderr).all(), (estimates.mean(0), exact)


def test_cnf_inverts_to_the_solver_tolerance():
    model = _cnf(dim=2, rtol=1e-8, atol=1e-8)
    x = torch.randn(16, 2, dtype=F64)
    with torch.no_grad():
        torch.testing.assert_close(model.inverse(model(x).z), x, rtol=1e-6, atol=1e-6)


def test_cnf_adjoint_gradients_equal_backprop_through_the_solver():
    x = torch.randn(5, 2, generator=torch.Generator().manual_seed(6), dtype=F64)
    grads = [_grads(model, lambda m: -m.log_prob(x).mean())
             for model in (_cnf(adjoint=False, rtol=1e-8, atol=1e-8),
                           _cnf(adjoint=True, rtol=1e-8, atol=1e-8))]
    for name, value in grads[0].items():
        torch.testing.assert_close(grads[1][name], value, rtol=1e-5, atol=1e-7, msg=name)


def test_cnf_density_integrates_to_one_over_a_grid_and_the_picture_has_three_panels():
    from mlnotes_zoo.lit.ode import LitCNF

    lit = LitCNF(net=create_model("cnf", hidden=16), grid_size=48, num_samples=500)
    log_p, cell = lit.grid_log_density(120, 6.0)
    assert float(log_p.exp().sum() * cell) == pytest.approx(1.0, abs=0.01)
    grid = lit.pictures((torch.randn(300, 2),))["density"]
    assert grid.shape == (3, 48, 3 * 48 + 4) and 0 <= grid.min() and grid.max() <= 1


# -- toy2d ------------------------------------------------------------------------------------
def test_toy2d_points_are_scikit_learns_generators_placed_as_in_ffjord():
    from sklearn.datasets import make_blobs, make_circles, make_moons

    from mlnotes_zoo.data.toy2d import EIGHT_GAUSSIANS_STD, sample_toy2d

    moons = make_moons(500, noise=0.1, random_state=7)[0] * 2 + [-1.0, -0.2]
    torch.testing.assert_close(sample_toy2d("moons", 500, 7), torch.tensor(moons).float())
    circles = make_circles(500, factor=0.5, noise=0.08, random_state=7)[0] * 3
    torch.testing.assert_close(sample_toy2d("circles", 500, 7), torch.tensor(circles).float())
    angles = torch.arange(8) * math.pi / 4
    centres = (4 / 1.414) * torch.stack([angles.cos(), angles.sin()], 1).double()
    blobs = make_blobs(500, centers=centres.numpy(), cluster_std=EIGHT_GAUSSIANS_STD,
                       random_state=7)[0]
    torch.testing.assert_close(sample_toy2d("8gaussians", 500, 7), torch.tensor(blobs).float())
    for name in ("checkerboard", "pinwheel"):
        a, b = sample_toy2d(name, 300, 1), sample_toy2d(name, 300, 1)
        assert torch.equal(a, b) and not torch.equal(a, sample_toy2d(name, 300, 2))
    board = sample_toy2d("checkerboard", 2000, 0) / 2  # unit squares alternate
    assert ((board.floor().sum(1) % 2) == 0).all()


def test_eight_gaussians_density_is_normalised_and_its_entropy_is_near_the_closed_form():
    from mlnotes_zoo.data.toy2d import (
        EIGHT_GAUSSIANS_STD,
        eight_gaussians_log_prob,
        sample_toy2d,
    )

    side = torch.linspace(-5, 5, 401, dtype=F64)
    y, x = torch.meshgrid(side, side, indexing="ij")
    density = eight_gaussians_log_prob(torch.stack([x.flatten(), y.flatten()], 1)).exp()
    assert float(density.sum() * (side[1] - side[0]) ** 2) == pytest.approx(1.0, abs=1e-3)
    # components barely overlap: H ≈ log 8 + log(2πe σ²)
    entropy = -eight_gaussians_log_prob(sample_toy2d("8gaussians", 20_000, 3).double()).mean()
    closed = math.log(8) + math.log(2 * math.pi * math.e * EIGHT_GAUSSIANS_STD ** 2)
    assert float(entropy) == pytest.approx(closed, abs=0.03)


# -- latent ODE -------------------------------------------------------------------------------
def _series(batch: int = 3, steps: int = 12):
    g = torch.Generator().manual_seed(8)
    times = torch.cumsum(0.2 + torch.rand(steps, generator=g, dtype=F64), 0)
    values = torch.randn(batch, steps, 2, generator=g, dtype=F64)
    observed = (torch.rand(batch, steps, generator=g) < 0.5).to(F64)
    return values, times.expand(batch, -1).clone(), observed


def test_latent_ode_adjoint_gradients_equal_backprop_through_the_solver():
    values, times, observed = _series()
    grads = []
    for adjoint in (False, True):
        torch.manual_seed(0)
        model = create_model("latent_ode", adjoint=adjoint, rtol=1e-9, atol=1e-9).double()
        # a fixed z₀ (no sampling noise), so both runs differentiate the same function
        grads.append(_grads(model, lambda m: m.decode(
            m.encode(values, times[0], observed)[0], times[0]).square().sum()))
    for name, value in grads[0].items():
        torch.testing.assert_close(grads[1][name], value, rtol=1e-5, atol=1e-7, msg=name)


@pytest.mark.parametrize("encoder", ["odernn", "gru"])
def test_the_encoder_reads_only_observed_values(encoder):
    values, times, observed = _series()
    torch.manual_seed(0)
    model = create_model("latent_ode", encoder=encoder).double()
    changed = values + 5.0 * (1 - observed)[..., None]  # every unobserved value moved
    with torch.no_grad():
        for a, b in zip(model.encode(values, times[0], observed),
                        model.encode(changed, times[0], observed), strict=True):
            torch.testing.assert_close(a, b)
        moved = values + 5.0 * observed[..., None]
        assert not torch.allclose(model.encode(values, times[0], observed)[0],
                                  model.encode(moved, times[0], observed)[0])


def test_latent_ode_decodes_z0_along_the_solved_latent_trajectory():
    _, times, _ = _series()
    torch.manual_seed(0)
    model = create_model("latent_ode", rtol=1e-9, atol=1e-9).double()
    z0 = torch.randn(2, model.latent_dim, dtype=F64)
    grid = times[0]
    with torch.no_grad():
        decoded = model.decode(z0, grid)
        # z(t_k) stepped interval by interval equals one solve through every time
        z = z0
        for k in range(len(grid)):
            if k:
                z = solve(model.dynamics, z, grid[k - 1:k + 1],
                          SolverOptions("dopri5", 1e-9, 1e-9))[-1]
            torch.testing.assert_close(decoded[:, k], model.output(z), rtol=1e-6, atol=1e-7)


def test_the_gru_baseline_has_no_ode_and_counts_no_evaluations():
    model = create_model("latent_ode", encoder="gru", decoder="gru")
    model(*model.example_input(3)).mean.sum().backward()
    assert model.nfe == 0 and model.encoder.dynamics is None


# -- irregular_series -------------------------------------------------------------------------
def test_irregular_series_masks_split_the_grid_and_observations_are_irregular():
    from mlnotes_zoo.data.irregular_series import IrregularSeriesDataModule

    dm = IrregularSeriesDataModule(train_size=200, val_size=10, test_size=10, noise=0.0)
    dm.setup()
    values, times, observed, held_out, future = dm.splits["train"].tensors
    inside = times <= dm.window_end
    assert torch.equal(observed + held_out, inside.float())
    assert torch.equal(future, (~inside).float())
    assert float(observed.sum() / inside.sum()) == pytest.approx(0.5, abs=0.03)
    gaps = {tuple(times[i][observed[i].bool()].diff().round(decimals=4).tolist())
            for i in range(20)}
    assert len(gaps) == 20  # every series its own irregular times
    again = IrregularSeriesDataModule(train_size=200, val_size=10, test_size=10, noise=0.0)
    again.setup()
    assert torch.equal(again.splits["train"].tensors[0], values)  # seeded


def test_spirals_are_archimedean_and_oscillators_solve_a_damped_linear_ode():
    from mlnotes_zoo.data.irregular_series import make_series

    times = torch.linspace(0, 10, 2001, dtype=F64)
    spirals = make_series("spirals", 5, times, torch.Generator().manual_seed(0))
    radius = spirals.norm(dim=-1)
    angle = torch.atan2(spirals[..., 1], spirals[..., 0])
    turns = torch.cumsum(torch.remainder(angle.diff(dim=1) + math.pi, 2 * math.pi) - math.pi, 1)
    for r, theta in zip(radius[:, 1:], turns.abs(), strict=True):
        # r = (a + b·θ)/2: affine in the unwrapped angle
        design = torch.stack([torch.ones_like(theta), theta], 1)
        fit = torch.linalg.lstsq(design, r[:, None]).solution
        assert (design @ fit - r[:, None]).abs().max() < 1e-6
    oscillators = make_series("oscillators", 5, times, torch.Generator().manual_seed(0))
    dt = float(times[1] - times[0])
    for x in oscillators[..., 0]:
        # x'' = c₁ x' + c₀ x with constant coefficients (finite differences)
        x1 = (x[2:] - x[:-2]) / (2 * dt)
        x2 = (x[2:] - 2 * x[1:-1] + x[:-2]) / dt ** 2
        design = torch.stack([x1, x[1:-1]], 1)
        fit = torch.linalg.lstsq(design, x2[:, None]).solution
        assert (design @ fit - x2[:, None]).abs().max() < 1e-4
        assert fit[0] < 0  # damping: c₁ = −2γ


def test_cnf_on_images_reports_bits_per_dim_of_the_dequantized_pixels():
    from mlnotes_zoo.lit.ode import LitCNF

    torch.manual_seed(0)
    lit = LitCNF(net=create_model("cnf", dim=4, hidden=8), levels=17)
    x = torch.randint(0, 17, (5, 1, 2, 2)).float() / 16
    torch.manual_seed(1)
    out = lit.model_step((x, torch.zeros(5)), "val")
    torch.manual_seed(1)
    y = ((x * 16).round() + torch.rand_like(x)) / 17  # (k + u)/K
    u = 0.05 + 0.9 * y  # logit(u), dlogit/dy = 0.9 / (u (1 − u))
    pixel_log_det = (math.log(0.9) - torch.log(u * (1 - u))).flatten(1).sum(1)
    log_density = lit.net.log_prob(torch.logit(u).flatten(1)) + pixel_log_det
    expected = -(log_density - 4 * math.log(17)) / (4 * math.log(2))
    torch.testing.assert_close(out["bpd"], expected.mean())
    assert out["loss"] is out["bpd"]
