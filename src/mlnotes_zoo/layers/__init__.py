"""Blocks shared by two or more model families."""

from mlnotes_zoo.layers.attention import MultiHeadAttention, RotaryEmbedding, sinusoidal_encoding

__all__ = ["MultiHeadAttention", "RotaryEmbedding", "sinusoidal_encoding"]
