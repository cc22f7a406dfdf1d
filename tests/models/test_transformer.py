"""Transformer: attention maths, causality, padding, positions, and cached generation.

Sequence losses against direct computations.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from mlnotes_zoo import create_model
from mlnotes_zoo.models.transformer import (
    MultiHeadAttention,
    RotaryEmbedding,
    TransformerBlock,
    apply_rotary,
    bits_per_char,
    sample_next_token,
    sequence_exact_match,
    sinusoidal_encoding,
    token_cross_entropy,
)

POSITIONALS = ["sinusoidal", "learned", "rotary"]


def explicit_attention(mha: MultiHeadAttention, x, context=None, key_padding_mask=None,
                       causal=False):
    """softmax(QKᵀ/√d + mask)·V written out, per head, from the layer's weights."""
    context = x if context is None else context
    h, d = mha.num_heads, mha.head_dim
    wq, wk, wv = mha.in_proj.weight.chunk(3, dim=0)
    bq, bk, bv = mha.in_proj.bias.chunk(3, dim=0)
    q = (x @ wq.T + bq).view(*x.shape[:2], h, d).transpose(1, 2)
    k = (context @ wk.T + bk).view(*context.shape[:2], h, d).transpose(1, 2)
    v = (context @ wv.T + bv).view(*context.shape[:2], h, d).transpose(1, 2)
    scores = q @ k.transpose(-1, -2) / math.sqrt(d)  # (B, h, Tq, Tk)
    if key_padding_mask is not None:
        scores = scores.masked_fill(key_padding_mask[:, None, None, :], float("-inf"))
    if causal:
        tq, tk = scores.shape[-2:]
        future = torch.ones(tq, tk, dtype=torch.bool).triu(1)
        scores = scores.masked_fill(future, float("-inf"))
    y = torch.softmax(scores, dim=-1) @ v  # (B, h, Tq, d)
    y = y.transpose(1, 2).reshape(*x.shape[:2], h * d)
    return y @ mha.out_proj.weight.T + mha.out_proj.bias


@pytest.mark.parametrize("causal", [False, True])
def test_sdpa_attention_equals_explicit_softmax_qk_v(causal):
    torch.manual_seed(0)
    mha = MultiHeadAttention(dim=24, num_heads=3).eval()
    x = torch.randn(3, 7, 24)
    pad = torch.zeros(3, 7, dtype=torch.bool)
    pad[0, 5:] = True
    pad[2, 6:] = True
    got = mha(x, key_padding_mask=pad, is_causal=causal)
    torch.testing.assert_close(got, explicit_attention(mha, x, key_padding_mask=pad,
                                                       causal=causal), atol=1e-5, rtol=1e-5)
    if not causal:  # cross-attention to a longer context
        ctx = torch.randn(3, 11, 24)
        torch.testing.assert_close(mha(x, ctx), explicit_attention(mha, x, ctx),
                                   atol=1e-5, rtol=1e-5)


def test_padded_keys_are_never_attended():
    torch.manual_seed(0)
    mha = MultiHeadAttention(dim=16, num_heads=2).eval()
    x = torch.randn(2, 6, 16)
    ctx = torch.randn(2, 9, 16)
    pad = torch.zeros(2, 9, dtype=torch.bool)
    pad[:, 6:] = True
    changed = ctx.clone()
    changed[:, 6:] = 100 * torch.randn(2, 3, 16)
    torch.testing.assert_close(mha(x, ctx, key_padding_mask=pad),
                               mha(x, changed, key_padding_mask=pad))
    assert not torch.allclose(mha(x, ctx), mha(x, changed))  # the mask is what protects them


@pytest.mark.parametrize("norm_first", [True, False])
def test_block_equals_torch_transformer_encoder_layer(norm_first):
    """Same weights in torch.nn.TransformerEncoderLayer give the same output (pre/post-norm)."""
    torch.manual_seed(0)
    ours = TransformerBlock(dim=32, num_heads=4, mlp_hidden=64, norm_first=norm_first).eval()
    ref = torch.nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=norm_first).eval()
    with torch.no_grad():
        ref.self_attn.in_proj_weight.copy_(ours.self_attn.in_proj.weight)
        ref.self_attn.in_proj_bias.copy_(ours.self_attn.in_proj.bias)
        ref.self_attn.out_proj.load_state_dict(ours.self_attn.out_proj.state_dict())
        ref.linear1.load_state_dict(ours.mlp.fc_in.state_dict())
        ref.linear2.load_state_dict(ours.mlp.fc_out.state_dict())
        ref.norm1.load_state_dict(ours.norm_self.state_dict())
        ref.norm2.load_state_dict(ours.norm_mlp.state_dict())
    x = torch.randn(2, 5, 32)
    pad = torch.tensor([[False] * 5, [False, False, False, True, True]])
    real = ~pad  # torch's fast path may zero padded positions: compare the real ones
    torch.testing.assert_close(ours(x, padding_mask=pad)[real],
                               ref(x, src_key_padding_mask=pad)[real], atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("positional", POSITIONALS)
@pytest.mark.parametrize("norm_first", [True, False])
def test_gpt_is_causal(positional, norm_first):
    torch.manual_seed(0)
    model = create_model("gpt", dim=32, num_heads=2, num_layers=2, max_len=16,
                         positional=positional, norm_first=norm_first).eval()
    x = torch.randint(0, 256, (2, 12))
    t = 6
    changed = x.clone()
    changed[:, t + 1:] = torch.randint(0, 256, (2, 12 - t - 1))
    a, b = model(x), model(changed)
    torch.testing.assert_close(a[:, : t + 1], b[:, : t + 1])
    assert not torch.allclose(a[:, t + 1:], b[:, t + 1:])


@pytest.mark.parametrize("positional", POSITIONALS)
def test_seq2seq_decoder_is_causal_and_source_padding_is_ignored(positional):
    torch.manual_seed(0)
    model = create_model("transformer", dim=32, num_heads=2, encoder_layers=2,
                         decoder_layers=2, positional=positional, dropout=0.0).eval()
    src = torch.randint(3, 44, (2, 6))
    tgt = torch.randint(3, 44, (2, 8))
    logits = model(src, tgt)
    changed = tgt.clone()
    changed[:, 5:] = torch.randint(3, 44, (2, 3))
    torch.testing.assert_close(model(src, changed)[:, :5], logits[:, :5])
    assert not torch.allclose(model(src, changed)[:, 5:], logits[:, 5:])
    # appending padding to the source changes nothing
    padded = torch.cat([src, torch.full((2, 4), model.pad_id)], dim=1)
    torch.testing.assert_close(model(padded, tgt), logits, atol=1e-5, rtol=1e-5)


def test_sinusoidal_encoding_matches_the_formula():
    pe = sinusoidal_encoding(50, 16)
    for pos in (0, 7, 49):
        for i in range(8):
            angle = pos / 10000 ** (2 * i / 16)
            assert pe[pos, 2 * i].item() == pytest.approx(math.sin(angle), abs=1e-5)
            assert pe[pos, 2 * i + 1].item() == pytest.approx(math.cos(angle), abs=1e-5)


def test_rotary_scores_depend_on_relative_position_only():
    torch.manual_seed(0)
    rope = RotaryEmbedding(head_dim=8)
    q, k = torch.randn(1, 1, 1, 8), torch.randn(1, 1, 1, 8)
    cos, sin = rope(40)

    def score(m, n):
        qm = apply_rotary(q, cos[m : m + 1], sin[m : m + 1])
        kn = apply_rotary(k, cos[n : n + 1], sin[n : n + 1])
        return (qm * kn).sum().item()

    assert score(3, 1) == pytest.approx(score(30, 28), abs=1e-4)
    assert score(3, 1) != pytest.approx(score(3, 2), abs=1e-3)
    # a rotation keeps the norm
    torch.testing.assert_close(apply_rotary(q, cos[5:6], sin[5:6]).norm(), q.norm())


def test_sample_next_token_greedy_and_top_k():
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0]]).repeat(500, 1)
    assert (sample_next_token(logits, temperature=0) == 1).all()
    assert (sample_next_token(logits, top_k=1) == 1).all()
    g = torch.Generator().manual_seed(0)
    drawn = sample_next_token(logits, top_k=2, generator=g)
    assert set(drawn.tolist()) == {1, 3}  # only the two largest logits
    # relative frequency of the top-2 renormalised softmax: e^3 / (e^3 + e^2)
    assert (drawn == 1).float().mean().item() == pytest.approx(1 / (1 + math.e ** -1), abs=0.06)


@pytest.mark.parametrize("positional", POSITIONALS)
def test_cached_and_uncached_generation_give_the_same_tokens(positional):
    torch.manual_seed(0)
    gpt = create_model("gpt", dim=32, num_heads=2, num_layers=2, max_len=12,
                       positional=positional).eval()
    prompt = torch.randint(0, 256, (3, 4))
    for kwargs in ({"temperature": 0.0}, {"temperature": 1.0, "top_k": 20}):
        # 16 new tokens run past max_len, where both paths crop the context
        runs = [gpt.generate(prompt, 16, use_cache=c, generator=torch.Generator()
                             .manual_seed(1), **kwargs) for c in (True, False)]
        assert runs[0].shape == (3, 20)
        torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)

    s2s = create_model("transformer", dim=32, num_heads=2, encoder_layers=1,
                       decoder_layers=2, positional=positional).eval()
    src = torch.randint(3, 44, (3, 5))
    src[0, 3:] = s2s.pad_id
    for kwargs in ({}, {"temperature": 1.0, "top_k": 5}):
        runs = [s2s.generate(src, max_new_tokens=9, use_cache=c, generator=torch.Generator()
                             .manual_seed(1), **kwargs) for c in (True, False)]
        torch.testing.assert_close(runs[0], runs[1], rtol=0, atol=0)


def test_cached_logits_equal_full_forward():
    torch.manual_seed(0)
    gpt = create_model("gpt", dim=32, num_heads=2, num_layers=2, max_len=16,
                       positional="rotary").eval()
    x = torch.randint(0, 256, (2, 10))
    full = gpt(x)
    caches = [{} for _ in gpt.blocks]
    parts = [gpt(x[:, :4], caches=caches)]  # a prompt, then one token at a time
    parts += [gpt(x[:, t : t + 1], caches=caches, offset=t) for t in range(4, 10)]
    torch.testing.assert_close(torch.cat(parts, dim=1), full, atol=1e-5, rtol=1e-5)


def test_generation_stops_with_padding_after_eos():
    model = create_model("transformer", dim=16, num_heads=2, encoder_layers=1,
                         decoder_layers=1).eval()
    with torch.no_grad():  # make eos the most likely token everywhere
        model.embed.tokens.weight[model.eos_id] *= 0
        model.embed.tokens.weight[model.eos_id] += 1e3 * F.normalize(
            torch.ones(16), dim=0)
        model.decoder_norm.weight.fill_(0)
        model.decoder_norm.bias.fill_(1)
    out = model.generate(torch.randint(3, 44, (2, 4)), max_new_tokens=6)
    assert out.shape == (2, 1) and (out == model.eos_id).all()


# -- the objective ------------------------------------------------------------------------
def test_token_cross_entropy_ignores_padding():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5)
    targets = torch.tensor([[1, 2, 0, 0], [3, 4, 4, 0]])  # 0 = padding
    log_p = torch.log_softmax(logits, dim=-1)
    nll = [-log_p[b, t, targets[b, t]] for b in range(2) for t in range(4) if targets[b, t]]
    expected = torch.stack(nll).mean()
    got = token_cross_entropy(logits, targets, ignore_index=0)
    torch.testing.assert_close(got, expected)
    per_token = token_cross_entropy(logits, targets, ignore_index=0, reduction="none")
    assert per_token.shape == (2, 4) and (per_token[targets == 0] == 0).all()
    torch.testing.assert_close(per_token.sum(), torch.stack(nll).sum())
    # changing the logits at padded positions changes nothing
    changed = logits.clone()
    changed[targets == 0] = 50.0
    torch.testing.assert_close(token_cross_entropy(changed, targets, ignore_index=0), expected)


def test_bits_per_char_is_total_nats_over_chars_in_bits():
    # a uniform model over 256 bytes costs 8 bits per byte; 2-byte characters cost 16 bits
    nats = torch.tensor(12 * math.log(256))
    torch.testing.assert_close(bits_per_char(nats, 12), torch.tensor(8.0))
    torch.testing.assert_close(bits_per_char(nats, 6), torch.tensor(16.0))


def test_sequence_exact_match_up_to_padding():
    pred = torch.tensor([[5, 6, 2, 0, 0], [5, 7, 2, 0, 0], [5, 6, 2, 9, 0]])
    target = torch.tensor([[5, 6, 2], [5, 6, 2], [5, 6, 2]])
    assert sequence_exact_match(pred, target, pad_id=0).tolist() == [1.0, 0.0, 0.0]
    assert sequence_exact_match(target, pred, pad_id=0).tolist() == [1.0, 0.0, 0.0]
