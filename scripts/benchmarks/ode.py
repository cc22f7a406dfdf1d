"""Neural ODEs: the adjoint method against back-propagation through the solver, and the cost
of a tolerance.

ode_adjoint: the ODE-Net's block (``model=odenet`` defaults, a batch of 32 digit-sized
feature maps) integrated by rk4 with 10 → 1,000 fixed steps; per step count, the CPU
seconds (one thread) of forward + backward and the bytes autograd saves for backward
(``saved_tensors_hooks``, unique tensors), with ``odeint_adjoint`` and with ``odeint``.
Chen et al.'s claim (notes ``004``): the adjoint's memory is constant in the number of
steps, back-propagation's grows linearly; the adjoint pays with a second solve.

ode_tolerance: function evaluations of dopri5 for rtol = atol from 1e-1 to 1e-7 on the same
block, forward and in the adjoint's backward solve.

ode_output_times: bytes saved for backward by one dopri5 solve of the latent ODE's dynamics
(``model=latent_ode`` defaults, batch 50) asked for 10, 100 or 1,000 output times: the adjoint
keeps the state at every requested time, so its memory grows with their number (a known
torchdiffeq limitation), while back-propagation's follows the solver's steps.
"""

from __future__ import annotations

import time

import torch

from mlnotes_zoo import create_model
from mlnotes_zoo.models.ode import SolverOptions, solve


def _block(seed: int = 0):
    torch.manual_seed(seed)
    model = create_model("odenet")
    h0 = model.downsample(torch.rand(32, 1, 8, 8)).detach()  # (32, 32, 4, 4)
    return model.dynamics, h0


def _run(dynamics, h0, options: SolverOptions) -> tuple[float, int]:
    seen: dict[int, int] = {}

    def pack(t):
        seen[id(t)] = t.numel() * t.element_size()
        return t

    h = h0.clone().requires_grad_(True)
    start = time.process_time()  # CPU seconds: the machine is shared, wall time drifts
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = solve(dynamics, h, torch.tensor([0.0, 1.0]), options)[-1]
    out.square().mean().backward()
    return time.process_time() - start, sum(seen.values())


def bench_ode_adjoint(steps: tuple[int, ...] = (10, 30, 100, 300, 1000)) -> dict:
    dynamics, h0 = _block()
    rows = []
    for n in steps:
        row = {"steps": n}
        for adjoint in (False, True):
            options = SolverOptions("rk4", adjoint=adjoint, step_size=1.0 / n)
            _run(dynamics, h0, options)  # warm-up
            seconds, saved = _run(dynamics, h0, options)
            key = "adjoint" if adjoint else "backprop"
            row[f"{key}_cpu_s"] = round(seconds, 4)
            row[f"{key}_saved_mb"] = round(saved / 2**20, 2)
        rows.append(row)
    return {"network": "odenet block (32 channels, 4x4), batch 32, rk4", "threads":
            torch.get_num_threads(), "rows": rows}


def bench_ode_tolerance(tolerances: tuple[float, ...] = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6,
                                                          1e-7)) -> dict:
    dynamics, h0 = _block()
    rows = []
    for tol in tolerances:
        dynamics.nfe = 0
        h = h0.clone().requires_grad_(True)
        out = solve(dynamics, h, torch.tensor([0.0, 1.0]),
                    SolverOptions("dopri5", tol, tol, adjoint=True))[-1]
        forward = dynamics.nfe
        out.square().mean().backward()
        rows.append({"tol": tol, "nfe_forward": forward,
                     "nfe_backward": dynamics.nfe - forward})
    return {"network": "odenet block, batch 32, dopri5 with rtol = atol = tol, adjoint",
            "rows": rows}


def bench_ode_output_times(counts: tuple[int, ...] = (10, 100, 1000)) -> dict:
    rows = []
    for n in counts:
        row: dict = {"output_times": n}
        for adjoint in (False, True):
            torch.manual_seed(0)
            model = create_model("latent_ode", adjoint=adjoint)
            z0 = torch.randn(50, model.latent_dim, requires_grad=True)
            seen: dict[int, int] = {}

            def pack(t, seen=seen):
                seen[id(t)] = t.numel() * t.element_size()
                return t

            with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
                solve(model.dynamics, z0, torch.linspace(0, 10, n), model.solver_options)
            key = "adjoint" if adjoint else "backprop"
            row[f"{key}_saved_kb"] = round(sum(seen.values()) / 1024)
            row["nfe"] = model.nfe
        rows.append(row)
    return {"network": "latent_ode dynamics (6-d, MLP 32), batch 50, dopri5 rtol 1e-3 atol 1e-4",
            "rows": rows}


BENCHMARKS = {"ode_adjoint": bench_ode_adjoint, "ode_tolerance": bench_ode_tolerance,
              "ode_output_times": bench_ode_output_times}
