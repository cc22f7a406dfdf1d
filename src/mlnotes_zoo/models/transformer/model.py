"""The Transformer (Vaswani et al. 2017): encoder-decoder and decoder-only (GPT), and the
sequence objective.

Reads top-down: position-wise MLP → block (self-attention, optional cross-attention, MLP;
pre- or post-norm) → token embedding with positions → :class:`Seq2SeqTransformer` and
:class:`GPT`, both generating with a key/value cache, then the objective (token
cross-entropy with padding ignored, bits per character, exact match). Attention itself is
in :mod:`.attention`. ``shared/notes/003`` "Transformers" lists the parts: input and
positional embedding, multi-head attention softmax(QKᵀ/√d)·V, residual connections, layer
normalisation, and the decoder's encoder-decoder attention.

The networks return logits; the objective turns them into a loss.
"""

from __future__ import annotations

import math
from typing import ClassVar, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mlnotes_zoo.constraints import NonNegativeInt, PositiveInt, UnitInterval
from mlnotes_zoo.models.shared import check_tensor
from mlnotes_zoo.models.transformer.attention import (
    KVCache,
    MultiHeadAttention,
    sinusoidal_encoding,
)
from mlnotes_zoo.registry import register_model

OBJECTIVE = ["token_cross_entropy", "bits_per_char", "sequence_exact_match"]
__all__ = ["MLP", "TransformerBlock", "TokenEmbedding", "Seq2SeqTransformer", "GPT",
           "sample_next_token", *OBJECTIVE]

Positional = Literal["sinusoidal", "learned", "rotary"]


class MLP(nn.Module):
    """Position-wise feed-forward network: FFN(x) = W₂·GELU(W₁x + b₁) + b₂."""

    def __init__(self, *, dim: int, hidden: int, dropout: float = 0.0, bias: bool = True) -> None:
        super().__init__()
        self.fc_in = nn.Linear(dim, hidden, bias=bias)
        self.fc_out = nn.Linear(hidden, dim, bias=bias)
        self.dropout = nn.Dropout(dropout)

    def forward(self, x: Tensor) -> Tensor:
        return self.fc_out(self.dropout(F.gelu(self.fc_in(x))))


class TransformerBlock(nn.Module):
    """Self-attention, optional cross-attention, MLP; each a residual branch with LayerNorm.

    Post-norm (the 2017 paper): x ← LN(x + Sublayer(x)). Pre-norm (GPT-2, Xiong et al.
    2020): x ← x + Sublayer(LN(x)), which trains deep stacks without warm-up tricks; the
    stack then ends with one more LayerNorm.
    """

    def __init__(self, *, dim: int, num_heads: int, mlp_hidden: int, dropout: float = 0.0,
                 norm_first: bool = True, cross_attention: bool = False, rotary: bool = False,
                 bias: bool = True) -> None:
        super().__init__()
        self.norm_first = norm_first
        self.self_attn = MultiHeadAttention(dim=dim, num_heads=num_heads, dropout=dropout,
                                            bias=bias, rotary=rotary)
        self.norm_self = nn.LayerNorm(dim)
        if cross_attention:
            self.cross_attn = MultiHeadAttention(dim=dim, num_heads=num_heads, dropout=dropout,
                                                 bias=bias)
            self.norm_cross = nn.LayerNorm(dim)
        else:
            self.cross_attn = None
        self.mlp = MLP(dim=dim, hidden=mlp_hidden, dropout=dropout, bias=bias)
        self.norm_mlp = nn.LayerNorm(dim)
        self.dropout = nn.Dropout(dropout)

    def _residual(self, x: Tensor, norm: nn.LayerNorm, sublayer) -> Tensor:
        if self.norm_first:
            return x + self.dropout(sublayer(norm(x)))
        return norm(x + self.dropout(sublayer(x)))

    def forward(
        self,
        x: Tensor,
        context: Tensor | None = None,
        *,
        padding_mask: Tensor | None = None,
        context_padding_mask: Tensor | None = None,
        is_causal: bool = False,
        cache: dict[str, KVCache] | None = None,
    ) -> Tensor:
        """x (B, T, d) → (B, T, d).

        padding_mask (B, T_keys) / context_padding_mask (B, Tc): True at padding tokens.
        cache: ``{"self": {...}, "cross": {...}}`` for incremental decoding (filled in place).
        """
        x = self._residual(x, self.norm_self, lambda h: self.self_attn(
            h, key_padding_mask=padding_mask, is_causal=is_causal,
            cache=None if cache is None else cache.setdefault("self", {})))
        if self.cross_attn is not None:
            if context is None:
                raise ValueError("a block with cross-attention needs the encoder output")
            x = self._residual(x, self.norm_cross, lambda h: self.cross_attn(
                h, context, key_padding_mask=context_padding_mask,
                cache=None if cache is None else cache.setdefault("cross", {})))
        return self._residual(x, self.norm_mlp, self.mlp)


class TokenEmbedding(nn.Module):
    """Token embedding plus positional information, then dropout: (B, T) → (B, T, d).

    ``sinusoidal``: e(x)·√d + PE(pos) (fixed, Vaswani et al. §3.5); ``learned``: e(x) + P[pos];
    ``rotary``: e(x) only, the positions are rotations inside attention.
    """

    def __init__(self, *, vocab_size: int, dim: int, max_len: int, positional: Positional,
                 dropout: float = 0.0) -> None:
        super().__init__()
        self.positional, self.max_len = positional, max_len
        self.tokens = nn.Embedding(vocab_size, dim)
        self.scale = math.sqrt(dim) if positional == "sinusoidal" else 1.0
        if positional == "learned":
            self.positions = nn.Embedding(max_len, dim)
        elif positional == "sinusoidal":
            self.register_buffer("pe", sinusoidal_encoding(max_len, dim), persistent=False)
        self.dropout = nn.Dropout(dropout)

    def forward(self, tokens: Tensor, offset: int = 0) -> Tensor:
        t = tokens.shape[1]
        if self.positional != "rotary" and offset + t > self.max_len:
            raise ValueError(f"sequence of {offset + t} tokens exceeds max_len={self.max_len}")
        x = self.tokens(tokens) * self.scale  # (B, T, d)
        if self.positional == "learned":
            x = x + self.positions(torch.arange(offset, offset + t, device=tokens.device))
        elif self.positional == "sinusoidal":
            x = x + self.pe[offset : offset + t]
        return self.dropout(x)


def sample_next_token(logits: Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                      generator: torch.Generator | None = None) -> Tensor:
    """Next token (B,) from logits (B, V): greedy when temperature == 0, else a sample of
    softmax(logits / temperature) restricted to the ``top_k`` largest logits."""
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0, got {temperature}")
    if temperature == 0:
        return logits.argmax(dim=-1)
    logits = logits.float() / temperature
    if top_k is not None and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = F.softmax(logits, dim=-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _init_weights(module: nn.Module) -> None:
    # GPT-2's initialisation: N(0, 0.02) weights, zero biases, unit LayerNorms.
    if isinstance(module, (nn.Linear, nn.Embedding)):
        nn.init.normal_(module.weight, std=0.02)
    if isinstance(module, nn.Linear) and module.bias is not None:
        nn.init.zeros_(module.bias)


@register_model("transformer")
class Seq2SeqTransformer(nn.Module):
    """Encoder-decoder Transformer: p(y_t | y_<t, x) for token sequences x → y.

    Encoder: N blocks of bidirectional self-attention over the source. Decoder: N blocks of
    causal self-attention, cross-attention to the encoder output, MLP. Source and target
    share one vocabulary and embedding, tied to the output projection (Press & Wolf 2017).

    forward(src (B, S), tgt_in (B, T)) → logits (B, T, V) for the next target tokens; both
    are right-padded with ``pad_id``, which attention never looks at.

    Args:
        vocab_size: tokens, specials included.
        dim, num_heads, encoder_layers, decoder_layers: d_model, h and the stack depths.
        mlp_ratio: MLP hidden width = mlp_ratio · dim.
        dropout: on embeddings, attention weights and residual branches.
        max_len: longest source or target (sinusoidal/learned tables).
        positional: ``sinusoidal`` | ``learned`` | ``rotary``.
        norm_first: pre-norm (True) or post-norm (False) blocks.
        pad_id, bos_id, eos_id: special tokens (padding, start of target, end of target).
    """

    repeated_blocks: ClassVar[tuple[type[nn.Module], ...]] = (TransformerBlock,)

    def __init__(
        self,
        *,
        vocab_size: PositiveInt = 44,
        dim: PositiveInt = 128,
        num_heads: PositiveInt = 4,
        encoder_layers: PositiveInt = 3,
        decoder_layers: PositiveInt = 3,
        mlp_ratio: PositiveInt = 4,
        dropout: UnitInterval = 0.1,
        max_len: PositiveInt = 64,
        positional: Positional = "sinusoidal",
        norm_first: bool = True,
        pad_id: NonNegativeInt = 0,
        bos_id: NonNegativeInt = 1,
        eos_id: NonNegativeInt = 2,
    ) -> None:
        super().__init__()
        self.vocab_size, self.max_len = vocab_size, max_len
        self.pad_id, self.bos_id, self.eos_id = pad_id, bos_id, eos_id
        self.embed = TokenEmbedding(vocab_size=vocab_size, dim=dim, max_len=max_len,
                                    positional=positional, dropout=dropout)
        block = dict(dim=dim, num_heads=num_heads, mlp_hidden=mlp_ratio * dim, dropout=dropout,
                     norm_first=norm_first, rotary=positional == "rotary")
        self.encoder = nn.ModuleList(TransformerBlock(**block) for _ in range(encoder_layers))
        self.decoder = nn.ModuleList(TransformerBlock(**block, cross_attention=True)
                                     for _ in range(decoder_layers))
        # pre-norm leaves the residual stream un-normalised: one LayerNorm after each stack
        self.encoder_norm = nn.LayerNorm(dim) if norm_first else nn.Identity()
        self.decoder_norm = nn.LayerNorm(dim) if norm_first else nn.Identity()
        self.apply(_init_weights)

    def encode(self, src: Tensor) -> tuple[Tensor, Tensor]:
        """src (B, S) → (memory (B, S, d), source padding mask (B, S), True at padding)."""
        src_pad = src == self.pad_id
        x = self.embed(src)
        for block in self.encoder:
            x = block(x, padding_mask=src_pad)
        return self.encoder_norm(x), src_pad

    def decode(self, tgt_in: Tensor, memory: Tensor, memory_padding_mask: Tensor, *,
               caches: list[dict[str, KVCache]] | None = None, offset: int = 0) -> Tensor:
        """Next-token logits (B, T, V) for targets tgt_in (B, T) at positions offset.. ."""
        # Right padding of the target needs no key mask: causal attention lets a real token
        # see only earlier tokens, and padded positions are ignored by the loss.
        x = self.embed(tgt_in, offset=offset)
        for i, block in enumerate(self.decoder):
            x = block(x, memory, context_padding_mask=memory_padding_mask, is_causal=True,
                      cache=None if caches is None else caches[i])
        return self.decoder_norm(x) @ self.embed.tokens.weight.T  # tied output projection

    def forward(self, src: Tensor, tgt_in: Tensor) -> Tensor:
        where = "Seq2SeqTransformer.forward"
        sizes = check_tensor(src, "src", ("B", "S"), kind="int", where=where)
        check_tensor(tgt_in, "tgt_in", ("B", "T"), kind="int", sizes=sizes, where=where)
        memory, src_pad = self.encode(src)
        return self.decode(tgt_in, memory, src_pad)

    @torch.no_grad()
    def generate(self, src: Tensor, *, max_new_tokens: int | None = None,
                 temperature: float = 0.0, top_k: int | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> Tensor:
        """Target tokens (B, ≤ max_new_tokens) after ``bos``; ``pad`` after each ``eos``.

        Greedy by default (temperature 0). With ``use_cache`` each step feeds only the
        newest token and reuses the keys/values of earlier ones (and the projected encoder
        output); without it, each step reruns the decoder on the whole prefix.
        """
        max_new_tokens = max_new_tokens or self.max_len - 1
        memory, src_pad = self.encode(src)
        b = src.shape[0]
        out = torch.full((b, 1), self.bos_id, dtype=torch.long, device=src.device)
        done = torch.zeros(b, dtype=torch.bool, device=src.device)
        caches: list[dict[str, KVCache]] | None = [{} for _ in self.decoder] if use_cache \
            else None
        for step in range(max_new_tokens):
            if use_cache:
                logits = self.decode(out[:, -1:], memory, src_pad, caches=caches, offset=step)
            else:
                logits = self.decode(out, memory, src_pad)
            nxt = sample_next_token(logits[:, -1], temperature=temperature, top_k=top_k,
                                    generator=generator)
            nxt = nxt.masked_fill(done, self.pad_id)
            out = torch.cat((out, nxt[:, None]), dim=1)
            done |= nxt == self.eos_id
            if done.all():
                break
        return out[:, 1:]

    def example_input(self, batch_size: int = 2) -> tuple[Tensor, Tensor]:
        """(src (B, 7), tgt_in (B, 9)) random tokens, the first example right-padded."""
        g = torch.Generator().manual_seed(0)
        src = torch.randint(3, self.vocab_size, (batch_size, 7), generator=g)
        tgt = torch.randint(3, self.vocab_size, (batch_size, 9), generator=g)
        tgt[:, 0] = self.bos_id
        src[0, 5:] = self.pad_id
        tgt[0, 6:] = self.pad_id
        return src, tgt


@register_model("gpt")
class GPT(nn.Module):
    """Decoder-only Transformer language model (Radford et al. 2018/2019): p(x_t | x_<t).

    forward(tokens (B, T)) → next-token logits (B, T, V). Blocks have causal self-attention
    and no cross-attention; the token embedding is tied to the output projection.

    Args:
        vocab_size: tokens (256 for the byte-level text data).
        dim, num_heads, num_layers: d_model, h and depth.
        mlp_ratio: MLP hidden width = mlp_ratio · dim.
        dropout: on embeddings, attention weights and residual branches.
        max_len: context length (block size).
        positional: ``sinusoidal`` | ``learned`` | ``rotary``.
        norm_first: pre-norm (True, GPT-2) or post-norm (False, GPT-1) blocks.
    """

    repeated_blocks: ClassVar[tuple[type[nn.Module], ...]] = (TransformerBlock,)

    def __init__(
        self,
        *,
        vocab_size: PositiveInt = 256,
        dim: PositiveInt = 128,
        num_heads: PositiveInt = 4,
        num_layers: PositiveInt = 4,
        mlp_ratio: PositiveInt = 4,
        dropout: UnitInterval = 0.1,
        max_len: PositiveInt = 128,
        positional: Positional = "learned",
        norm_first: bool = True,
    ) -> None:
        super().__init__()
        self.vocab_size, self.max_len = vocab_size, max_len
        self.embed = TokenEmbedding(vocab_size=vocab_size, dim=dim, max_len=max_len,
                                    positional=positional, dropout=dropout)
        self.blocks = nn.ModuleList(
            TransformerBlock(dim=dim, num_heads=num_heads, mlp_hidden=mlp_ratio * dim,
                             dropout=dropout, norm_first=norm_first,
                             rotary=positional == "rotary")
            for _ in range(num_layers))
        self.norm = nn.LayerNorm(dim) if norm_first else nn.Identity()
        self.apply(_init_weights)

    def forward(self, tokens: Tensor, *, caches: list[dict[str, KVCache]] | None = None,
                offset: int = 0) -> Tensor:
        check_tensor(tokens, "tokens", ("B", "T"), kind="int", where="GPT.forward")
        x = self.embed(tokens, offset=offset)
        for i, block in enumerate(self.blocks):
            x = block(x, is_causal=True, cache=None if caches is None else caches[i])
        return self.norm(x) @ self.embed.tokens.weight.T  # (B, T, V)

    @torch.no_grad()
    def generate(self, prompt: Tensor, max_new_tokens: int, *, temperature: float = 1.0,
                 top_k: int | None = None, use_cache: bool = True,
                 generator: torch.Generator | None = None) -> Tensor:
        """prompt (B, T0) followed by ``max_new_tokens`` sampled tokens: (B, T0 + n).

        With ``use_cache`` the prompt is encoded once and each step feeds one token. Once
        the context would exceed ``max_len``, both paths condition on the last ``max_len``
        tokens, re-encoded each step (a cached key was computed with an older window).
        """
        out = prompt
        caches: list[dict[str, KVCache]] | None = None
        for _ in range(max_new_tokens):
            if use_cache and caches is not None and out.shape[1] <= self.max_len:
                logits = self(out[:, -1:], caches=caches, offset=out.shape[1] - 1)
            else:
                window = out[:, -self.max_len:]
                caches = [{} for _ in self.blocks] \
                    if use_cache and out.shape[1] < self.max_len else None
                logits = self(window, caches=caches)
            nxt = sample_next_token(logits[:, -1], temperature=temperature, top_k=top_k,
                                    generator=generator)
            out = torch.cat((out, nxt[:, None]), dim=1)
        return out

    def example_input(self, batch_size: int = 2) -> Tensor:
        """Random tokens (B, 16)."""
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, self.vocab_size, (batch_size, min(16, self.max_len)), generator=g)


# -- the objective: token cross-entropy, bits per character, exact match ---------------
def token_cross_entropy(logits: Tensor, targets: Tensor, *, ignore_index: int | None = None,
                        reduction: str = "mean") -> Tensor:
    """−log p(y_t | ·) per token, in nats: logits (B, T, V), targets (B, T).

    Tokens equal to ``ignore_index`` (padding) count for nothing, neither in the sum nor in
    the number of tokens the mean divides by. ``reduction``: ``mean`` | ``sum`` | ``none``
    (``none`` gives (B, T) with zeros at ignored tokens).
    """
    return F.cross_entropy(
        logits.flatten(0, -2).float(), targets.flatten(),
        ignore_index=-100 if ignore_index is None else ignore_index, reduction=reduction,
    ).reshape(targets.shape if reduction == "none" else ())


def bits_per_char(nll_nats_sum: Tensor, num_chars: Tensor | int) -> Tensor:
    """Total negative log-likelihood (nats) of a text over its characters, in bits:
    bpc = Σ −log₂ p = (Σ −ln p) / (ln 2 · number of characters)."""
    return nll_nats_sum / (math.log(2) * torch.as_tensor(num_chars, dtype=torch.float32))


def sequence_exact_match(predicted: Tensor, target: Tensor, *, pad_id: int) -> Tensor:
    """1.0 per sequence when ``predicted`` equals ``target`` up to padding, else 0.0: (B,).

    Both (B, ·) and right-padded with ``pad_id``; the shorter one is padded to compare.
    """
    length = max(predicted.shape[1], target.shape[1])
    predicted = F.pad(predicted, (0, length - predicted.shape[1]), value=pad_id)
    target = F.pad(target, (0, length - target.shape[1]), value=pad_id)
    return (predicted == target).all(dim=1).float()
