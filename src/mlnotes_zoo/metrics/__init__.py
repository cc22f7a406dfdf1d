"""Family metrics that torchmetrics lacks."""

from mlnotes_zoo.metrics.codebook import CodebookUsage, codebook_perplexity
from mlnotes_zoo.metrics.digits_classifier import (
    ClassifierFeatures,
    DigitsClassifier,
    class_coverage,
    classifier_fid,
    load_or_train_classifier,
)
from mlnotes_zoo.metrics.flows import fit_gaussian, gaussian_bits_per_dim

__all__ = ["fit_gaussian", "gaussian_bits_per_dim", "CodebookUsage", "codebook_perplexity",
           "DigitsClassifier", "ClassifierFeatures", "class_coverage", "classifier_fid",
           "load_or_train_classifier"]
