"""LitCTC through train.main on a shrunk config; transcribe from the checkpoint."""

from __future__ import annotations

import json

import soundfile
import torch

from mlnotes_zoo import load_checkpoint
from mlnotes_zoo.data.speech import read_audio
from mlnotes_zoo.lit.ctc import LitCTC
from mlnotes_zoo.train import main
from mlnotes_zoo.transcribe import main as transcribe_main

TINY = ["data.train_size=8", "data.val_size=4", "data.test_size=4", "data.batch_size=4",
        "model.net.dim=16", "model.net.hidden=16", "model.net.num_layers=1",
        "model.net.conv_channels=4", "model.beam_width=2"]


def test_ctc_run_logs_cer_wer_and_transcribes_from_its_checkpoint(make_cfg, tmp_path, capsys):
    metrics = main(make_cfg("model=ctc", *TINY))
    assert {"test/loss", "test/cer", "test/wer", "test/blank_rate"} <= set(metrics)
    assert 0 <= metrics["test/cer"] and 0 <= metrics["test/wer"] <= 1
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["metrics"]["test/cer"] == metrics["test/cer"]
    assert (tmp_path / "pictures" / "features_and_posteriors.png").is_file()

    ckpt = tmp_path / "checkpoints" / "last.ckpt"
    net = load_checkpoint(ckpt)
    lit = LitCTC.load_from_checkpoint(ckpt)
    wave = torch.linspace(-1, 1, 8000).sin() * 0.3
    soundfile.write(tmp_path / "clip.wav", wave.numpy(), 16000)  # resampled to the model's 8 kHz
    clip = read_audio(tmp_path / "clip.wav", net.sample_rate)
    assert abs(len(clip) - 4000) <= 1
    expected = net.transcribe(clip[None])
    assert lit.net.vocab == net.vocab == "0123456789abcdef"
    capsys.readouterr()
    assert transcribe_main([f"ckpt={ckpt}", f"wav={tmp_path / 'clip.wav'}"]) == 0
    printed = capsys.readouterr().out.strip()
    assert printed == expected[0] and set(printed) <= set(net.vocab)
    assert transcribe_main([f"ckpt={ckpt}"]) == 2  # usage error, no traceback


def test_conformer_ctc_run(make_cfg):
    metrics = main(make_cfg("model=conformer_ctc", *TINY[:4], "model.net.dim=16",
                            "model.net.num_heads=2", "model.net.ffn_dim=32",
                            "model.net.num_layers=1", "model.net.conv_channels=4",
                            "model.test_decoder=greedy"))
    assert {"test/loss", "test/cer", "test/wer"} <= set(metrics)
