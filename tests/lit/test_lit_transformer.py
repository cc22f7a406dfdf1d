"""train.py end to end for model=transformer and model=gpt on shrunk configs."""

from __future__ import annotations

import json

import pytest
import torch

from mlnotes_zoo.data.seq2seq_numbers import BOS_ID, EOS_ID, PAD_ID, VOCAB, encode_pairs
from mlnotes_zoo.lit.transformer import detokenize, is_char_start
from mlnotes_zoo.train import main


def test_bits_per_char_counts_characters_not_bytes():
    text = "héllo wörld, " * 40  # 520 characters, 600 bytes
    data = text.encode("utf-8")
    assert int(is_char_start(torch.tensor(list(data))).sum()) == len(text)


def test_samples_spell_tokens_with_the_vocabulary_as_the_data_does():
    src, tgt = encode_pairs([4071, 5])
    skip = (PAD_ID, BOS_ID)
    assert detokenize(src[0], VOCAB, eos_id=EOS_ID, skip=skip) == "4071"
    assert detokenize(src[1], VOCAB, eos_id=EOS_ID, skip=skip) == "5"
    assert detokenize(tgt[0], VOCAB, eos_id=EOS_ID, skip=skip) == "four thousand seventy one"
    assert detokenize(torch.tensor([BOS_ID, 5, EOS_ID, 6]), None, eos_id=EOS_ID,
                      skip=skip) == "5"  # no vocabulary: the ids


@pytest.mark.slow
def test_transformer_trains_and_reports_exact_match(make_cfg, tmp_path):
    metrics = main(make_cfg("model=transformer", "model.net.dim=32",
                            "model.net.encoder_layers=1", "model.net.decoder_layers=1",
                            "data.train_size=512", "data.val_size=64", "data.test_size=64",
                            "data.batch_size=32"))
    assert {"test/loss", "test/token_accuracy", "test/exact_match"} <= set(metrics)
    assert 0 <= metrics["test/exact_match"] <= 1
    assert json.loads((tmp_path / "metrics.json").read_text())["metrics"] == \
        pytest.approx(metrics)
    samples = (tmp_path / "samples.txt").read_text().splitlines()
    assert samples[0] == "epoch 0" and len(samples) == 21 and "->" in samples[1]


@pytest.mark.slow
def test_gpt_trains_reports_bits_per_char_and_writes_a_sample(make_cfg, tmp_path):
    metrics = main(make_cfg("model=gpt", "model.net.dim=32", "model.net.num_layers=1",
                            "data.block_size=32", "data.train_samples=64",
                            "data.batch_size=16", "model.sample_length=40"))
    assert {"test/loss", "test/bits_per_byte", "test/bits_per_char"} <= set(metrics)
    # an untrained byte model is near uniform: about 8 bits per byte; ASCII text -> ≈ per char
    assert 5 < metrics["test/bits_per_char"] < 9
    assert metrics["test/bits_per_char"] == pytest.approx(metrics["test/bits_per_byte"], rel=0.02)
    sample = (tmp_path / "samples.txt").read_text(encoding="utf-8")
    assert sample.startswith("epoch 0") and len(sample) > 40


def test_gpt_rejects_a_block_size_longer_than_its_context(make_cfg):
    cfg = make_cfg("model=gpt", "model.net.dim=16", "model.net.num_layers=1",
                   "model.net.max_len=16", "data.block_size=32")
    with pytest.raises(ValueError, match="block_size"):
        main(cfg)
