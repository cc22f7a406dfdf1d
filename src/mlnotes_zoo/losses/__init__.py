"""Objectives, each a named function tested on its own."""

from mlnotes_zoo.losses.elbo import (
    bernoulli_log_likelihood,
    elbo,
    gaussian_kl_standard_normal,
    gaussian_log_likelihood,
    iwae_bound,
    log_normal,
)

__all__ = [
    "bernoulli_log_likelihood",
    "elbo",
    "gaussian_kl_standard_normal",
    "gaussian_log_likelihood",
    "iwae_bound",
    "log_normal",
]
