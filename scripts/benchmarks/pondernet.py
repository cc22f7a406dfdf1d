"""PonderNet training-step and inference time against labml-nn's ``ParityPonderGRU``.

Both networks are the paper's parity model at equal size (labml's experiment defaults:
64-element vectors, GRU state 64, N = 20 steps, batch 128) with the same parameter count.
A training step is forward over all N steps, the loss (reconstruction + β·KL), backward and
an Adam step: ours with :func:`~mlnotes_zoo.models.pondernet.ponder_loss`, labml's with its
``ReconstructionLoss`` + ``RegularizationLoss``. (labml's regulariser is
``KLDivLoss(p.log(), p_G)``, i.e. KL(p_G ‖ p) with an untruncated-unnormalised p_G, and its
forward also samples halting in training; ours is the paper's KL(p ‖ p_G) over the truncated,
renormalised prior. The work per step is the same order: N GRU-cell steps.) Inference:
``PonderNet.infer`` (sampled halting, stops when the whole batch halted) vs labml's forward
with ``is_halt = True`` (the same early exit). Target: ratio (ours / labml) ≤ 1.0.
Peer: ``pip install --no-deps labml-nn`` (``requirements-bench.txt``); its PonderNet module
only needs torch.
"""

from __future__ import annotations

import statistics
import time

import torch
from torch import nn

from mlnotes_zoo import create_model
from mlnotes_zoo.data.parity import make_parity
from mlnotes_zoo.models.pondernet import ponder_loss


def _median_time(fn, repeats: int, inner: int) -> list[float]:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            fn()
        times.append((time.perf_counter() - start) / inner)
    return times


def bench_pondernet(n_elems: int = 64, hidden: int = 64, max_steps: int = 20,
                    batch_size: int = 128, beta: float = 0.01, lambda_p: float = 0.2,
                    repeats: int = 15, inner: int = 10) -> dict:
    from importlib.metadata import version

    from labml_nn.adaptive_computation.ponder_net import (
        ParityPonderGRU,
        ReconstructionLoss,
        RegularizationLoss,
    )

    torch.manual_seed(0)
    x, y, _ = make_parity(batch_size, n_elems, 1, n_elems, torch.Generator().manual_seed(0))
    ours = create_model("pondernet", in_features=n_elems, hidden=hidden, max_steps=max_steps)
    theirs = ParityPonderGRU(n_elems, hidden, max_steps)
    n_ours = sum(p.numel() for p in ours.parameters())
    n_theirs = sum(p.numel() for p in theirs.parameters() if p.requires_grad)
    if n_ours != n_theirs:
        raise AssertionError(f"sizes differ: ours {n_ours}, labml {n_theirs}")
    theirs.load_state_dict({  # same weights: the same arithmetic up to the loss
        "gru.weight_ih": ours.step.cell.weight_ih, "gru.weight_hh": ours.step.cell.weight_hh,
        "gru.bias_ih": ours.step.cell.bias_ih, "gru.bias_hh": ours.step.cell.bias_hh,
        "output_layer.weight": ours.step.output.weight,
        "output_layer.bias": ours.step.output.bias,
        "lambda_layer.weight": ours.step.halting.weight,
        "lambda_layer.bias": ours.step.halting.bias})
    rec = ReconstructionLoss(nn.BCEWithLogitsLoss(reduction="none"))
    reg = RegularizationLoss(lambda_p, max_steps)
    opt_ours = torch.optim.Adam(ours.parameters(), lr=3e-4)
    opt_theirs = torch.optim.Adam(theirs.parameters(), lr=3e-4)

    def step_ours():
        y_hat, lambdas = ours(x)
        loss = ponder_loss(y_hat, lambdas, y, beta=beta, lambda_p=lambda_p)["loss"]
        opt_ours.zero_grad(set_to_none=True)
        loss.backward()
        opt_ours.step()

    def step_theirs():
        theirs.is_halt = False
        p, y_hat, _, _ = theirs(x)
        loss = rec(p, y_hat, y) + beta * reg(p)
        opt_theirs.zero_grad(set_to_none=True)
        loss.backward()
        opt_theirs.step()

    def infer_ours():
        with torch.no_grad():
            ours.infer(x, halting="sample")

    def infer_theirs():
        theirs.is_halt = True
        with torch.no_grad():
            theirs(x)

    # The halting probabilities of the two agree at equal weights (λ_N = 1 in both).
    with torch.no_grad():
        from mlnotes_zoo.models.pondernet import halting_distribution

        theirs.is_halt = False
        p_theirs = theirs(x)[0]
        p_ours = halting_distribution(ours(x).lambdas)
    torch.testing.assert_close(p_ours, p_theirs, atol=1e-5, rtol=1e-4)

    results = {}
    for name, fns in (("train_step", (step_ours, step_theirs)),
                      ("inference", (infer_ours, infer_theirs))):
        for fn in fns:  # warm-up
            _median_time(fn, 1, 3)
        a, b = [], []
        for _ in range(repeats):  # interleaved, so drift on a shared machine hits both alike
            a += _median_time(fns[0], 1, inner)
            b += _median_time(fns[1], 1, inner)
        t_ours, t_theirs = statistics.median(a), statistics.median(b)
        results[name] = {"ours_s": t_ours, "labml_s": t_theirs, "ratio": t_ours / t_theirs}
    return {
        "what": "PonderNet parity model, seconds per call (median): training step "
                "(forward N steps + loss + backward + Adam) and sampled-halting inference",
        "n_elems": n_elems,
        "hidden": hidden,
        "max_steps": max_steps,
        "batch_size": batch_size,
        "parameters": n_ours,
        **results,
        "torch_threads": torch.get_num_threads(),
        "peer": f"labml-nn {version('labml-nn')}",
    }


BENCHMARKS = {"pondernet": bench_pondernet}
