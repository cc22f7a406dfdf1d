"""Multi-head attention with a key/value cache, rotary and sinusoidal position encodings.

Attention is softmax(QKᵀ/√d)·V (Vaswani et al. 2017; ``shared/notes/003`` "Transformers"),
computed by :func:`torch.nn.functional.scaled_dot_product_attention`, which picks a fused
kernel (flash / memory-efficient / math) for the device. Masks follow SDPA's convention:
boolean, ``True`` = may attend.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "MultiHeadAttention",
    "RotaryEmbedding",
    "KVCache",
    "sinusoidal_encoding",
    "apply_rotary",
    "causal_mask",
]

# A layer's cache: {"k": (B, nh, T_past, hs), "v": (B, nh, T_past, hs)}; for cross-attention
# the projected encoder keys/values, computed once per generated sequence.
KVCache = dict[str, Tensor]


def sinusoidal_encoding(length: int, dim: int, *, base: float = 10000.0,
                        offset: int = 0) -> Tensor:
    """PE(pos, 2i) = sin(pos / base^(2i/d)), PE(pos, 2i+1) = cos(pos / base^(2i/d)): (T, d)."""
    pos = torch.arange(offset, offset + length, dtype=torch.float32).unsqueeze(1)  # (T, 1)
    inv_freq = base ** (-torch.arange(0, dim, 2, dtype=torch.float32) / dim)  # (ceil(d/2),)
    angles = pos * inv_freq  # (T, ceil(d/2))
    pe = torch.zeros(length, dim)
    pe[:, 0::2] = torch.sin(angles)
    pe[:, 1::2] = torch.cos(angles[:, : dim // 2])
    return pe


def apply_rotary(x: Tensor, cos: Tensor, sin: Tensor) -> Tensor:
    """Rotate each pair (x_2i, x_2i+1) by the angle pos·θ_i (RoFormer, Su et al. 2021).

    x (B, nh, T, hs); cos, sin (T, hs/2). Then ⟨R_m q, R_n k⟩ depends on m − n only.
    """
    x1, x2 = x[..., 0::2], x[..., 1::2]  # (B, nh, T, hs/2)
    rotated = torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1)
    return rotated.flatten(-2).type_as(x)  # interleave back to (B, nh, T, hs)


class RotaryEmbedding(nn.Module):
    """cos/sin tables of the rotary position embedding for positions ``offset..offset+T``."""

    def __init__(self, *, head_dim: int, base: float = 10000.0) -> None:
        super().__init__()
        if head_dim % 2:
            raise ValueError(f"rotary embedding needs an even head size, got {head_dim}")
        inv_freq = base ** (-torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim)
        self.register_buffer("inv_freq", inv_freq, persistent=False)  # θ_i, (hs/2,)

    def forward(self, length: int, offset: int = 0) -> tuple[Tensor, Tensor]:
        pos = torch.arange(offset, offset + length, device=self.inv_freq.device,
                           dtype=torch.float32)
        angles = torch.outer(pos, self.inv_freq)  # (T, hs/2)
        return angles.cos(), angles.sin()


def causal_mask(query_len: int, key_len: int, device: torch.device | None = None) -> Tensor:
    """(Tq, Tk) boolean, True where query i (the last Tq of Tk positions) may see key j ≤ i."""
    return torch.ones(query_len, key_len, dtype=torch.bool, device=device).tril(
        diagonal=key_len - query_len)


class MultiHeadAttention(nn.Module):
    """Multi-head (self- or cross-) attention, optionally causal, rotary and cached.

    Args:
        dim: model width d_model (= num_heads · head size).
        num_heads: number of heads h.
        dropout: dropout on the attention weights (training only).
        bias: biases in the q/k/v/output projections.
        rotary: rotate queries and keys by their positions (self-attention only).
    """

    def __init__(self, *, dim: int, num_heads: int, dropout: float = 0.0, bias: bool = True,
                 rotary: bool = False) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim ({dim}) must be divisible by num_heads ({num_heads})")
        self.dim, self.num_heads, self.head_dim = dim, num_heads, dim // num_heads
        self.dropout = dropout
        # one (3d, d) projection [W_q; W_k; W_v]: self-attention does a single matmul, as
        # torch.nn.MultiheadAttention does; cross-attention uses the q and kv row blocks.
        self.in_proj = nn.Linear(dim, 3 * dim, bias=bias)
        self.out_proj = nn.Linear(dim, dim, bias=bias)
        self.rotary = RotaryEmbedding(head_dim=self.head_dim) if rotary else None

    def _heads(self, t: Tensor) -> Tensor:
        return t.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)  # (B, nh, T, hs)

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        key_padding_mask: Tensor | None = None,
        is_causal: bool = False,
        cache: KVCache | None = None,
    ) -> Tensor:
        """x (B, Tq, d) attends to itself, or to ``context`` (B, Tk, d) (cross-attention).

        key_padding_mask: (B, Tk) boolean, True at padding keys (never attended to); with a
            cache it covers all keys, past ones included.
        is_causal: query t sees keys ≤ t only (self-attention).
        cache: a dict this call reads and extends in place. Self-attention appends the new
            keys/values; cross-attention computes them from ``context`` once and reuses them.
        """
        is_cross = context is not None
        d, w, b = self.dim, self.in_proj.weight, self.in_proj.bias
        if not is_cross:
            q, k, v = map(self._heads, self.in_proj(x).chunk(3, dim=-1))  # (B, nh, T, hs) each
        else:
            q = self._heads(F.linear(x, w[:d], None if b is None else b[:d]))  # (B, nh, Tq, hs)
            if cache is not None and "k" in cache:
                k, v = cache["k"], cache["v"]
            else:
                kv = F.linear(context, w[d:], None if b is None else b[d:])  # (B, Tk, 2d)
                k, v = map(self._heads, kv.chunk(2, dim=-1))  # (B, nh, Tk, hs) each
        past = 0 if is_cross or cache is None or "k" not in cache else cache["k"].shape[2]
        if self.rotary is not None and not is_cross:
            cos, sin = self.rotary(q.shape[2], offset=past)
            q, k = apply_rotary(q, cos, sin), apply_rotary(k, cos, sin)
        if cache is not None:
            if not is_cross and past:
                k = torch.cat((cache["k"], k), dim=2)
                v = torch.cat((cache["v"], v), dim=2)
            cache["k"], cache["v"] = k, v

        tq, tk = q.shape[2], k.shape[2]
        mask = None
        if key_padding_mask is not None:
            mask = ~key_padding_mask[:, None, None, :]  # (B, 1, 1, Tk)
        causal = is_causal and not is_cross and tq > 1
        if causal and (mask is not None or tq != tk):
            mask = causal_mask(tq, tk, q.device) if mask is None \
                else mask & causal_mask(tq, tk, q.device)
            causal = False
        y = F.scaled_dot_product_attention(  # softmax(QKᵀ/√hs)·V per head
            q, k, v, attn_mask=mask, is_causal=causal,
            dropout_p=self.dropout if self.training else 0.0,
        )  # (B, nh, Tq, hs)
        return self.out_proj(y.transpose(1, 2).flatten(2))  # (B, Tq, d)
