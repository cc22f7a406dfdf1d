"""Speech data: the spoken-symbols generator and real corpora in their on-disk layouts."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import soundfile
import torch
import torchaudio

from mlnotes_zoo.data.speech import (
    AudioFolderDataModule,
    BadAudioError,
    LibriSpeechDataModule,
    SpeechCommandsDataModule,
    collate_speech,
    read_audio,
)
from mlnotes_zoo.data.spoken_symbols import SpokenSymbolsDataModule


def _tone(seconds: float, rate: int, freq: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def test_spoken_symbols_is_deterministic_and_splits_are_disjoint():
    kwargs = dict(train_size=12, val_size=4, test_size=4, seed=3)
    a, b = SpokenSymbolsDataModule(**kwargs), SpokenSymbolsDataModule(**kwargs)
    a.setup()
    b.setup()
    texts = {s: [u.text for u in a.splits[s].utterances] for s in ("train", "val", "test")}
    assert texts["train"] == [u.text for u in b.splits["train"].utterances]
    torch.testing.assert_close(a.splits["test"].utterances[0].audio,
                               b.splits["test"].utterances[0].audio)
    assert not set(texts["train"]) & set(texts["test"])
    assert not set(texts["train"]) & set(texts["val"])
    assert not set(texts["val"]) & set(texts["test"])
    assert all(3 <= len(t) <= 12 and set(t) <= set(a.vocab) for ts in texts.values() for t in ts)
    # the test split does not depend on how much training data is asked for
    c = SpokenSymbolsDataModule(**{**kwargs, "train_size": 5})
    assert c.sequences("test", 4) == texts["test"]
    # duration is not a function of the number of symbols (speaking rate, jitter)
    lengths = {}
    for u in a.splits["train"].utterances:
        lengths.setdefault(len(u.text), []).append(len(u.audio))
    assert any(len(set(v)) > 1 for v in lengths.values())


def test_batches_are_padded_with_lengths():
    dm = SpokenSymbolsDataModule(train_size=6, val_size=2, test_size=2, batch_size=3)
    dm.setup()
    waves, wave_lengths, targets, target_lengths = next(iter(dm.train_dataloader()))
    assert waves.shape == (3, int(wave_lengths.max())) and targets.dtype == torch.long
    for i in range(3):
        assert (waves[i, wave_lengths[i]:] == 0).all()
        assert (targets[i, target_lengths[i]:] == 0).all()
        assert (targets[i, : target_lengths[i]] >= 1).all()


def test_read_audio_resamples_and_mixes_to_mono(tmp_path):
    stereo = np.stack([_tone(0.5, 22050), _tone(0.5, 22050)], axis=1)
    soundfile.write(tmp_path / "a.wav", stereo, 22050)
    wave = read_audio(tmp_path / "a.wav", 16000)
    assert wave.dim() == 1 and abs(len(wave) - 8000) <= 1
    spectrum = torch.fft.rfft(wave).abs()
    assert abs(int(spectrum.argmax()) * 16000 / len(wave) - 440) < 5  # pitch preserved


def _librispeech(root, subset, utterances):
    for i, text in enumerate(utterances):
        folder = root / "LibriSpeech" / subset / "19" / "198"
        folder.mkdir(parents=True, exist_ok=True)
        soundfile.write(folder / f"19-198-{i:04d}.flac", _tone(0.3 + 0.1 * i, 16000), 16000)
        with open(folder / "19-198.trans.txt", "a") as f:
            f.write(f"19-198-{i:04d} {text}\n")


def test_librispeech_layout(tmp_path):
    for subset in ("train-clean-100", "dev-clean", "test-clean"):
        _librispeech(tmp_path, subset, ["HELLO WORLD", "IT'S A TEST"])
    dm = LibriSpeechDataModule(root=str(tmp_path), batch_size=2)
    dm.setup()
    texts = [u.text for u in dm.splits["train"].utterances]
    assert texts == ["hello world", "it's a test"]
    waves, wave_lengths, targets, target_lengths = next(iter(dm.test_dataloader()))
    assert wave_lengths.tolist() == [4800, 6400] and target_lengths.tolist() == [11, 11]
    with pytest.raises(FileNotFoundError, match="LibriSpeech"):
        LibriSpeechDataModule(root=str(tmp_path / "nothing")).setup()


def test_speech_commands_layout(tmp_path):
    base = tmp_path / "SpeechCommands" / "speech_commands_v0.02"
    for word in ("yes", "no"):
        (base / word).mkdir(parents=True)
        for spk in ("aa11", "bb22", "cc33"):
            soundfile.write(base / word / f"{spk}_nohash_0.wav", _tone(1.0, 16000), 16000,
                            subtype="PCM_16")
    (base / "validation_list.txt").write_text("yes/bb22_nohash_0.wav\nno/bb22_nohash_0.wav\n")
    (base / "testing_list.txt").write_text("yes/cc33_nohash_0.wav\n")
    dm = SpeechCommandsDataModule(root=str(tmp_path))
    dm.setup()
    assert sorted(u.text for u in dm.splits["train"].utterances) == ["no", "no", "yes"]
    assert [u.text for u in dm.splits["test"].utterances] == ["yes"]
    assert sorted(u.text for u in dm.splits["val"].utterances) == ["no", "yes"]
    wave, ids = dm.splits["val"][0]
    text = dm.splits["val"].utterances[0].text
    assert wave.shape == (16000,) and ids.tolist() == [dm.vocab.index(c) + 1 for c in text]


def test_audio_folder_with_tsv_any_rate_and_bad_files(tmp_path, caplog):
    for split in ("train", "val", "test"):
        d = tmp_path / split
        d.mkdir()
        rows = []
        for i, rate in enumerate((8000, 44100, 16000)):
            soundfile.write(d / f"{i}.wav", _tone(0.4, rate), rate)
            rows.append(f"{i}.wav\tgood clip {'abc'[i]}")
        soundfile.write(d / "empty.wav", np.zeros(0, np.float32), 16000)
        soundfile.write(d / "lowrate.wav", _tone(0.4, 4000), 4000)
        (d / "garbage.wav").write_bytes(b"not audio at all")
        soundfile.write(d / "odd.wav", _tone(0.4, 16000), 16000)
        rows += ["empty.wav\tempty", "lowrate.wav\tlow", "garbage.wav\tgarbage",
                 "odd.wav\tnumber 42"]
        (d / "transcripts.tsv").write_text("\n".join(rows) + "\n")
    with caplog.at_level(logging.WARNING):
        dm = AudioFolderDataModule(root=str(tmp_path), batch_size=8)
        dm.setup()
    assert [u.text for u in dm.splits["train"].utterances] == [f"good clip {c}" for c in "abc"]
    assert len(dm.skipped["train"]) == 4
    assert "skipped 4 of 7 train utterances" in caplog.text
    waves, wave_lengths, *_ = collate_speech([dm.splits["train"][i] for i in range(3)])
    assert all(abs(n - 6400) <= 1 for n in wave_lengths.tolist())  # 0.4 s at 16 kHz each

    rows = dict(r.split("\t") for r in
                (tmp_path / "train" / "transcripts.tsv").read_text().splitlines())
    for name, reason in (("empty.wav", "empty audio"), ("lowrate.wav", "below min_sample_rate"),
                         ("garbage.wav", "cannot read audio"), ("odd.wav", "outside the vocab")):
        d = tmp_path / "bad" / name.replace(".", "_")
        d.mkdir(parents=True)
        (d / name).write_bytes((tmp_path / "train" / name).read_bytes())
        (d / "transcripts.tsv").write_text(f"{name}\t{rows[name]}\n")
        strict = AudioFolderDataModule(root=str(d), on_bad="error", val_fraction=0.0,
                                       test_fraction=0.0)
        with pytest.raises(BadAudioError, match=f"{name}.*{reason}"):
            strict.screen(strict.load_split("train"), "train")


def test_read_audio_resampling_equals_torchaudio_functional(tmp_path):
    soundfile.write(tmp_path / "a.wav", _tone(0.3, 22050, 1000.0), 22050)
    for _ in range(2):  # the second read reuses the cached resampler
        wave = read_audio(tmp_path / "a.wav", 16000)
        reference = torchaudio.functional.resample(
            torch.from_numpy(_tone(0.3, 22050, 1000.0)), 22050, 16000)
        torch.testing.assert_close(wave, reference, atol=1e-4, rtol=0)  # float32 kernel


def test_tsv_transcripts_are_taken_literally_and_extra_fields_are_an_error(tmp_path):
    d = tmp_path / "train"
    d.mkdir()
    soundfile.write(d / "a.wav", _tone(0.4, 16000), 16000)
    (d / "transcripts.tsv").write_text('a.wav\t"quoted" text\n')
    dm = AudioFolderDataModule(root=str(tmp_path), val_fraction=0.0, test_fraction=0.0)
    assert [u.text for u in dm.load_split("train")] == ['"quoted" text']  # not unquoted
    (d / "transcripts.tsv").write_text("a.wav\tsome text\tspeaker 3\n")
    with pytest.raises(BadAudioError, match=r"transcripts.tsv:1: .*got 3 tab-separated"):
        dm.load_split("train")


def test_audio_folder_librispeech_layout_with_hash_split(tmp_path):
    folder = tmp_path / "spk" / "ch"
    folder.mkdir(parents=True)
    lines = []
    for i in range(40):
        soundfile.write(folder / f"spk-ch-{i:03d}.wav", _tone(0.2, 12000), 12000)
        lines.append(f"spk-ch-{i:03d} WORD {i % 2 and 'ONE' or 'TWO'}")
    (folder / "spk-ch.trans.txt").write_text("\n".join(lines) + "\n")
    dm = AudioFolderDataModule(root=str(tmp_path), val_fraction=0.2, test_fraction=0.2)
    dm.setup()
    sizes = {s: len(dm.splits[s]) for s in ("train", "val", "test")}
    assert sum(sizes.values()) == 40 and min(sizes.values()) >= 3
    paths = [set(u.audio for u in dm.splits[s].utterances) for s in ("train", "val", "test")]
    assert not (paths[0] & paths[1] or paths[0] & paths[2] or paths[1] & paths[2])
    assert dm.splits["train"].utterances[0].text in ("word one", "word two")
