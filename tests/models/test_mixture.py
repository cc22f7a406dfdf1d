"""k-means and Gaussian-mixture EM against scikit-learn (an independent implementation),
Monte Carlo and closed forms; the Lightning run against the network's own ``fit``."""

from __future__ import annotations

import os
import socket
import warnings

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp
from sklearn.cluster import KMeans as SkKMeans
from sklearn.datasets import load_digits
from sklearn.decomposition import PCA
from sklearn.exceptions import ConvergenceWarning
from sklearn.mixture import GaussianMixture as SkGaussianMixture

from mlnotes_zoo import create_model
from mlnotes_zoo.lit.mixture import EMStep, LitMixture
from mlnotes_zoo.models import mixture
from mlnotes_zoo.models.mixture import (
    GaussianMixture,
    cluster_purity,
    gaussian_log_prob,
    kmeans_plus_plus,
    squared_distances,
)
from mlnotes_zoo.train import main


def _blobs(seed: int = 0, n: int = 60, d: int = 3) -> np.ndarray:
    rng = np.random.RandomState(seed)
    centres = rng.randn(3, d) * 4
    return np.concatenate([rng.randn(n, d) * (0.5 + i) + c for i, c in enumerate(centres)])


def _start(x: np.ndarray, k: int, covariance_type: str, seed: int = 1):
    """Deliberately poor initial weights, means (data points) and precisions."""
    rng = np.random.RandomState(seed)
    d = x.shape[1]
    weights = rng.dirichlet(np.ones(k))
    means = x[rng.choice(len(x), k, replace=False)]
    if covariance_type == "diag":
        precisions = rng.uniform(0.2, 2, (k, d))
    else:
        a = rng.randn(k, d, d) * 0.3
        precisions = a @ a.transpose(0, 2, 1) + np.eye(d)
    return weights, means, precisions


def _sklearn_lower_bounds(x, k, covariance_type, start, iterations, reg_covar):
    """scikit-learn's lower bound of each EM iteration: one-iteration warm-started fits."""
    weights, means, precisions = start
    sk = SkGaussianMixture(k, covariance_type=covariance_type, weights_init=weights,
                           means_init=means, precisions_init=precisions, max_iter=1,
                           warm_start=True, tol=0, reg_covar=reg_covar)
    bounds = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ConvergenceWarning)
        for _ in range(iterations):
            sk.fit(x)
            bounds.append(sk.lower_bound_)
    return np.array(bounds), sk


def _ours(x, k, covariance_type, start, reg_covar, **kwargs) -> GaussianMixture:
    gmm = create_model("gmm", in_shape=[x.shape[1]], num_components=k,
                       covariance_type=covariance_type, reg_covar=reg_covar, **kwargs)
    weights, means, precisions = (torch.from_numpy(a) for a in start)
    gmm.initialize(torch.from_numpy(x), weights=weights, means=means, precisions=precisions)
    return gmm


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_em_lower_bound_trace_equals_scikit_learns_and_never_decreases(covariance_type):
    x = _blobs()
    start = _start(x, 3, covariance_type)
    expected, sk = _sklearn_lower_bounds(x, 3, covariance_type, start, 25, reg_covar=1e-4)
    gmm = _ours(x, 3, covariance_type, start, reg_covar=1e-4).fit(torch.from_numpy(x),
                                                                   max_iter=25, tol=-1)
    bounds = np.array(gmm.lower_bounds_)
    np.testing.assert_allclose(bounds, expected, rtol=0, atol=1e-8)
    assert np.diff(bounds).min() >= -1e-10  # EM never lowers the likelihood
    assert bounds[-1] - bounds[0] > 0.5  # and the poor start was improved on
    # the parameters after 25 iterations, and everything computed from them
    xt = torch.from_numpy(x)
    np.testing.assert_allclose(gmm.weights.numpy(), sk.weights_, atol=1e-8)
    np.testing.assert_allclose(gmm.means.numpy(), sk.means_, atol=1e-8)
    np.testing.assert_allclose(gmm.covariances().numpy(), sk.covariances_, atol=1e-8)
    np.testing.assert_allclose(gmm.score_samples(xt).numpy(), sk.score_samples(x), atol=1e-8)
    np.testing.assert_allclose(gmm.predict_proba(xt).numpy(), sk.predict_proba(x), atol=1e-8)
    np.testing.assert_array_equal(gmm.predict(xt).numpy(), sk.predict(x))
    assert float(gmm.bic(xt)) == pytest.approx(sk.bic(x), abs=1e-6)
    assert float(gmm.aic(xt)) == pytest.approx(sk.aic(x), abs=1e-6)


def test_digits_held_out_log_likelihood_within_1e_3_of_scikit_learn_from_the_same_init():
    # The target, on the default model (raw 64 pixels, full covariances, reg 1e-3):
    # both run EM to tol=1e-3 from our k-means initialisation.
    digits = load_digits()
    x = digits.images.reshape(-1, 64) / 16
    train, test = x[:1400], x[1400:]
    gmm = create_model("gmm", in_shape=[64], num_components=10, reg_covar=1e-3)
    gmm.initialize(torch.from_numpy(train), generator=torch.Generator().manual_seed(0))
    start = (gmm.weights.numpy().copy(), gmm.means.numpy().copy(),
             (gmm.precisions_cholesky @ gmm.precisions_cholesky.transpose(1, 2)).numpy())
    gmm.fit(torch.from_numpy(train), tol=1e-3)
    sk = SkGaussianMixture(10, reg_covar=1e-3, tol=1e-3, weights_init=start[0],
                           means_init=start[1], precisions_init=start[2]).fit(train)
    assert gmm.n_iter_ == sk.n_iter_ and gmm.converged_
    assert abs(float(gmm.score(torch.from_numpy(test))) - sk.score(test)) < 1e-3
    assert float(gmm.bic(torch.from_numpy(train))) == pytest.approx(sk.bic(train), rel=1e-9)


def test_statistics_summed_over_batches_give_the_full_batch_m_step():
    x = torch.from_numpy(_blobs(seed=3))
    start = _start(x.numpy(), 3, "full")
    whole, batched = (_ours(x.numpy(), 3, "full", start, reg_covar=1e-6) for _ in range(2))
    whole.m_step(whole.statistics(x))
    parts = [batched.statistics(chunk) for chunk in x.split(37)]
    batched.m_step({k: sum(p[k] for p in parts) for k in parts[0]})
    for name, value in whole.state_dict().items():
        torch.testing.assert_close(batched.state_dict()[name], value, rtol=0, atol=1e-12)


def test_gaussian_log_prob_matches_torch_distributions():
    torch.manual_seed(0)
    x, means = torch.randn(5, 4, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    a = torch.randn(3, 4, 4, dtype=torch.float64)
    precision = a @ a.transpose(1, 2) + torch.eye(4, dtype=torch.float64)
    factor = torch.linalg.cholesky(precision)  # lower triangular, precision = P Pᵀ
    mvn = torch.distributions.MultivariateNormal(means, precision_matrix=precision)
    torch.testing.assert_close(gaussian_log_prob(x, means, factor), mvn.log_prob(x[:, None]))
    scale = torch.rand(3, 4, dtype=torch.float64) + 0.5
    normal = torch.distributions.Normal(means, 1 / scale)
    torch.testing.assert_close(gaussian_log_prob(x, means, scale),
                               normal.log_prob(x[:, None]).sum(-1))


@pytest.mark.parametrize("covariance_type", ["full", "diag"])
def test_samples_have_the_mixtures_moments(covariance_type):
    x = _blobs(seed=4)
    gmm = _ours(x, 3, covariance_type, _start(x, 3, covariance_type), reg_covar=1e-6)
    gmm.fit(torch.from_numpy(x), max_iter=5, tol=-1)
    samples, components = gmm.sample(200_000, generator=torch.Generator().manual_seed(0))
    counts = torch.bincount(components, minlength=3).double() / len(components)
    torch.testing.assert_close(counts, gmm.weights, atol=5e-3, rtol=0)
    mean = (gmm.weights[:, None] * gmm.means).sum(0)  # E[x] = Σ w_k μ_k
    cov = gmm.covariances() if covariance_type == "full" else torch.diag_embed(gmm.covariances())
    centred = gmm.means - mean  # Cov[x] = Σ w_k (Σ_k + (μ_k − m)(μ_k − m)ᵀ)
    second = (gmm.weights[:, None, None] * (cov + centred[:, :, None] * centred[:, None])).sum(0)
    torch.testing.assert_close(samples.mean(0), mean, atol=0.05, rtol=0)
    torch.testing.assert_close(torch.cov(samples.T), second, atol=0.1, rtol=0.02)


@pytest.mark.parametrize("block", [None, 64])
def test_kmeans_from_the_same_centres_gives_scikit_learns_labels_and_inertia(monkeypatch, block):
    # _BLOCK = 64 runs the large-N path (blocks of a few rows and a remainder, the first
    # minimum found by the sign pass) on small data; None the one-block path (min)
    if block is not None:
        monkeypatch.setattr(mixture, "_BLOCK", block)
    x = _blobs(seed=5, d=4)
    for seed in range(3):
        centres = x[np.random.RandomState(seed).choice(len(x), 3, replace=False)]
        sk = SkKMeans(3, init=centres, n_init=1, algorithm="lloyd", tol=0).fit(x)
        ours = create_model("kmeans", in_shape=[4], num_clusters=3)
        ours.initialize(torch.from_numpy(x), centres=torch.from_numpy(centres))
        ours.fit(torch.from_numpy(x))
        np.testing.assert_array_equal(ours.labels_.numpy(), sk.labels_)
        assert ours.inertia_ == pytest.approx(sk.inertia_, rel=1e-12)
        np.testing.assert_allclose(ours.cluster_centers.numpy(), sk.cluster_centers_, atol=1e-10)
        assert float(ours.score(torch.from_numpy(x))) == pytest.approx(sk.score(x), rel=1e-12)


@pytest.mark.parametrize("block", [None, 64])
def test_kmeans_takes_the_first_of_tied_centres_in_one_block_and_in_many(monkeypatch, block):
    # _BLOCK = 64 runs the large-N path (blocks of a few rows and a remainder, the first
    # minimum found by the sign pass) on small data; None the one-block path (min)
    if block is not None:
        monkeypatch.setattr(mixture, "_BLOCK", block)
    # grid points and grid centres: exactly equal distances; the first centre wins (numpy's
    # argmin, scikit-learn's rule)
    rng = np.random.RandomState(3)
    x = rng.randint(0, 4, (300, 3)).astype(np.float64)
    grid = np.unique(x, axis=0)
    centres = grid[rng.choice(len(grid), 6, replace=False)]
    d2 = ((x[:, None] - centres[None]) ** 2).sum(-1)
    assert (d2 == d2.min(1, keepdims=True)).sum(1).max() > 1  # ties
    first = d2.argmin(1)
    ours = create_model("kmeans", in_shape=[3], num_clusters=6)
    ours.initialize(torch.from_numpy(x), centres=torch.from_numpy(centres))
    stats = ours.statistics(torch.from_numpy(x))
    np.testing.assert_array_equal(stats["n"].numpy(), np.bincount(first, minlength=6))
    np.testing.assert_array_equal(stats["sx"].numpy(),
                                  [x[first == k].sum(0) for k in range(6)])
    assert float(stats["inertia"]) == d2.min(1).sum()
    np.testing.assert_array_equal(ours.predict(torch.from_numpy(x)).numpy(), first)


def test_kmeans_plus_plus_picks_data_points_one_in_each_far_apart_blob():
    # D² sampling makes a second point of an already-seeded blob ~1e-4 likely
    rng = np.random.RandomState(6)
    x = torch.from_numpy(np.concatenate([rng.randn(200, 2) + 50 * i for i in range(3)]))
    for seed in range(5):
        centres = kmeans_plus_plus(x, 3, generator=torch.Generator().manual_seed(seed))
        index = [int((x == c).all(1).nonzero()[0]) for c in centres]  # each is a data point
        assert sorted(i // 200 for i in index) == [0, 1, 2]
    with pytest.raises(ValueError, match="2 points cannot seed 3 clusters"):
        kmeans_plus_plus(x[:2], 3)


def test_squared_distances_and_purity_closed_forms():
    x, c = torch.randn(7, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    torch.testing.assert_close(squared_distances(x, c), torch.cdist(x, c).pow(2))
    clusters = torch.tensor([0, 0, 0, 1, 1, 2])
    labels = torch.tensor([3, 3, 1, 2, 2, 0])
    # cluster 0: 2 of its 3 are 3s; cluster 1: both 2s; cluster 2: its one 0 -> 5 / 6
    assert float(cluster_purity(clusters, labels, 3, 4)) == pytest.approx(5 / 6)


def test_pca_option_projects_on_scikit_learns_principal_directions():
    x = load_digits().images[:500].reshape(-1, 64) / 16
    gmm = create_model("gmm", in_shape=[64], num_components=3, pca_dim=5)
    gmm.initialize(torch.from_numpy(x), generator=torch.Generator().manual_seed(0))
    ours = gmm.projection(torch.from_numpy(x), "test").numpy()
    theirs = PCA(5).fit_transform(x)
    np.testing.assert_allclose(np.abs(ours), np.abs(theirs), atol=1e-8)  # up to signs
    assert gmm.means.shape == (3, 5) and gmm.sample(4)[0].shape == (4, 64)
    with pytest.raises(ValueError, match="pca_dim=65 must be at most the 64"):
        create_model("gmm", in_shape=[64], pca_dim=65)


def test_a_singular_covariance_asks_for_reg_covar():
    x = torch.zeros(10, 2, dtype=torch.float64)
    gmm = create_model("gmm", in_shape=[2], num_components=1, reg_covar=0.0)
    with pytest.raises(ValueError, match="singular; raise reg_covar"):
        gmm.fit(x)


@pytest.mark.slow
def test_lightning_epochs_are_the_em_iterations_of_fit(make_cfg, tmp_path):
    # train.py with batches of 100 (several per epoch): each epoch's lower bound equals the
    # network's full-batch EM from the same initialisation; the run writes its metrics.
    cfg = make_cfg("model=gmm", "data.batch_size=100", "trainer.max_epochs=4",
                   "trainer.limit_train_batches=1.0", "model.tol=0", "model.net.reg_covar=1e-2",
                   "model.net.covariance_type=diag", "test=true", "logger=csv")
    metrics = main(cfg)
    checkpoint = torch.load(tmp_path / "checkpoints" / "last.ckpt", weights_only=True)
    state = checkpoint["optimizer_states"][0]["state"]
    bounds = next(iter(state.values()))["lower_bounds"]
    assert checkpoint["global_step"] == 4 * 13  # 1,257 training digits in batches of 100
    lit = LitMixture.load_from_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert lit.net.covariance_type == "diag" and len(bounds) == 4

    from mlnotes_zoo.data.digits import DigitsDataModule

    train = DigitsDataModule().reference_data("train").tensors[0]
    # the same start: rebuild the first epoch's parameters from the run's seed
    torch.manual_seed(cfg.seed)
    fresh = create_model("gmm", in_shape=[1, 8, 8], reg_covar=1e-2, covariance_type="diag")
    generator = torch.Generator().manual_seed(int(torch.randint(2**62, ())))
    fresh.initialize(train, generator=generator)
    fresh.fit(train, max_iter=4, tol=-1)
    torch.testing.assert_close(bounds, torch.tensor(fresh.lower_bounds_, dtype=bounds.dtype),
                               rtol=0, atol=1e-9)
    assert {"test/log_likelihood", "test/purity", "test/train_bic"} <= metrics.keys()
    assert 0.5 < metrics["test/purity"] <= 1


# -- two gloo ranks, each with half the data == one process with all of it ---------------------
def _em_rank(rank: int, port: int, results) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=2)
    try:
        x = _blobs(seed=7)
        gmm = _ours(x, 3, "full", _start(x, 3, "full"), reg_covar=1e-6)
        optimizer = EMStep(gmm)
        shard = torch.from_numpy(x).chunk(2)[rank]
        for _ in range(3):  # three epochs of two batches each
            first, second = shard.chunk(2)
            optimizer.step(statistics=gmm.statistics(first))
            optimizer.step(statistics=gmm.statistics(second), m_step=True)
        results[rank] = (gmm.state_dict(), optimizer.lower_bounds.clone())
    finally:
        dist.destroy_process_group()


@pytest.mark.dist
def test_two_ddp_ranks_take_the_full_data_m_step():
    os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    results = mp.Manager().dict()
    mp.spawn(_em_rank, args=(port, results), nprocs=2, join=True)
    x = _blobs(seed=7)
    single = _ours(x, 3, "full", _start(x, 3, "full"), reg_covar=1e-6).fit(
        torch.from_numpy(x), max_iter=3, tol=-1)
    for rank in range(2):
        state, bounds = results[rank]
        for name, value in single.state_dict().items():
            torch.testing.assert_close(state[name], value, rtol=0, atol=1e-10, msg=name)
        torch.testing.assert_close(bounds, torch.tensor(single.lower_bounds_, dtype=bounds.dtype),
                                   rtol=0, atol=1e-10)
