"""NT-Xent loss time (forward + backward) against lightly's ``NTXentLoss`` at batch 512.

Both compute SimCLR's loss over 2N = 1024 views of 128-dimensional projections: ours with
one (2N, 2N) similarity matrix whose diagonal is dropped by −inf, lightly's with four
(N, N) blocks whose diagonals it removes by boolean indexing. The values are checked to
agree before timing. Target: ratio (ours / lightly) ≤ 1.0. Peer: ``pip install lightly``
(``requirements-bench.txt``).
"""

from __future__ import annotations

import statistics
import time

import torch

from mlnotes_zoo.models.simclr import nt_xent


def _time(fn, z1: torch.Tensor, z2: torch.Tensor, repeats: int, inner: int) -> float:
    """Median over ``repeats`` of the mean seconds of ``inner`` forward+backward calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        for _ in range(inner):
            a, b = z1.detach().requires_grad_(), z2.detach().requires_grad_()
            fn(a, b).backward()
        times.append((time.perf_counter() - start) / inner)
    return statistics.median(times)


def bench_nt_xent(batch_size: int = 512, dim: int = 128, temperature: float = 0.5,
                  repeats: int = 11, inner: int = 5) -> dict:
    import lightly
    from lightly.loss import NTXentLoss

    gen = torch.Generator().manual_seed(0)
    z1 = torch.randn(batch_size, dim, generator=gen)
    z2 = torch.randn(batch_size, dim, generator=gen)
    theirs = NTXentLoss(temperature=temperature)

    def ours(a, b):
        return nt_xent(a, b, temperature)

    value_ours, value_theirs = float(ours(z1, z2)), float(theirs(z1, z2))
    if abs(value_ours - value_theirs) > 1e-4 * abs(value_theirs):
        raise AssertionError(f"losses differ: ours {value_ours}, lightly {value_theirs}")
    for fn in (ours, theirs):  # warm-up
        _time(fn, z1, z2, 1, 3)
    # interleave the two so drift on a shared machine hits both alike
    ours_s, theirs_s = [], []
    for _ in range(repeats):
        ours_s.append(_time(ours, z1, z2, 1, inner))
        theirs_s.append(_time(theirs, z1, z2, 1, inner))
    t_ours, t_theirs = statistics.median(ours_s), statistics.median(theirs_s)
    return {
        "what": "NT-Xent forward+backward, seconds per call (median)",
        "batch_size": batch_size,
        "views": 2 * batch_size,
        "dim": dim,
        "temperature": temperature,
        "device": "cpu",
        "threads": torch.get_num_threads(),
        "loss_ours": value_ours,
        "loss_lightly": value_theirs,
        "s_ours": round(t_ours, 6),
        "s_lightly": round(t_theirs, 6),
        "ratio": round(t_ours / t_theirs, 3),
        "ratios_per_repeat": [round(a / b, 3) for a, b in zip(ours_s, theirs_s, strict=True)],
        "target_ratio": 1.0,
        "peer": f"lightly {lightly.__version__} NTXentLoss",
    }


BENCHMARKS = {"nt_xent": bench_nt_xent}
