"""Sequence losses against direct computations."""

from __future__ import annotations

import math

import torch

from mlnotes_zoo.losses.sequence import bits_per_char, sequence_exact_match, token_cross_entropy


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
