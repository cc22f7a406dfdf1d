"""train.py end to end for model=transformer and model=gpt on shrunk configs."""

from __future__ import annotations

import json

import pytest

from mlnotes_zoo.train import main


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
