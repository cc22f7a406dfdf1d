"""CTC networks and decoding: output lengths, padding invariance, greedy and beam search.

CTC loss: equals torch's ctc_loss and a brute-force sum over alignments.
"""

from __future__ import annotations

import itertools
import math

import pytest
import torch
import torch.nn.functional as F

from mlnotes_zoo import create_model
from mlnotes_zoo.models.ctc import (
    ConformerCTC,
    DeepSpeechCTC,
    collapse,
    ctc_loss,
    greedy_decode,
    ids_to_text,
    prefix_beam_search,
    prefix_beam_search_one,
    reverse_padded,
    text_to_ids,
)

SMALL = {"ctc": dict(dim=32, hidden=32, num_layers=2, conv_channels=8),
         "conformer_ctc": dict(dim=32, num_heads=2, ffn_dim=64, num_layers=2, conv_channels=8)}


def _logits_from_path(path: list[int], num_classes: int, peak: float = 5.0) -> torch.Tensor:
    logits = torch.zeros(len(path), num_classes)
    logits[torch.arange(len(path)), torch.tensor(path)] = peak
    return logits.log_softmax(-1)


def test_collapse_merges_repeats_then_drops_blanks():
    assert collapse([1, 1, 0, 1, 2, 2, 0]) == [1, 1, 2]
    assert collapse([0, 0, 0]) == []
    assert collapse([3, 3, 3]) == [3]
    assert collapse([2, 0, 2, 2, 0, 0, 2]) == [2, 2, 2]


def test_greedy_decode_on_hand_made_logits_respects_lengths():
    paths = [[1, 1, 0, 1, 2, 2, 0, 0], [0, 3, 3, 0, 3, 1, 1, 2]]
    log_probs = torch.stack([_logits_from_path(p, 4) for p in paths])  # (2, 8, 4)
    assert greedy_decode(log_probs) == [[1, 1, 2], [3, 3, 1, 2]]
    # only the first 5 frames of the second utterance are valid
    assert greedy_decode(log_probs, torch.tensor([8, 5])) == [[1, 1, 2], [3, 3]]
    assert ids_to_text([1, 1, 2], "ab") == "aab"
    assert text_to_ids("ba", "ab") == [2, 1]
    with pytest.raises(ValueError, match="not in the vocabulary"):
        text_to_ids("abc", "ab")


def test_beam_search_of_width_one_equals_greedy_on_confident_frames():
    torch.manual_seed(0)
    for _ in range(20):
        T, C = 30, 6
        logits = torch.randn(3, T, C)
        best = torch.randint(0, C, (3, T))
        logits.scatter_(-1, best.unsqueeze(-1), 6.0)  # best class well above ½ every frame
        log_probs = logits.log_softmax(-1)
        assert (log_probs.exp().max(-1).values > 0.5).all()
        lengths = torch.tensor([30, 21, 9])
        assert prefix_beam_search(log_probs, lengths, beam_width=1) == \
            greedy_decode(log_probs, lengths)


def test_beam_search_finds_the_prefix_greedy_misses_and_its_exact_probability():
    # Two frames with p(∅) = 0.6, p(a) = 0.4: the best path is "∅∅" (0.36) so greedy says "",
    # but "a" collects a∅ + ∅a + aa = 0.24 + 0.24 + 0.16 = 0.64.
    log_probs = torch.tensor([[[0.6, 0.4], [0.6, 0.4]]]).log()
    assert greedy_decode(log_probs) == [[]]
    assert prefix_beam_search(log_probs, beam_width=2) == [[1]]
    scores = dict(prefix_beam_search_one(log_probs[0], beam_width=4))
    assert math.exp(scores[(1,)]) == pytest.approx(0.64)
    assert math.exp(scores[()]) == pytest.approx(0.36)


def test_beam_scores_equal_brute_force_sums_over_paths():
    torch.manual_seed(3)
    T, C = 5, 3
    log_probs = torch.randn(T, C, dtype=torch.float64).log_softmax(-1)
    exact: dict[tuple[int, ...], float] = {}
    for path in itertools.product(range(C), repeat=T):
        key = tuple(collapse(path))
        exact[key] = exact.get(key, 0.0) + math.exp(sum(log_probs[t, c] for t, c in
                                                        enumerate(path)))
    # a beam as wide as the number of prefixes keeps everything: scores are exact
    beams = prefix_beam_search_one(log_probs, beam_width=len(exact), token_beam=C - 1)
    for prefix, score in beams:
        assert math.exp(score) == pytest.approx(exact[prefix], rel=1e-6)
    assert beams[0][0] == max(exact, key=exact.get)


@pytest.mark.parametrize("frames", [1, 2, 3, 4, 5, 7, 8, 9, 17, 31, 100, 101])
def test_subsampled_lengths_match_the_convolution_for_odd_and_even_lengths(frames):
    model = DeepSpeechCTC(**SMALL["ctc"]).eval()
    feats = torch.randn(1, 40, frames)
    x, lengths = model.subsample(feats, torch.tensor([frames]))
    expected = math.ceil(math.ceil(frames / 2) / 2)
    assert x.shape[1] == expected and lengths.tolist() == [expected]


@pytest.mark.parametrize("name", ["ctc", "conformer_ctc"])
def test_output_lengths_and_padding_do_not_change_an_utterance(name):
    torch.manual_seed(0)
    model = create_model(name, **SMALL[name]).eval()
    hop = model.frontend.hop_length
    lengths = torch.tensor([4001, 2345, 799])  # odd numbers of samples
    waves = torch.randn(3, 4001) * (torch.arange(4001) < lengths[:, None])
    with torch.no_grad():
        out = model(waves, lengths)
        alone = model(waves[2:, :799], lengths[2:])
    frames = lengths // hop + 1
    assert out.lengths.tolist() == [math.ceil(math.ceil(f / 2) / 2) for f in frames.tolist()]
    assert out.lengths.tolist() == model.output_lengths(lengths).tolist()
    assert out.log_probs.shape == (3, int(out.lengths.max()), 17)
    n = int(alone.lengths[0])
    if name == "ctc":  # the padded utterance's frames equal the utterance run alone
        torch.testing.assert_close(out.log_probs[2, :n], alone.log_probs[0], atol=1e-5,
                                   rtol=1e-5)
    # (torchaudio's Conformer masks padding in attention only; its convolution module
    # sees the padded frames, so there the check is the shapes above.)


def test_reverse_padded_reverses_within_each_length():
    x = torch.arange(5.0).repeat(2, 1).unsqueeze(-1)  # (2, 5, 1)
    out = reverse_padded(x, torch.tensor([5, 3]))[..., 0]
    assert out.tolist() == [[4, 3, 2, 1, 0], [2, 1, 0, 3, 4]]


def test_spec_augment_only_in_training():
    model = DeepSpeechCTC(**SMALL["ctc"], freq_mask=10, time_mask=10)
    waves, lengths = model.example_input(2)
    model.eval()
    a, _ = model.features(waves, lengths)
    b, _ = model.features(waves, lengths)
    torch.testing.assert_close(a, b)
    model.train()
    torch.manual_seed(0)
    c, _ = model.features(waves, lengths)
    assert (c == 0).float().mean() > (a == 0).float().mean()


def test_features_are_normalised_per_utterance():
    model = DeepSpeechCTC(**SMALL["ctc"]).eval()
    waves, lengths = model.example_input(2)
    feats, frames = model.frontend(waves * torch.tensor([[1.0], [30.0]]), lengths)
    for b in range(2):
        valid = feats[b, :, : frames[b]]
        torch.testing.assert_close(valid.mean(-1), torch.zeros(40), atol=1e-4, rtol=0)
        assert (feats[b, :, frames[b]:] == 0).all()


def test_repeated_blocks_are_declared_and_used():
    assert any(isinstance(m, DeepSpeechCTC.repeated_blocks)
               for m in DeepSpeechCTC(**SMALL["ctc"]).modules())
    assert sum(isinstance(m, ConformerCTC.repeated_blocks)
               for m in ConformerCTC(**SMALL["conformer_ctc"]).modules()) == 2


@pytest.mark.slow
@pytest.mark.parametrize("name", ["ctc", "conformer_ctc"])
def test_tiny_model_overfits_a_few_utterances_to_cer_zero(name):
    from mlnotes_zoo.data.speech import collate_speech
    from mlnotes_zoo.data.spoken_symbols import SpokenSymbolsDataModule

    torch.manual_seed(0)
    dm = SpokenSymbolsDataModule(vocab="0123", train_size=3, val_size=1, test_size=1,
                                 min_symbols=3, max_symbols=4)
    dm.setup()
    waves, wave_lengths, targets, target_lengths = collate_speech(dm.splits["train"])
    model = create_model(name, vocab="0123", **SMALL[name], freq_mask=0, time_mask=0,
                         dropout=0.0)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    texts = [u.text for u in dm.splits["train"].utterances]
    for step in range(300):
        log_probs, lengths = model(waves, wave_lengths)
        loss = ctc_loss(log_probs, targets, lengths, target_lengths)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 20 == 19:
            model.eval()
            if model.transcribe(waves, wave_lengths) == texts:
                break
            model.train()
    model.eval()
    assert model.transcribe(waves, wave_lengths) == texts
    assert model.transcribe(waves, wave_lengths, decoder="beam", beam_width=4) == texts


# -- the objective ------------------------------------------------------------------------
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_ctc_loss_equals_torch_ctc_loss_on_variable_length_batches(reduction):
    torch.manual_seed(0)
    B, T, C = 4, 20, 6
    log_probs = torch.randn(B, T, C).log_softmax(-1)
    targets = torch.randint(1, C, (B, 7))
    input_lengths = torch.tensor([20, 17, 12, 9])
    target_lengths = torch.tensor([7, 5, 3, 1])
    ours = ctc_loss(log_probs, targets, input_lengths, target_lengths, reduction=reduction)
    ref = F.ctc_loss(log_probs.transpose(0, 1), targets, input_lengths, target_lengths, blank=0,
                     reduction=reduction)
    torch.testing.assert_close(ours, ref)


def test_ctc_loss_is_minus_log_of_the_sum_over_collapsing_paths():
    # p(y|x) = Σ_{π: B(π) = y} Π_t p_t(π_t): enumerate all C^T paths of a tiny problem.
    torch.manual_seed(1)
    T, C = 5, 3
    log_probs = torch.randn(1, T, C, dtype=torch.float64).log_softmax(-1)
    for label in ([1], [1, 1], [1, 2], [2, 1, 2]):
        total = 0.0
        for path in itertools.product(range(C), repeat=T):
            if collapse(path) == label:
                total += math.exp(sum(log_probs[0, t, c].item() for t, c in enumerate(path)))
        loss = ctc_loss(log_probs, torch.tensor([label]), torch.tensor([T]),
                        torch.tensor([len(label)]), reduction="sum")
        assert loss.item() == pytest.approx(-math.log(total), rel=1e-9)


def test_repeats_need_a_blank_between_them_so_too_short_inputs_are_infeasible():
    # "aa" needs 3 frames (a ∅ a); with 2 frames p(y|x) = 0 -> inf, zeroed by zero_infinity.
    log_probs = torch.randn(1, 2, 3).log_softmax(-1)
    args = (log_probs, torch.tensor([[1, 1]]), torch.tensor([2]), torch.tensor([2]))
    assert torch.isinf(ctc_loss(*args, reduction="sum", zero_infinity=False))
    assert ctc_loss(*args, reduction="sum") == 0
    # "ab" fits in two frames
    ok = ctc_loss(log_probs, torch.tensor([[1, 2]]), torch.tensor([2]), torch.tensor([2]))
    assert torch.isfinite(ok)


def test_rejects_time_major_input():
    with pytest.raises(ValueError, match="B, T, C"):
        ctc_loss(torch.zeros(5, 3), torch.zeros(1, 1, dtype=torch.long), torch.tensor([5]),
                 torch.tensor([1]))
