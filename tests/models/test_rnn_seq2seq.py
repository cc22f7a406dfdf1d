"""RNN encoder-decoder: additive attention against a loop, padding, the bottleneck, scoring
against step-wise decoding, greedy = beam of width 1, beam scores = score(x, y), teacher
forcing and its schedule, and a tiny run through train.main."""

from __future__ import annotations

import json
import math

import pytest
import torch

from mlnotes_zoo import create_model
from mlnotes_zoo.models.recurrent import (
    AdditiveAttention,
    RNNSeq2Seq,
    inverse_sigmoid_decay,
    length_penalty,
    sequence_log_prob,
)
from mlnotes_zoo.models.transformer import token_cross_entropy


def _net(**kwargs) -> RNNSeq2Seq:
    torch.manual_seed(0)
    spec = {"vocab_size": 12, "embed_dim": 8, "hidden": 10, "attention_dim": 6, **kwargs}
    return create_model("rnn_seq2seq", **spec).eval()


def _batch(net: RNNSeq2Seq, b: int = 4, s: int = 6, t: int = 7, seed: int = 0):
    """Right-padded sources (each its own length ≥ 1) and targets bos … eos, pad."""
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(3, net.vocab_size, (b, s), generator=g)
    tgt = torch.randint(3, net.vocab_size, (b, t), generator=g)
    tgt[:, 0] = net.bos_id
    for i in range(b):
        src[i, 1 + i % s:] = net.pad_id
        end = 2 + (i * 2) % (t - 2)
        tgt[i, end] = net.eos_id
        tgt[i, end + 1:] = net.pad_id
    return src, tgt


def test_additive_attention_equals_a_loop_over_source_positions():
    torch.manual_seed(0)
    attn = AdditiveAttention(query_dim=5, key_dim=7, attention_dim=4)
    query, memory = torch.randn(3, 5), torch.randn(3, 6, 7)
    padding = torch.zeros(3, 6, dtype=torch.bool)
    padding[0, 4:] = True
    padding[2, 1:] = True
    with torch.no_grad():
        context, weights = attn(query, attn.key(memory), memory, padding)
    W, U, b_u, v = (t.detach() for t in (attn.query.weight, attn.key.weight, attn.key.bias,
                                         attn.score.weight[0]))
    for i in range(3):
        energies = []
        for j in range(6):
            if padding[i, j]:
                continue
            # e_ij = vᵀ tanh(W s + U h_j + b)
            energies.append(float(v @ torch.tanh(W @ query[i] + U @ memory[i, j] + b_u)))
        exp = [math.exp(e - max(energies)) for e in energies]
        alpha = [x / sum(exp) for x in exp]
        expected_w = torch.zeros(6)
        expected_w[: len(alpha)] = torch.tensor(alpha)  # the real tokens come first
        torch.testing.assert_close(weights[i], expected_w, atol=1e-6, rtol=1e-5)
        expected_c = sum(a * memory[i, j] for j, a in enumerate(alpha))
        torch.testing.assert_close(context[i], expected_c, atol=1e-6, rtol=1e-5)
    assert (weights[padding] == 0).all()
    torch.testing.assert_close(weights.sum(-1), torch.ones(3))


def test_encoder_reads_each_source_alone_as_a_gru_over_its_real_tokens():
    net = _net()
    src, _ = _batch(net)
    memory, _, summary = net.encoder(src)
    gru = net.encoder.rnn
    for i in range(len(src)):
        n = int((src[i] != net.pad_id).sum())
        out, last = gru(net.encoder.embed(src[i : i + 1, :n]))  # no padding at all
        torch.testing.assert_close(memory[i, :n], out[0], atol=1e-6, rtol=1e-5)
        assert (memory[i, n:] == 0).all()
        torch.testing.assert_close(summary[i], torch.cat([last[0, 0], last[1, 0]]),
                                   atol=1e-6, rtol=1e-5)


@pytest.mark.parametrize("attention", ["additive", "none"])
def test_source_padding_changes_nothing(attention):
    net = _net(attention=attention)
    src, tgt = _batch(net)
    logits = net(src, tgt[:, :-1])
    longer = torch.cat([src, torch.full((len(src), 5), net.pad_id)], dim=1)
    torch.testing.assert_close(net(longer, tgt[:, :-1]), logits, atol=1e-6, rtol=1e-5)
    # whatever sits in the memory at padded positions is never read
    encoded = net.encode(src)
    noisy = encoded.memory.masked_fill(encoded.padding[..., None], 100.0)
    keys = net.attention.key(noisy) if net.attention is not None else None
    changed = encoded._replace(memory=noisy, keys=keys)
    state_a = state_b = net.initial_state(encoded)
    for t in range(tgt.shape[1] - 1):
        la, state_a, _ = net.step(tgt[:, t], state_a, encoded)
        lb, state_b, _ = net.step(tgt[:, t], state_b, changed)
        torch.testing.assert_close(la, lb)


def test_without_attention_the_decoder_sees_the_source_only_through_c():
    net = _net(attention="none")
    src, tgt = _batch(net)
    encoded = net.encode(src)
    other = encoded._replace(memory=torch.randn_like(encoded.memory))
    c_changed = encoded._replace(summary=encoded.summary + 1)
    state = net.initial_state(encoded)
    a, _, alpha = net.step(tgt[:, 0], state, encoded)
    b, _, _ = net.step(tgt[:, 0], state, other)
    torch.testing.assert_close(a, b)
    assert alpha is None
    assert not torch.allclose(net.step(tgt[:, 0], state, c_changed)[0], a)
    # with attention the memory is read
    att = _net()
    enc = att.encode(src)
    s0 = att.initial_state(enc)
    moved = enc._replace(memory=enc.memory + 1, keys=att.attention.key(enc.memory + 1))
    assert not torch.allclose(att.step(tgt[:, 0], s0, enc)[0], att.step(tgt[:, 0], s0, moved)[0])


@pytest.mark.parametrize("attention", ["additive", "none"])
def test_loss_and_score_equal_step_by_step_log_probabilities(attention):
    net = _net(attention=attention)
    src, tgt = _batch(net)
    encoded = net.encode(src)
    state = net.initial_state(encoded)
    total = torch.zeros(len(src))
    for t in range(tgt.shape[1] - 1):
        logits, state, _ = net.step(tgt[:, t], state, encoded)
        log_p = torch.log_softmax(logits, -1)[torch.arange(len(src)), tgt[:, t + 1]]
        total += torch.where(tgt[:, t + 1] != net.pad_id, log_p, torch.zeros_like(log_p))
    torch.testing.assert_close(net.score(src, tgt), total, atol=1e-5, rtol=1e-5)
    # the teacher-forced loss is the mean of the same per-token terms
    loss = token_cross_entropy(net(src, tgt[:, :-1]), tgt[:, 1:], ignore_index=net.pad_id)
    torch.testing.assert_close(loss, -total.sum() / (tgt[:, 1:] != net.pad_id).sum(),
                               atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("attention", ["additive", "none"])
def test_beam_of_width_one_is_greedy_and_beam_scores_are_log_p_of_the_returned_sequence(
        attention):
    net = _net(attention=attention)
    src, _ = _batch(net, b=6)
    greedy = net.generate(src, max_new_tokens=8)
    one = net.beam_search(src, beam_size=1, max_new_tokens=8)
    torch.testing.assert_close(one.tokens, greedy, rtol=0, atol=0)
    bos = torch.full((len(src), 1), net.bos_id)
    for width, alpha in ((1, 1.0), (3, 0.0), (5, 1.0)):
        beam = net.beam_search(src, beam_size=width, max_new_tokens=8, alpha=alpha)
        assert not ((beam.tokens == net.bos_id).any())
        scored = net.score(src, torch.cat([bos, beam.tokens], dim=1))
        torch.testing.assert_close(beam.log_prob, scored, atol=1e-5, rtol=1e-5)
        length = ((beam.tokens != net.pad_id).sum(1)).float()
        torch.testing.assert_close(beam.score, beam.log_prob / length_penalty(length, alpha))
    with pytest.raises(ValueError, match="beam_size"):
        net.beam_search(src, beam_size=0)


def test_wider_beam_without_length_penalty_finds_at_least_the_greedy_log_probability():
    # A beam keeps the greedy prefix while it is among the best; over many sources a wide
    # beam's log p(y|x) is never below greedy's on average and above it somewhere.
    net = _net(vocab_size=6)
    src, _ = _batch(net, b=40, seed=3)
    bos = torch.full((40, 1), net.bos_id)
    greedy = net.score(src, torch.cat([bos, net.generate(src, max_new_tokens=5)], 1))
    beam = net.beam_search(src, beam_size=4, max_new_tokens=5, alpha=0.0)
    assert beam.log_prob.mean() >= greedy.mean()
    assert (beam.log_prob > greedy + 1e-4).any()


def test_free_running_ignores_the_true_targets_and_teacher_forcing_uses_them():
    net = _net()
    src, tgt = _batch(net)
    other = tgt.clone()
    other[:, 1:] = torch.randint(3, net.vocab_size, other[:, 1:].shape)
    runs = []
    for targets in (tgt, other):
        torch.manual_seed(5)
        runs.append(net(src, targets[:, :-1], teacher_forcing=0.0))
    torch.testing.assert_close(runs[0], runs[1])
    assert not torch.allclose(net(src, tgt[:, :-1]), net(src, other[:, :-1]))
    torch.manual_seed(5)
    mixed = net(src, tgt[:, :-1], teacher_forcing=0.5)
    assert mixed.shape == runs[0].shape and torch.isfinite(mixed).all()
    with pytest.raises(ValueError, match="teacher_forcing"):
        net(src, tgt, teacher_forcing=1.5)


def test_inverse_sigmoid_decay_is_k_over_k_plus_exp():
    for k in (1.0, 10.0, 300.0):
        for i in (0, 5, 100, 2000, 10**6):
            expected = k / (k + math.exp(i / k)) if i / k < 700 else 0.0
            assert float(inverse_sigmoid_decay(i, k)) == pytest.approx(expected, abs=1e-12)
    steps = torch.arange(0, 5000, 50)
    eps = inverse_sigmoid_decay(steps, 300.0)
    assert (eps[1:] <= eps[:-1]).all() and eps[0] > 0.99 and eps[-1] < 1e-3
    with pytest.raises(ValueError, match="k"):
        inverse_sigmoid_decay(0, 0.5)


def test_sequence_log_prob_against_torch_distributions():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(3, 5, 7, generator=g)
    targets = torch.randint(1, 7, (3, 5), generator=g)
    targets[0, 3:] = 0
    expected = torch.distributions.Categorical(logits=logits).log_prob(targets)
    expected = (expected * (targets != 0)).sum(1)
    torch.testing.assert_close(sequence_log_prob(logits, targets, pad_id=0), expected)


def test_empty_source_is_an_error_naming_the_problem():
    net = _net()
    src = torch.full((2, 3), net.pad_id)
    src[0, 0] = 5
    with pytest.raises(ValueError, match="at least one token"):
        net(src, torch.ones(2, 2, dtype=torch.long))


def test_train_main_reports_perplexity_exact_match_beam_and_lengths(make_cfg, tmp_path):
    from mlnotes_zoo.train import main

    cfg = make_cfg("model=rnn_seq2seq", "model.net.hidden=16", "model.net.embed_dim=8",
                   "model.teacher_forcing=scheduled", "model.schedule_k=2",
                   "data.train_size=256", "data.val_size=64", "data.test_size=64",
                   "data.batch_size=32", "logger=csv", "callbacks.progress_bar=null")
    main(cfg)
    metrics = json.loads((tmp_path / "metrics.json").read_text())
    flat = json.dumps(metrics)
    for key in ("test/perplexity", "test/exact_match", "test/exact_match_beam"):
        assert key in flat, key
    by_length = json.loads((tmp_path / "pictures" / "exact_match_by_length.json").read_text())
    assert sum(by_length["count"]) == 32  # limit_test_batches=1 batch of 32
    assert (tmp_path / "pictures" / "attention.png").exists()
