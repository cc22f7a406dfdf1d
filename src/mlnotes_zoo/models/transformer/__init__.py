"""Transformers: the encoder-decoder and GPT networks with their sequence objective
(:mod:`.model`), built on the multi-head attention of :mod:`.attention`."""

from mlnotes_zoo.models.transformer.attention import (
    KVCache,
    MultiHeadAttention,
    RotaryEmbedding,
    apply_rotary,
    causal_mask,
    sinusoidal_encoding,
)
from mlnotes_zoo.models.transformer.model import (
    GPT,
    MLP,
    OBJECTIVE,
    Seq2SeqTransformer,
    TokenEmbedding,
    TransformerBlock,
    bits_per_char,
    sample_next_token,
    sequence_exact_match,
    token_cross_entropy,
)

__all__ = ["Seq2SeqTransformer", "GPT", "TransformerBlock", "TokenEmbedding", "MLP",
           "sample_next_token", "MultiHeadAttention", "RotaryEmbedding", "KVCache",
           "sinusoidal_encoding", "apply_rotary", "causal_mask", "OBJECTIVE",
           "token_cross_entropy", "bits_per_char", "sequence_exact_match"]
