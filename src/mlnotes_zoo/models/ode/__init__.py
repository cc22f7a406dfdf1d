"""Neural ODEs (notes ``004``, "Neural ordinary differential equations"): the ODE-Net
classifier (:mod:`.odenet`), the FFJORD continuous normalizing flow (:mod:`.cnf`) and the
latent ODE for irregular time series (:mod:`.latent_ode`), all integrated by torchdiffeq
(:mod:`.solve`)."""

from mlnotes_zoo.models.ode.cnf import (
    CNF,
    CNFOutput,
    cnf_log_likelihood,
    exact_trace,
    hutchinson_trace,
    standard_normal_log_density,
)
from mlnotes_zoo.models.ode.latent_ode import (
    LatentODE,
    LatentODEOutput,
    masked_gaussian_log_likelihood,
    masked_mse,
    standard_normal_kl,
)
from mlnotes_zoo.models.ode.odenet import ODENet, classification_loss
from mlnotes_zoo.models.ode.solve import CountedDynamics, SolverOptions, solve

OBJECTIVE = ["classification_loss", "cnf_log_likelihood", "standard_normal_log_density",
             "masked_gaussian_log_likelihood", "standard_normal_kl", "masked_mse"]

__all__ = ["ODENet", "CNF", "CNFOutput", "LatentODE", "LatentODEOutput", "CountedDynamics",
           "SolverOptions", "solve", "exact_trace", "hutchinson_trace", "OBJECTIVE",
           "classification_loss", "cnf_log_likelihood", "standard_normal_log_density",
           "masked_gaussian_log_likelihood", "standard_normal_kl", "masked_mse"]
