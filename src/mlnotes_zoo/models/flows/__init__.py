"""Normalizing flows: RealNVP and Glow, their objective and Gaussian baseline (:mod:`.model`),
built from the squeeze and affine-coupling layers of :mod:`.coupling`."""

from mlnotes_zoo.models.flows.coupling import (
    AffineCoupling,
    CouplingNet,
    Squeeze,
    checkerboard_mask,
)
from mlnotes_zoo.models.flows.model import (
    OBJECTIVE,
    ActNorm,
    FlowOutput,
    Glow,
    GlowStep,
    InvertibleConv1x1,
    MultiScaleFlow,
    Preprocess,
    RealNVP,
    bits_per_dim,
    discrete_log_likelihood,
    fit_gaussian,
    flow_log_likelihood,
    flow_nll,
    gaussian_bits_per_dim,
    quantize,
    standard_normal_log_prob,
    uniform_dequantize,
)

__all__ = ["RealNVP", "Glow", "FlowOutput", "Preprocess", "ActNorm", "InvertibleConv1x1",
           "GlowStep", "MultiScaleFlow", "Squeeze", "CouplingNet", "AffineCoupling",
           "checkerboard_mask", "OBJECTIVE", "standard_normal_log_prob", "flow_log_likelihood",
           "quantize", "uniform_dequantize", "discrete_log_likelihood", "bits_per_dim",
           "flow_nll", "fit_gaussian", "gaussian_bits_per_dim"]
