"""Mixture models: seconds per EM (and Lloyd) iteration, ours against scikit-learn's.

    python scripts/bench.py --only mixture_em

On the digits' training split (1,257 × 64 raw pixels, float64), from the same start:
one iteration of ``model=gmm``'s network (E-step sums + M step, K = 10, full and diagonal
covariances, reg_covar 1e-3) and of ``model=kmeans``'s (K = 10), against scikit-learn's
``GaussianMixture`` / ``KMeans(algorithm="lloyd")``. scikit-learn's time per iteration is
(fit with at most 21 iterations − fit with 1) / (the iterations between them, ``n_iter_``:
k-means stops early once no label changes) — its initialisation cancels out; ours is the
median of 20 timed iterations (``kmeans``, ``kmeans_50k``: ``statistics`` + ``m_step``, the
training step, which also sums the inertia for the loss), and for k-means also ``KMeans.fit``
timed as scikit-learn's fit (``*_fit``: the inertia once, at the end, as scikit-learn's).
Both on the same number of threads: OMP_NUM_THREADS when set,
else torch's (scripts/bench.py gives torch every core), torch's by ``torch.set_num_threads``,
scikit-learn's OpenMP and BLAS pools by threadpoolctl.
Measured in ``ROUNDS`` interleaved rounds (ours, then scikit-learn's), each as wall time
and as process CPU time — on a shared machine the CPU time is the fairer figure, wall time
counts the waits for a core —; the medians over the rounds and their ratios are reported.
Target (issue 18): ours ≤ 1.0× scikit-learn's.
"""

from __future__ import annotations

import os
import statistics
import time
import warnings

import torch

ITERATIONS = 20
ROUNDS = 5


def _digits() -> torch.Tensor:
    from mlnotes_zoo.data.digits import DigitsDataModule

    x = DigitsDataModule().reference_data("train").tensors[0]
    return x.reshape(len(x), -1).double()


def _clocks() -> tuple[float, float]:
    return time.perf_counter(), time.process_time()


def _per_iteration_ours(step) -> tuple[float, float]:
    """(wall, CPU) seconds of one ``step()``: medians of ``ITERATIONS`` timed calls."""
    walls, cpus = [], []
    for _ in range(ITERATIONS):
        wall, cpu = _clocks()
        step()
        walls.append(time.perf_counter() - wall)
        cpus.append(time.process_time() - cpu)
    return statistics.median(walls), statistics.median(cpus)


def _per_iteration_fit(prepare) -> tuple[float, float, int]:
    """(wall, CPU) seconds per iteration of a fit: ``prepare(n)`` gives a call that fits at
    most n iterations from the same start and returns how many it ran (``n_iter_``);
    (fit(21) − fit(1)) / the iterations between them (a k-means whose labels settle stops
    before 21; the set-up cancels out); and those iterations."""
    from sklearn.exceptions import ConvergenceWarning

    def fit(n: int) -> tuple[float, float, int]:
        run = prepare(n)
        wall, cpu = _clocks()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            iterations = run()
        return time.perf_counter() - wall, time.process_time() - cpu, iterations

    (wall_n, cpu_n, iter_n), (wall_1, cpu_1, iter_1) = fit(ITERATIONS + 1), fit(1)
    timed = max(iter_n - iter_1, 1)
    return (wall_n - wall_1) / timed, (cpu_n - cpu_1) / timed, timed


def _per_iteration_sklearn(make, x_np) -> tuple[float, float, int]:
    """scikit-learn's :func:`_per_iteration_fit`, ``make(n)`` its estimator."""
    def prepare(n: int):
        estimator = make(n)
        return lambda: estimator.fit(x_np).n_iter_
    return _per_iteration_fit(prepare)


def _threads() -> int:
    """The threads both sides run on: OMP_NUM_THREADS when set, else torch's."""
    value = os.environ.get("OMP_NUM_THREADS", "")
    return int(value) if value.isdigit() and int(value) > 0 else torch.get_num_threads()


def _compare(ours_step, make_sklearn, x_np, *, ours_fit=None) -> dict:
    """Interleaved rounds of ours (``ours_step()``, or ``ours_fit`` timed as
    :func:`_per_iteration_fit`) and scikit-learn's; medians and ratios of wall and CPU."""
    rounds = [(_per_iteration_fit(ours_fit) if ours_fit else _per_iteration_ours(ours_step),
               _per_iteration_sklearn(make_sklearn, x_np)) for _ in range(ROUNDS)]
    ours_wall = statistics.median(r[0][0] for r in rounds)
    ours_cpu = statistics.median(r[0][1] for r in rounds)
    sk_wall = statistics.median(r[1][0] for r in rounds)
    sk_cpu = statistics.median(r[1][1] for r in rounds)
    return {"ours_s": ours_wall, "sklearn_s": sk_wall, "ratio": ours_wall / sk_wall,
            "ours_cpu_s": ours_cpu, "sklearn_cpu_s": sk_cpu, "cpu_ratio": ours_cpu / sk_cpu,
            "cpu_ratio_per_round": [round(r[0][1] / r[1][1], 3) for r in rounds],
            "sklearn_iterations_timed": min(r[1][2] for r in rounds),
            **({"ours_iterations_timed": min(r[0][2] for r in rounds)} if ours_fit else {})}


def _kmeans_fit(model, x: torch.Tensor, centres: torch.Tensor):
    """:func:`_per_iteration_fit`'s ``prepare`` for our ``KMeans.fit`` from ``centres``."""
    def prepare(n: int):
        model.initialize(x, centres=centres)
        return lambda: model.fit(x, max_iter=n).n_iter_
    return prepare


def mixture_em() -> dict:
    """Both on :func:`_threads` threads (torch's set here, scikit-learn's by threadpoolctl)."""
    from threadpoolctl import threadpool_limits

    threads, before = _threads(), torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        with threadpool_limits(limits=threads):
            return _mixture_em(threads)
    finally:
        torch.set_num_threads(before)


def _mixture_em(threads: int) -> dict:
    import sklearn
    from sklearn.cluster import KMeans as SkKMeans
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    from mlnotes_zoo import create_model

    x = _digits()
    x_np = x.numpy()
    out: dict = {"data": "digits train split, 1257 x 64, float64", "components": 10,
                 "threads": threads, "sklearn": sklearn.__version__}
    for covariance_type in ("full", "diag"):
        gmm = create_model("gmm", in_shape=[64], num_components=10, reg_covar=1e-3,
                           covariance_type=covariance_type)
        gmm.initialize(x, generator=torch.Generator().manual_seed(0))
        p = gmm.precisions_cholesky
        init = dict(weights_init=gmm.weights.numpy().copy(), means_init=gmm.means.numpy().copy(),
                    precisions_init=(p.pow(2) if covariance_type == "diag"
                                     else p @ p.transpose(1, 2)).numpy().copy())
        out[f"gmm_{covariance_type}"] = _compare(
            lambda g=gmm: g.m_step(g.statistics(x)),
            lambda n, c=covariance_type, i=init: SkGaussianMixture(
                10, covariance_type=c, reg_covar=1e-3, max_iter=n, tol=0,
                init_params="random_from_data", **i), x_np)
    kmeans = create_model("kmeans", in_shape=[64], num_clusters=10)
    kmeans.initialize(x, generator=torch.Generator().manual_seed(0))
    centres = kmeans.cluster_centers.numpy().copy()
    def sk_digits(n: int) -> SkKMeans:
        return SkKMeans(10, init=centres, n_init=1, max_iter=n, tol=0, algorithm="lloyd")

    # model=kmeans's iteration (statistics — labels, N_k, Σ x, the inertia for the loss —
    # and the M step), and KMeans.fit's (no inertia until the end, as scikit-learn's)
    out["kmeans"] = _compare(lambda: kmeans.m_step(kmeans.statistics(x)), sk_digits, x_np)
    out["kmeans_fit"] = _compare(None, sk_digits, x_np, ours_fit=_kmeans_fit(
        kmeans, x, torch.from_numpy(centres)))
    # the size of model=hubert's k-means (50,000 frames of MFCC + Δ + ΔΔ, K = 50), where
    # per-op overhead no longer dominates; uniform points, so that no label settles within
    # the timed iterations (scikit-learn stops early once none changes)
    frames = torch.rand(50_000, 39, generator=torch.Generator().manual_seed(0),
                        dtype=torch.float64)
    big = create_model("kmeans", in_shape=[39], num_clusters=50)
    big.initialize(frames, generator=torch.Generator().manual_seed(0))
    big_centres = big.cluster_centers.numpy().copy()
    def sk_big(n: int) -> SkKMeans:
        return SkKMeans(50, init=big_centres, n_init=1, max_iter=n, tol=0, algorithm="lloyd")

    data = "50,000 x 39 uniform on [0, 1), K = 50, float64"
    out["kmeans_50k"] = {"data": data, **_compare(lambda: big.m_step(big.statistics(frames)),
                                                  sk_big, frames.numpy())}
    out["kmeans_50k_fit"] = {"data": data, **_compare(
        None, sk_big, frames.numpy(),
        ours_fit=_kmeans_fit(big, frames, torch.from_numpy(big_centres)))}
    return out


BENCHMARKS = {"mixture_em": mixture_em}

if __name__ == "__main__":
    import json

    print(json.dumps(mixture_em(), indent=2))
