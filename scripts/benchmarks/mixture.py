"""Mixture models: seconds per EM (and Lloyd) iteration, ours against scikit-learn's.

    python scripts/bench.py --only mixture_em

On the digits' training split (1,257 × 64 raw pixels, float64), from the same start:
one iteration of ``model=gmm``'s network (E-step sums + M step, K = 10, full and diagonal
covariances, reg_covar 1e-3) and of ``model=kmeans``'s (K = 10), against scikit-learn's
``GaussianMixture`` / ``KMeans(algorithm="lloyd")``. scikit-learn's time per iteration is
(fit with 21 iterations − fit with 1) / 20 (its initialisation cancels out); ours is the
median of 20 timed iterations. Both on the threads the process has (OMP_NUM_THREADS).
Target (issue 18): ours ≤ 1.0× scikit-learn's.
"""

from __future__ import annotations

import statistics
import time
import warnings

import torch

ITERATIONS = 20


def _digits() -> torch.Tensor:
    from mlnotes_zoo.data.digits import DigitsDataModule

    x = DigitsDataModule().reference_data("train").tensors[0]
    return x.reshape(len(x), -1).double()


def _per_iteration_ours(step) -> float:
    times = []
    for _ in range(ITERATIONS):
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def _per_iteration_sklearn(make) -> float:
    from sklearn.exceptions import ConvergenceWarning

    def fit(n: int) -> float:
        estimator = make(n)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ConvergenceWarning)
            estimator.fit(x_np)
        return time.perf_counter() - start

    x_np = _digits().numpy()
    rounds = [(fit(ITERATIONS + 1) - fit(1)) / ITERATIONS for _ in range(3)]
    return statistics.median(rounds)


def mixture_em() -> dict:
    import sklearn
    from sklearn.cluster import KMeans as SkKMeans
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    from mlnotes_zoo import create_model

    x = _digits()
    out: dict = {"data": "digits train split, 1257 x 64, float64", "components": 10,
                 "threads": torch.get_num_threads(), "sklearn": sklearn.__version__}
    for covariance_type in ("full", "diag"):
        gmm = create_model("gmm", in_shape=[64], num_components=10, reg_covar=1e-3,
                           covariance_type=covariance_type)
        gmm.initialize(x, generator=torch.Generator().manual_seed(0))
        p = gmm.precisions_cholesky
        init = dict(weights_init=gmm.weights.numpy().copy(), means_init=gmm.means.numpy().copy(),
                    precisions_init=(p.pow(2) if covariance_type == "diag"
                                     else p @ p.transpose(1, 2)).numpy().copy())
        ours = _per_iteration_ours(lambda g=gmm: g.m_step(g.statistics(x)))
        theirs = _per_iteration_sklearn(lambda n, c=covariance_type, i=init: SkGaussianMixture(
            10, covariance_type=c, reg_covar=1e-3, max_iter=n, tol=0,
            init_params="random_from_data", **i))
        out[f"gmm_{covariance_type}"] = {"ours_s": ours, "sklearn_s": theirs,
                                         "ratio": ours / theirs}
    kmeans = create_model("kmeans", in_shape=[64], num_clusters=10)
    kmeans.initialize(x, generator=torch.Generator().manual_seed(0))
    centres = kmeans.cluster_centers.numpy().copy()
    ours = _per_iteration_ours(lambda: kmeans.m_step(kmeans.statistics(x)))
    theirs = _per_iteration_sklearn(lambda n: SkKMeans(10, init=centres, n_init=1, max_iter=n,
                                                       tol=0, algorithm="lloyd"))
    out["kmeans"] = {"ours_s": ours, "sklearn_s": theirs, "ratio": ours / theirs}
    return out


BENCHMARKS = {"mixture_em": mixture_em}

if __name__ == "__main__":
    import json

    print(json.dumps(mixture_em(), indent=2))
