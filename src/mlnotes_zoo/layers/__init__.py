"""Blocks shared by two or more model families."""

from mlnotes_zoo.layers.attention import MultiHeadAttention, RotaryEmbedding, sinusoidal_encoding
from mlnotes_zoo.layers.coupling import AffineCoupling, CouplingNet, Squeeze

__all__ = ["AffineCoupling", "CouplingNet", "Squeeze", "MultiHeadAttention", "RotaryEmbedding",
           "sinusoidal_encoding"]
