"""BIC against the number of mixture components on the digits (issue 18): results/gmm_bic.json.

    python scripts/gmm_bic.py                       # full and diagonal covariances, K = 1..20
    python scripts/gmm_bic.py --components 5 10 --covariance full

For each covariance type and K, ``model=gmm``'s network (raw 64 pixels, reg_covar 1e-3, as
configs/model/gmm.yaml) is fitted by EM to the DataModule's training split from its k-means
initialisation (seed 0) and scored: BIC on the training split (lower is better), held-out
log-likelihood per test digit, cluster purity against the test labels, EM iterations; and
scikit-learn's ``GaussianMixture`` from the same initial weights, means and precisions, as a
check (its BIC and held-out log-likelihood). ``--threads N`` sets torch's threads.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def run(covariances: list[str], components: list[int], reg_covar: float) -> list[dict]:
    from sklearn.mixture import GaussianMixture as SkGaussianMixture

    from mlnotes_zoo import create_model
    from mlnotes_zoo.data.digits import DigitsDataModule
    from mlnotes_zoo.models.mixture import cluster_purity

    data = DigitsDataModule()
    train_x, _ = data.reference_data("train").tensors
    test_x, test_y = data.reference_data("test").tensors
    train_np, test_np = (x.reshape(len(x), -1).double().numpy() for x in (train_x, test_x))
    rows = []
    for covariance_type in covariances:
        for k in components:
            gmm = create_model("gmm", num_components=k, covariance_type=covariance_type,
                               reg_covar=reg_covar)
            start = time.perf_counter()
            gmm.initialize(train_x, generator=torch.Generator().manual_seed(0))
            p = gmm.precisions_cholesky
            init = dict(weights_init=gmm.weights.numpy().copy(),
                        means_init=gmm.means.numpy().copy(),
                        precisions_init=(p.pow(2) if covariance_type == "diag"
                                         else p @ p.transpose(1, 2)).numpy())
            gmm.fit(train_x, tol=1e-3)
            seconds = time.perf_counter() - start
            sk = SkGaussianMixture(k, covariance_type=covariance_type, reg_covar=reg_covar,
                                   tol=1e-3, **init).fit(train_np)
            purity = cluster_purity(gmm.predict(test_x), test_y, k, 10)
            rows.append({
                "covariance_type": covariance_type, "components": k,
                "parameters": gmm.num_parameters(),
                "train_bic": round(float(gmm.bic(train_x)), 1),
                "test_log_likelihood": round(float(gmm.score(test_x)), 3),
                "test_purity": round(float(purity), 4),
                "em_iterations": gmm.n_iter_, "seconds": round(seconds, 3),
                "sklearn_train_bic": round(float(sk.bic(train_np)), 1),
                "sklearn_test_log_likelihood": round(float(sk.score(test_np)), 3),
            })
            print(json.dumps(rows[-1]))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--covariance", nargs="+", default=["full", "diag"],
                        choices=["full", "diag"])
    parser.add_argument("--components", nargs="+", type=int,
                        default=[1, 2, 4, 6, 8, 10, 12, 15, 20])
    parser.add_argument("--reg-covar", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", type=Path, default=REPO / "results" / "gmm_bic.json")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    rows = run(args.covariance, args.components, args.reg_covar)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    best = {c: min((r for r in rows if r["covariance_type"] == c), key=lambda r: r["train_bic"])
            ["components"] for c in args.covariance}
    args.out.write_text(json.dumps({"commit": commit, "reg_covar": args.reg_covar,
                                    "lowest_bic_components": best, "rows": rows},
                                   indent=2) + "\n")
    print(f"lowest BIC at K = {best}; wrote {args.out}")


if __name__ == "__main__":
    main()
