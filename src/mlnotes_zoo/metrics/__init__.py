"""Family metrics that torchmetrics lacks."""

from mlnotes_zoo.metrics.codebook import CodebookUsage, codebook_perplexity
from mlnotes_zoo.metrics.flows import fit_gaussian, gaussian_bits_per_dim

__all__ = ["fit_gaussian", "gaussian_bits_per_dim", "CodebookUsage", "codebook_perplexity"]
