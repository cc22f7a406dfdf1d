"""k-means (Lloyd 1982, k-means++ initialisation of Arthur & Vassilvitskii 2007) and Gaussian
mixtures fitted by Expectation-Maximization (Dempster et al. 1977), in torch, with a
scikit-learn-like surface: ``fit``, ``predict``, ``predict_proba``, ``score``,
``score_samples``, ``bic``, ``aic``, ``sample``.

Note ``003`` ("Expectation Maximization"): EM "is like K-means except that we have [a]
probability that every sample belong[s] to a distro, instead of 0-1". Both models here
are fitted the same way, in two steps over the data:

    E step    r_nk = w_k N(x_n; μ_k, Σ_k) / Σ_j w_j N(x_n; μ_j, Σ_j)      (k-means: r_nk ∈ {0, 1},
                                                                       1 for the nearest centre)
    M step    N_k = Σ_n r_nk,  w_k = N_k / N,  μ_k = Σ_n r_nk x_n / N_k,
              Σ_k = Σ_n r_nk (x_n − μ_k)(x_n − μ_k)ᵀ / N_k + reg_covar·I

The E step is written as *sufficient statistics* summed over batches
(:meth:`GaussianMixture.statistics`), so a data set that does not fit in memory, or a
Lightning epoch of batches, gives exactly the full-batch M step (:meth:`~GaussianMixture.m_step`).
The per-iteration lower bound is scikit-learn's: the mean log-likelihood of the data under
the parameters *before* that iteration's M step; EM never decreases it.

Parameters are buffers, not ``nn.Parameter``s: nothing here is fitted by gradients. The
Gaussians keep scikit-learn's parametrisation, a triangular factor P_k of each precision
matrix (Σ_k⁻¹ = P_k P_kᵀ), so log N(x; μ, Σ) = −½ (D log 2π + ‖(x − μ)ᵀ P‖²) + Σ_d log P_dd.
Computed in float64 by default, as scikit-learn does: on raw pixels some variances are
as small as ``reg_covar`` and float32 sums lose them.

``pca_dim`` > 0 fits the model to a PCA projection of the inputs (fitted in
:meth:`initialize`); likelihoods, BIC and samples are then those of the projected data
(samples mapped back to the input space).
"""

from __future__ import annotations

import math
from typing import Annotated, Literal, NamedTuple

import torch
from torch import Tensor, nn

from mlnotes_zoo.constraints import Field, NonNegativeFloat, NonNegativeInt, PositiveInt
from mlnotes_zoo.models.shared import check_tensor
from mlnotes_zoo.registry import register_model

OBJECTIVE = ["gaussian_log_prob", "squared_distances", "cluster_purity"]
__all__ = ["GaussianMixture", "KMeans", "MixtureOutput", "KMeansOutput", "kmeans_plus_plus",
           *OBJECTIVE]

_LOG_2PI = math.log(2 * math.pi)
_BLOCK = 1 << 16  # k-means distances per CPU block: 512 KiB in float64, in L2
Dtype = Literal["float32", "float64"]
Shape = Annotated[tuple[PositiveInt, ...], Field(min_length=1)]


# -- the maths both models use ---------------------------------------------------------------
def squared_distances(x: Tensor, centres: Tensor) -> Tensor:
    """‖x_n − c_k‖² for x (N, D) and centres (K, D): (N, K), never negative."""
    # ‖x‖² − 2 x·c + ‖c‖² is one matmul; clamp the round-off below zero
    d2 = x.pow(2).sum(-1, keepdim=True) - 2 * x @ centres.T + centres.pow(2).sum(-1)
    return d2.clamp_min(0)


def gaussian_log_prob(x: Tensor, means: Tensor, precisions_cholesky: Tensor) -> Tensor:
    """log N(x_n; μ_k, Σ_k) for x (N, D), means (K, D) and precision factors P_k with
    Σ_k⁻¹ = P_k P_kᵀ: (K, D, D) triangular (full) or (K, D) (diagonal, P = diag σ⁻¹): (N, K)."""
    n, d = x.shape
    k = means.shape[0]
    if precisions_cholesky.dim() == 2:  # diagonal
        log_det = precisions_cholesky.log().sum(-1)  # log |P_k| = −½ log |Σ_k|, (K,)
        precisions = precisions_cholesky.pow(2)  # 1/σ²
        # ‖y‖² = Σ_d (x_d − μ_kd)²/σ²_kd = Σ μ²/σ² − 2 x·(μ/σ²) + x²·(1/σ²): matmuls only,
        # laid out (K, N) (faster on CPU for few components), returned as an (N, K) view
        sq = torch.addmm((means.pow(2) * precisions).sum(-1)[:, None], means * precisions, x.T,
                         alpha=-2).addmm_(precisions, x.pow(2).T).T
    else:
        log_det = torch.diagonal(precisions_cholesky, dim1=-2, dim2=-1).log().sum(-1)
        # y_nk = (x_n − μ_k)ᵀ P_k = x_n P_k − μ_k P_k, all K at once: one (N, D)·(D, K·D) addmm
        stacked = precisions_cholesky.permute(1, 0, 2).reshape(d, k * d)  # [P_1 … P_K]
        shift = torch.einsum("kd,kde->ke", means, precisions_cholesky).reshape(k * d)
        y = torch.addmm(shift, x, stacked, alpha=1, beta=-1)  # (N, K·D)
        sq = y.mul_(y).view(n, k, d).sum(-1)  # in place: the (N, K·D) buffer is the largest
    # log N = −½ (D log 2π + ‖y‖²) + log |P|
    return -0.5 * (d * _LOG_2PI + sq) + log_det


def cluster_purity(clusters: Tensor, labels: Tensor, num_clusters: int,
                   num_classes: int) -> Tensor:
    """Purity = (1/N) Σ_k max_c |{n : cluster n = k, label n = c}|, in [0, 1]: the accuracy of
    labelling each cluster with its commonest class."""
    table = torch.zeros(num_clusters, num_classes, dtype=torch.long, device=clusters.device)
    table.index_put_((clusters.long(), labels.long()), torch.ones_like(clusters, dtype=torch.long),
                     accumulate=True)
    return table.max(dim=1).values.sum() / max(len(clusters), 1)


def kmeans_plus_plus(x: Tensor, num_clusters: int, *, generator: torch.Generator | None = None,
                     local_trials: int | None = None) -> Tensor:
    """k-means++ centres (K, D) from the rows of x (N, D): the first uniformly at random, each
    next one drawn with probability ∝ D(x)², the squared distance to the nearest centre so far
    (Arthur & Vassilvitskii 2007). Greedy, as scikit-learn: ``local_trials`` (2 + ⌊log K⌋)
    candidates are drawn and the one that lowers Σ D(x)² most is kept."""
    n = x.shape[0]
    if n < num_clusters:
        raise ValueError(f"k-means++: {n} points cannot seed {num_clusters} clusters")
    trials = local_trials or 2 + int(math.log(num_clusters))
    first = torch.randint(n, (1,), generator=generator, device="cpu").item()
    centres = [x[first]]
    closest = squared_distances(x, x[first : first + 1]).squeeze(1)  # (N,)
    for _ in range(1, num_clusters):
        weights = closest.cpu().double()
        if weights.sum() <= 0:  # every point sits on a centre: any other point will do
            weights = torch.ones_like(weights)
        candidates = torch.multinomial(weights, trials, replacement=True, generator=generator)
        d2 = torch.minimum(closest[:, None], squared_distances(x, x[candidates.to(x.device)]))
        best = int(d2.sum(0).argmin())
        centres.append(x[int(candidates[best])])
        closest = d2[:, best]
    return torch.stack(centres)


class _Projection(nn.Module):
    """Flattens (B, *in_shape) inputs and, with ``pca_dim`` > 0, projects them on the leading
    principal directions of the data given to :meth:`fit` (buffers ``pca_mean``,
    ``pca_components``)."""

    def __init__(self, in_shape: tuple[int, ...], pca_dim: int, dtype: torch.dtype) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.in_features = math.prod(self.in_shape)
        self.pca_dim = pca_dim
        self.dtype = dtype
        if pca_dim > self.in_features:
            raise ValueError(f"pca_dim={pca_dim} must be at most the {self.in_features} input "
                             "features")
        if pca_dim:
            self.register_buffer("pca_mean", torch.zeros(self.in_features, dtype=dtype))
            self.register_buffer("pca_components", torch.eye(pca_dim, self.in_features,
                                                             dtype=dtype))

    @property
    def features(self) -> int:
        return self.pca_dim or self.in_features

    def fit(self, flat: Tensor) -> None:
        if self.pca_dim:
            self.pca_mean.copy_(flat.mean(0))
            # right singular vectors of the centred data = principal directions
            _, _, vh = torch.linalg.svd(flat - self.pca_mean, full_matrices=False)
            self.pca_components.copy_(vh[: self.pca_dim])

    def forward(self, x: Tensor, where: str) -> Tensor:
        check_tensor(x, "x", ("B", *self.in_shape), where=where)
        flat = x.reshape(x.shape[0], -1).to(self.dtype)
        return (flat - self.pca_mean) @ self.pca_components.T if self.pca_dim else flat

    def inverse(self, z: Tensor) -> Tensor:
        flat = z @ self.pca_components + self.pca_mean if self.pca_dim else z
        return flat.reshape(-1, *self.in_shape)


# -- k-means -------------------------------------------------------------------------------
class KMeansOutput(NamedTuple):
    sq_distances: Tensor  # ‖x_n − c_k‖², (B, K)
    labels: Tensor  # nearest centre, (B,) int64


@register_model("kmeans")
class KMeans(nn.Module):
    """k-means: K centres, each point belongs to its nearest; Lloyd's iterations alternate that
    assignment (the E step with 0-1 responsibilities) and moving each centre to the mean of its
    points (the M step). The hard-assignment limit of :class:`GaussianMixture` with equal
    weights and shared covariance σ²I as σ → 0.

    Args:
        in_shape: shape of one input (``(1, 8, 8)`` digits; ``(D,)`` for vectors).
        num_clusters: K.
        pca_dim: 0 for the raw inputs; else cluster their projection on this many principal
            directions (fitted in :meth:`initialize`).
        dtype: of the centres and the sums.

    ``forward(x)`` gives :class:`KMeansOutput`; ``score(x)`` is minus the inertia
    Σ_n min_k ‖x_n − c_k‖², as scikit-learn's ``KMeans.score``.
    """

    def __init__(self, *, in_shape: Shape = (1, 8, 8),
                 num_clusters: PositiveInt = 10, pca_dim: NonNegativeInt = 0,
                 dtype: Dtype = "float64") -> None:
        super().__init__()
        torch_dtype = getattr(torch, dtype)
        self.projection = _Projection(tuple(in_shape), pca_dim, torch_dtype)
        self.in_shape = self.projection.in_shape
        self.num_clusters = num_clusters
        self.register_buffer("cluster_centers", torch.zeros(num_clusters, self.projection.features,
                                                            dtype=torch_dtype))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    # -- fitting ------------------------------------------------------------------------
    @torch.no_grad()
    def initialize(self, x: Tensor, *, centres: Tensor | None = None,
                   generator: torch.Generator | None = None) -> None:
        """PCA (if any) fitted to ``x``; centres given (in the projected space) or k-means++."""
        self.projection.fit(x.reshape(x.shape[0], -1).to(self.cluster_centers))
        z = self.projection(x, "KMeans.initialize")
        self.cluster_centers.copy_(centres if centres is not None
                                   else kmeans_plus_plus(z, self.num_clusters, generator=generator))
        self.fitted.fill_(True)

    @torch.no_grad()
    def statistics(self, x: Tensor) -> dict[str, Tensor]:
        """The E step's sums over the batch: N_k, Σ x_n (points of cluster k), inertia, N."""
        z = self.projection(x, "KMeans.statistics")
        nearest, labels = self._assign(z)
        n, sx = self._sums(z, labels)
        flat = z.reshape(-1)
        return {"n": n, "sx": sx, "inertia": nearest.sum() + flat.dot(flat),  # Σ ‖x‖² + …
                "count": z.new_tensor(len(z))}

    def _assign(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """min_k (‖c_k‖² − 2 c_k·x_n) and its first argmin k, for each row of z (N, D):
        argmin_k ‖x − c_k‖² without the ‖x‖² term, as scikit-learn's Lloyd step."""
        centres = self.cluster_centers
        k, n = centres.shape[0], z.shape[0]
        half = torch.linalg.vecdot(centres, centres).unsqueeze(1)  # ‖c_k‖², (K, 1)
        # one addmm laid out (K, N): twice as fast as (N, K) on CPU for few centres (the long
        # side is BLAS's n)
        rows = (_BLOCK // k) | 1  # odd: a power-of-two row stride makes a column's K
        if n <= rows or z.device.type != "cpu":  # entries share cache sets
            return torch.addmm(half, centres, z.T, alpha=-2).min(0)
        # Large N on CPU: in blocks of _BLOCK distances, each read back while in cache, and
        # the first minimum found by vectorised passes (torch's min with indices is a scalar
        # loop, 1.5x slower at 50,000 x 50): with m a column's minimum, sign(d − m) is 0 at
        # its minima and 1 elsewhere, so min_k (k + K·sign(d_k − m)) is the first k with
        # d_k = m, the index min (and scikit-learn) would give.
        nearest = z.new_empty(n)
        labels = torch.empty(n, dtype=torch.long, device=z.device)
        block = z.new_empty(k, rows)
        index = torch.arange(k, dtype=z.dtype, device=z.device).unsqueeze(1)
        for start in range(0, n, rows):
            part = z[start:start + rows]
            out = block if len(part) == rows else block[:, :len(part)]
            torch.addmm(half, centres, part.T, alpha=-2, out=out)
            least = torch.amin(out, 0, out=nearest[start:start + rows])
            torch.add(index, out.sub_(least).sign_(), alpha=k, out=out)
            # a point with NaN distances gets 0; its nearest, and so the inertia, is NaN
            labels[start:start + rows] = out.amin(0).nan_to_num_(0)
        return nearest, labels

    def _sums(self, z: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """N_k and Σ x_n over the points of cluster k: responsibilities r_nk ∈ {0, 1}, N_k by
        counting, Σ x_n by adding each row into its cluster's."""
        k = self.num_clusters
        return (torch.bincount(labels, minlength=k).to(z.dtype),
                z.new_zeros(k, z.shape[1]).index_add_(0, labels, z))

    @torch.no_grad()
    def m_step(self, stats: dict[str, Tensor]) -> None:
        """c_k = Σ x_n / N_k over the points of cluster k; an empty cluster keeps its centre
        (scikit-learn moves it to a far point instead)."""
        self._move(stats["n"], stats["sx"])

    def _move(self, n: Tensor, sx: Tensor) -> None:
        n = n.unsqueeze(1)  # an empty cluster's 0/0 is not taken
        torch.where(n > 0, sx / n, self.cluster_centers, out=self.cluster_centers)

    @torch.no_grad()
    def fit(self, x: Tensor, *, max_iter: PositiveInt = 300,
            generator: torch.Generator | None = None) -> KMeans:
        """Lloyd's iterations until no label changes (or ``max_iter``); k-means++ first unless
        already fitted. Returns self; ``inertia_``, ``labels_`` and ``n_iter_`` as scikit-learn."""
        if not self.fitted:
            self.initialize(x, generator=generator)
        z = self.projection(x, "KMeans.fit")
        nearest, labels = self._assign(z)
        for self.n_iter_ in range(1, max_iter + 1):
            self._move(*self._sums(z, labels))  # the M step: statistics' sums, no inertia
            nearest, new = self._assign(z)  # the labels of the moved centres
            if torch.equal(new, labels):
                break
            labels = new
        self.labels_ = new
        flat = z.reshape(-1)
        self.inertia_ = float(nearest.sum() + flat.dot(flat))
        return self

    # -- using it -----------------------------------------------------------------------
    def forward(self, x: Tensor) -> KMeansOutput:
        z = self.projection(x, "KMeans.forward")
        d2 = squared_distances(z, self.cluster_centers)
        return KMeansOutput(d2, d2.argmin(1))

    def predict(self, x: Tensor) -> Tensor:
        return self(x).labels

    def score(self, x: Tensor) -> Tensor:
        """−Σ_n min_k ‖x_n − c_k‖² (minus the inertia)."""
        return -self(x).sq_distances.min(1).values.sum()

    def example_input(self, batch_size: int = 2) -> Tensor:
        return torch.rand(batch_size, *self.in_shape)


# -- Gaussian mixture ---------------------------------------------------------------------
class MixtureOutput(NamedTuple):
    log_resp: Tensor  # log r_nk, the E step's log responsibilities, (B, K)
    log_likelihood: Tensor  # log p(x_n) = log Σ_k w_k N(x_n; μ_k, Σ_k), (B,)


@register_model("gmm")
class GaussianMixture(nn.Module):
    """Mixture of K Gaussians p(x) = Σ_k w_k N(x; μ_k, Σ_k), fitted by EM (see the module).

    Args:
        in_shape: shape of one input (``(1, 8, 8)`` digits; ``(D,)`` for vectors).
        num_components: K.
        covariance_type: ``"full"`` (Σ_k any positive definite matrix) or ``"diag"``.
        reg_covar: added to the diagonal of every Σ_k in the M step, as scikit-learn does:
            keeps Σ_k invertible when a component's points do not span every direction
            (a pixel that is always 0).
        pca_dim: 0 for the raw inputs; else model their projection on this many principal
            directions (fitted in :meth:`initialize`).
        init_params: ``"kmeans"`` (responsibilities 0/1 from k-means++ and ``kmeans_iter``
            Lloyd iterations, as scikit-learn's default) or ``"random"`` (uniform random
            responsibilities, normalised).
        kmeans_iter: Lloyd iterations of the ``"kmeans"`` initialisation.
        dtype: of the parameters and the sums (float64 as scikit-learn; see the module).

    ``forward(x)`` gives :class:`MixtureOutput`: log responsibilities and log p(x).
    """

    def __init__(self, *, in_shape: Shape = (1, 8, 8),
                 num_components: PositiveInt = 10,
                 covariance_type: Literal["full", "diag"] = "full",
                 reg_covar: NonNegativeFloat = 1e-6, pca_dim: NonNegativeInt = 0,
                 init_params: Literal["kmeans", "random"] = "kmeans",
                 kmeans_iter: PositiveInt = 100, dtype: Dtype = "float64") -> None:
        super().__init__()
        torch_dtype = getattr(torch, dtype)
        self.projection = _Projection(tuple(in_shape), pca_dim, torch_dtype)
        self.in_shape = self.projection.in_shape
        self.num_components = num_components
        self.covariance_type = covariance_type
        self.reg_covar = reg_covar
        self.init_params = init_params
        self.kmeans_iter = kmeans_iter
        k, d = num_components, self.projection.features
        self.register_buffer("weights", torch.full((k,), 1 / k, dtype=torch_dtype))
        self.register_buffer("means", torch.zeros(k, d, dtype=torch_dtype))
        factor = torch.ones(k, d, dtype=torch_dtype)
        self.register_buffer("precisions_cholesky",
                             factor if covariance_type == "diag" else torch.diag_embed(factor))
        self.register_buffer("fitted", torch.zeros((), dtype=torch.bool))

    @property
    def features(self) -> int:
        """D, the dimension the Gaussians live in (``pca_dim`` or the flattened input)."""
        return self.projection.features

    # -- fitting ------------------------------------------------------------------------
    @torch.no_grad()
    def initialize(self, x: Tensor, *, weights: Tensor | None = None, means: Tensor | None = None,
                   precisions: Tensor | None = None,
                   generator: torch.Generator | None = None) -> None:
        """Fit the PCA (if any) to ``x``, then the first parameters: one M step from
        k-means or random responsibilities, overridden by the ``weights`` (K,), ``means``
        (K, D) and ``precisions`` (K, D, D) or (K, D) given (as scikit-learn's ``*_init``)."""
        self.projection.fit(x.reshape(x.shape[0], -1).to(self.means))
        z = self.projection(x, "GaussianMixture.initialize")
        if self.init_params == "kmeans":
            kmeans = KMeans(in_shape=(self.features,), num_clusters=self.num_components,
                            dtype=str(z.dtype).removeprefix("torch.")).to(z.device)
            kmeans.fit(z, max_iter=self.kmeans_iter, generator=generator)
            resp = torch.nn.functional.one_hot(kmeans.labels_, self.num_components).to(z.dtype)
        else:
            resp = torch.rand(len(z), self.num_components, generator=generator,
                              dtype=z.dtype).to(z.device)
            resp /= resp.sum(1, keepdim=True)
        self.means.zero_()  # statistics are taken around the current means
        self.m_step(self._statistics(z, resp))
        if weights is not None:
            self.weights.copy_(weights)
        if means is not None:
            self.means.copy_(means)
        if precisions is not None:
            precisions = precisions.to(self.means)
            self.precisions_cholesky.copy_(precisions.sqrt() if self.covariance_type == "diag"
                                           else torch.linalg.cholesky(precisions))
        self.fitted.fill_(True)

    def _statistics(self, z: Tensor, resp: Tensor) -> dict[str, Tensor]:
        # Sums around the current means μ_k: a shift that leaves the M step exact and keeps
        # Σ r (x − μ)(x − μ)ᵀ / N_k − d dᵀ free of most of the cancellation of E[xxᵀ] − m mᵀ
        # (full covariances are summed around the mixture's mean first, which removes any
        # common offset of the data); diagonal ones are expanded into matmuls, as scikit-learn.
        n = resp.sum(0)  # N_k (over the batch)
        if self.covariance_type == "diag":
            rz = resp.T @ z  # Σ r x
            # Σ r (x − μ)² = Σ r x² − 2 μ Σ r x + N μ²: the diagonal alone, by matmuls
            sxx = resp.T @ z.pow(2) - 2 * self.means * rz + n[:, None] * self.means.pow(2)
            return {"n": n, "sx": rz - n[:, None] * self.means, "sxx": sxx}
        # Full: all K scatter matrices by one (D, B)·(B, K·D) matmul (1.6× faster than K
        # of them batched) around c = Σ w_k μ_k, a centre that is the same for every batch,
        # then moved to each μ_k exactly: with d = μ_k − c and s = Σ r (x − c),
        #   Σ r (x − μ)(x − μ)ᵀ = Σ r (x − c)(x − c)ᵀ − d sᵀ − s dᵀ + N_k d dᵀ
        k, dim = self.means.shape
        centre = self.weights @ self.means  # (D,)
        zc = z - centre
        rz = resp.T @ zc  # s = Σ r (x − c), (K, D)
        d = self.means - centre  # (K, D)
        weighted = (resp[:, :, None] * zc[:, None, :]).reshape(len(z), k * dim)  # r_nk (x − c)
        scatter = (zc.T @ weighted).view(dim, k, dim).transpose(0, 1)  # (K, D, D)
        sxx = (scatter - d[:, :, None] * rz[:, None, :] - rz[:, :, None] * d[:, None, :]
               + n[:, None, None] * d[:, :, None] * d[:, None, :])
        return {"n": n, "sx": rz - n[:, None] * d, "sxx": sxx}

    @torch.no_grad()
    def statistics(self, x: Tensor) -> dict[str, Tensor]:
        """The E step on a batch, as sums an M step needs: N_k, Σ r (x − μ_k),
        Σ r (x − μ_k)(x − μ_k)ᵀ (diagonal only, for ``"diag"``), Σ log p(x_n), N."""
        z = self.projection(x, "GaussianMixture.statistics")
        log_resp, log_likelihood = self._e_step(z)
        return {**self._statistics(z, log_resp.exp()),
                "log_likelihood": log_likelihood.sum(), "count": z.new_tensor(len(z))}

    @torch.no_grad()
    def m_step(self, stats: dict[str, Tensor]) -> None:
        """w_k, μ_k, Σ_k (see the module) from sums over all the data, then P_k."""
        eps = torch.finfo(self.means.dtype).eps
        n = stats["n"] + 10 * eps  # as scikit-learn: no division by an empty component's 0
        shift = stats["sx"] / n[:, None]  # m_k − μ_k
        if self.covariance_type == "diag":
            cov = stats["sxx"] / n[:, None] - shift.pow(2) + self.reg_covar
            self.precisions_cholesky.copy_(cov.rsqrt())
        else:
            eye = torch.eye(self.features, dtype=n.dtype, device=n.device)
            cov = stats["sxx"] / n[:, None, None] - shift[:, :, None] * shift[:, None, :]
            cov = cov + self.reg_covar * eye
            try:
                chol = torch.linalg.cholesky(cov)  # Σ = L Lᵀ
            except torch.linalg.LinAlgError as err:
                raise ValueError("GaussianMixture: a covariance matrix is singular; raise "
                                 f"reg_covar (now {self.reg_covar:g})") from err
            # P = L⁻ᵀ: Σ⁻¹ = L⁻ᵀ L⁻¹ = P Pᵀ, P upper triangular
            self.precisions_cholesky.copy_(torch.linalg.solve_triangular(
                chol, eye.expand_as(chol), upper=False).transpose(1, 2))
        self.means.add_(shift)
        self.weights.copy_(n / n.sum())

    def _e_step(self, z: Tensor) -> tuple[Tensor, Tensor]:
        weighted = gaussian_log_prob(z, self.means, self.precisions_cholesky) + self.weights.log()
        log_likelihood = torch.logsumexp(weighted, dim=1)  # log p(x_n)
        return weighted - log_likelihood[:, None], log_likelihood  # log r_nk

    @torch.no_grad()
    def fit(self, x: Tensor, *, max_iter: PositiveInt = 100, tol: NonNegativeFloat = 1e-3,
            generator: torch.Generator | None = None) -> GaussianMixture:
        """EM until the lower bound gains less than ``tol`` (or ``max_iter``), as scikit-learn;
        initialised first unless already fitted. Records ``lower_bounds_`` (one per
        iteration), ``lower_bound_``, ``n_iter_``, ``converged_``."""
        if not self.fitted:
            self.initialize(x, generator=generator)
        self.lower_bounds_: list[float] = []
        self.converged_ = False
        for self.n_iter_ in range(1, max_iter + 1):
            stats = self.statistics(x)
            self.m_step(stats)
            self.lower_bounds_.append(float(stats["log_likelihood"] / stats["count"]))
            if len(self.lower_bounds_) > 1 and abs(
                    self.lower_bounds_[-1] - self.lower_bounds_[-2]) < tol:
                self.converged_ = True
                break
        self.lower_bound_ = self.lower_bounds_[-1]
        return self

    # -- using it -----------------------------------------------------------------------
    def forward(self, x: Tensor) -> MixtureOutput:
        return MixtureOutput(*self._e_step(self.projection(x, "GaussianMixture.forward")))

    def score_samples(self, x: Tensor) -> Tensor:
        """log p(x_n) in nats, (B,)."""
        return self(x).log_likelihood

    def score(self, x: Tensor) -> Tensor:
        """Mean log-likelihood per example (scikit-learn's ``score``)."""
        return self.score_samples(x).mean()

    def predict_proba(self, x: Tensor) -> Tensor:
        return self(x).log_resp.exp()

    def predict(self, x: Tensor) -> Tensor:
        return self(x).log_resp.argmax(1)

    def num_parameters(self) -> int:
        """Free parameters: K−1 weights, K·D means, K·D(D+1)/2 (full) or K·D covariances."""
        k, d = self.num_components, self.features
        cov = k * d * (d + 1) // 2 if self.covariance_type == "full" else k * d
        return k - 1 + k * d + cov

    def bic(self, x: Tensor) -> Tensor:
        """Bayesian information criterion −2 log L + p log N (lower is better)."""
        n = x.shape[0]
        return -2 * self.score(x) * n + self.num_parameters() * math.log(n)

    def aic(self, x: Tensor) -> Tensor:
        """Akaike information criterion −2 log L + 2p."""
        return -2 * self.score(x) * x.shape[0] + 2 * self.num_parameters()

    def covariances(self) -> Tensor:
        """Σ_k = (P_k P_kᵀ)⁻¹: (K, D, D), or the variances (K, D) for ``"diag"``."""
        if self.covariance_type == "diag":
            return self.precisions_cholesky.pow(-2)
        return torch.linalg.inv(self.precisions_cholesky @ self.precisions_cholesky.transpose(1, 2))

    @torch.no_grad()
    def sample(self, num_samples: int, *, generator: torch.Generator | None = None
               ) -> tuple[Tensor, Tensor]:
        """(samples (N, *in_shape), their components (N,)): k ~ w, x = μ_k + A_k ε with
        A_k A_kᵀ = Σ_k, ε ~ N(0, I), mapped back through the PCA if any."""
        device = self.means.device
        components = torch.multinomial(self.weights.cpu(), num_samples, replacement=True,
                                       generator=generator).to(device)
        eps = torch.randn(num_samples, self.features, generator=generator,
                          dtype=self.means.dtype).to(device)
        if self.covariance_type == "diag":
            noise = eps / self.precisions_cholesky[components]
        else:
            scale = torch.linalg.cholesky(self.covariances())  # (K, D, D)
            noise = (scale[components] @ eps[:, :, None]).squeeze(-1)
        return self.projection.inverse(self.means[components] + noise), components

    def example_input(self, batch_size: int = 2) -> Tensor:
        return torch.rand(batch_size, *self.in_shape)
