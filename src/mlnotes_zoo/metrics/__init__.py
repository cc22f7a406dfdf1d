"""Family metrics that torchmetrics lacks."""

from mlnotes_zoo.metrics.codebook import CodebookUsage, codebook_perplexity

__all__ = ["CodebookUsage", "codebook_perplexity"]
