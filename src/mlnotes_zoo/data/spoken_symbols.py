"""Spoken symbols: an embedded, deterministic generator of speech-like utterances.

Each utterance says 3-12 symbols drawn from a small alphabet (digits and a few letters).
Every symbol has its own sound, built like a syllable of speech: an optional consonant
onset (a hiss, a hush or a plosive burst) then a voiced nucleus, a sum of harmonics of a
pitch f0 shaped by two or three formant resonances, steady or gliding (a diphthong). Per
utterance a "speaker" draws a pitch, a vocal-tract scale of the formants and a speaking
rate; per symbol the duration, pitch contour, formants and loudness jitter, consecutive
symbols overlap and their formants glide into each other (coarticulation), and
background noise is added at 8-30 dB SNR. Frame counts therefore say nothing about the
labels: a model has to learn the alignment. Train, validation and test are disjoint in
symbol sequences (each sequence belongs to one split by a hash), and the test split
depends only on ``seed`` and ``test_size``.

The generator knows which symbol sounds when: :meth:`SpokenSymbolsDataModule.frame_alignments`
gives every utterance's symbol per frame at any frame rate (the symbol whose syllable is
loudest in the frame, 0 where none sounds), the reference labels of HuBERT's phone-normalised
mutual information and purity (there, "phones" are the symbols).

Training batches may be bucketed by length (``bucket_pool``, :class:`LengthBucketSampler`):
utterances run 0.45-3 s, so a batch drawn at random is padded to its longest member and ~40 %
of what the network computes is padding; batches of neighbours in length cut that to ~6 %
(a ``ctc`` training step 0.67x as long).
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch.utils.data import DataLoader, Sampler

from mlnotes_zoo.constraints import NonNegativeInt, PositiveInt, Seed
from mlnotes_zoo.data.speech import SpeechDataModule, Utterance

__all__ = ["SpokenSymbolsDataModule", "symbol_sounds", "render_utterance", "render_aligned",
           "frame_labels", "LengthBucketSampler", "ALIGNMENT_BLOCK"]

# the alignment's resolution: one label per block of this many samples (1 ms at 8 kHz)
ALIGNMENT_BLOCK = 8

# Vowel formants F1, F2, F3 (Hz) of an adult voice (Peterson & Barney 1952, rounded).
VOWELS = {
    "a": (730, 1090, 2440), "i": (270, 2290, 3010), "u": (300, 870, 2240),
    "e": (530, 1840, 2480), "o": (570, 840, 2410), "ae": (660, 1720, 2410),
    "er": (490, 1350, 1690),
}
ONSETS = ("", "s", "sh", "t")
# (onset, start vowel, end vowel) of the first 16 symbols, chosen to be distinct;
# more symbols take further combinations in a fixed order.
FIRST_SOUNDS = [
    ("", "a", "a"), ("", "i", "i"), ("", "u", "u"), ("", "e", "e"), ("", "o", "o"),
    ("s", "a", "a"), ("s", "i", "i"), ("t", "u", "u"), ("t", "e", "e"), ("sh", "o", "o"),
    ("", "a", "i"), ("", "o", "i"), ("", "e", "u"), ("t", "ae", "ae"), ("sh", "er", "er"),
    ("", "er", "er"),
]
SPLITS = ("train", "val", "test")


def symbol_sounds(num_symbols: int) -> list[tuple[str, str, str]]:
    """The (onset, start vowel, end vowel) recipe of each of ``num_symbols`` symbols."""
    sounds = list(FIRST_SOUNDS)
    for combo in itertools.product(ONSETS, VOWELS, VOWELS):
        if len(sounds) >= num_symbols:
            break
        if combo not in sounds:
            sounds.append(combo)
    if num_symbols > len(sounds):
        raise ValueError(f"at most {len(sounds)} distinct symbol sounds, asked {num_symbols}")
    return sounds[:num_symbols]


def _raised_cosine_envelope(n: int, attack: int, release: int) -> np.ndarray:
    env = np.ones(n)
    attack, release = min(attack, n // 2), min(release, n // 2)
    env[:attack] = 0.5 - 0.5 * np.cos(np.pi * np.arange(attack) / max(attack, 1))
    env[n - release:] = 0.5 + 0.5 * np.cos(np.pi * np.arange(release) / max(release, 1))
    return env


def _band_noise(rng: np.random.Generator, n: int, low: float, high: float, sr: int) -> np.ndarray:
    spec = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1 / sr)
    spec[(freqs < low) | (freqs > high)] = 0
    out = np.fft.irfft(spec, n)
    return out / (np.abs(out).max() + 1e-9)


def _voiced(rng: np.random.Generator, n: int, sr: int, f0: np.ndarray, formants: np.ndarray,
            ) -> np.ndarray:
    """Harmonics of the pitch track f0 (n,) weighted by formant tracks (n, 3)."""
    step = max(1, sr // 100)  # formant gains are smooth: compute them every 10 ms
    coarse = np.arange(0, n + step, step).clip(max=n - 1)
    top = min(sr / 2 - 200, 3800.0)  # the formants stay below 3.5 kHz
    k = np.arange(1, int(top / f0.max()) + 1)[:, None]  # (K, 1) harmonic numbers
    bandwidth = np.array([90.0, 110.0, 170.0])
    gains = np.array([1.0, 0.6, 0.3])
    freq = k * f0[coarse][None]  # (K, n_coarse)
    amp = sum(gains[j] * np.exp(-0.5 * ((freq - formants[coarse, j][None]) / bandwidth[j]) ** 2)
              for j in range(3)) / np.sqrt(k)  # formant peaks with a -3 dB/octave tilt
    # linear interpolation of the 10 ms gains to every sample
    pos = np.arange(n) / step
    i0 = pos.astype(np.int64)
    frac = (pos - i0).astype(np.float32)
    amp = amp.astype(np.float32)
    amp_full = amp[:, i0] * (1 - frac) + amp[:, i0 + 1] * frac  # (K, n)
    phase = (2 * np.pi * np.cumsum(f0) / sr).astype(np.float32)
    offsets = rng.uniform(0, 2 * np.pi, (len(k), 1)).astype(np.float32)
    return (amp_full * np.sin(k.astype(np.float32) * phase[None] + offsets)).sum(0)


def render_utterance(symbols: list[int], sounds: list[tuple[str, str, str]],
                     rng: np.random.Generator, sample_rate: int) -> np.ndarray:
    """Waveform (float32, peak ≤ 1) saying ``symbols`` (indices into ``sounds``)."""
    return render_aligned(symbols, sounds, rng, sample_rate)[0]


def render_aligned(symbols: list[int], sounds: list[tuple[str, str, str]],
                   rng: np.random.Generator, sample_rate: int,
                   block: int = ALIGNMENT_BLOCK) -> tuple[np.ndarray, np.ndarray]:
    """:func:`render_utterance`'s waveform (N,) and its alignment (⌈N / block⌉,) int8: for
    each block of ``block`` samples, 1 + the index in ``symbols``' alphabet of the symbol
    whose syllable has the most energy there (syllables overlap), 0 where none sounds."""
    sr = sample_rate
    pitch = rng.uniform(95, 230)  # speaker's mean f0 (Hz)
    tract = rng.uniform(0.88, 1.15)  # vocal-tract length: scales every formant
    rate = rng.uniform(0.75, 1.35)  # speaking rate
    pieces: list[tuple[int, np.ndarray, int]] = []  # (start sample, signal, symbol)
    cursor = int(rng.uniform(0.05, 0.25) * sr)
    previous_end = None
    for index in symbols:
        onset, v_start, v_end = sounds[index]
        duration = int(rng.uniform(0.11, 0.19) / rate * sr)
        signal_parts = []
        if onset in ("s", "sh"):
            low, high = (2600, 3900) if onset == "s" else (1600, 2900)
            m = int(rng.uniform(0.04, 0.07) / rate * sr)
            signal_parts.append(0.35 * _band_noise(rng, m, low, min(high, sr / 2 - 50), sr)
                                * _raised_cosine_envelope(m, m // 4, m // 4))
        elif onset == "t":
            m = int(0.012 * sr)
            burst = 0.6 * _band_noise(rng, m, 500, sr / 2 - 50, sr) * np.hanning(m)
            signal_parts.append(np.concatenate([np.zeros(int(0.015 * sr)), burst]))
        # pitch: declination across the syllable plus a random rise/fall and jitter
        f0 = pitch * rng.uniform(0.9, 1.1) * np.linspace(1.0, rng.uniform(0.85, 1.12), duration)
        f0 *= 1 + 0.01 * rng.standard_normal() * np.sin(np.linspace(0, 6, duration))
        start_f = np.array(VOWELS[v_start]) * tract * rng.uniform(0.95, 1.05, 3)
        end_f = np.array(VOWELS[v_end]) * tract * rng.uniform(0.95, 1.05, 3)
        glide = np.clip(np.linspace(-0.3, 1.3, duration), 0, 1)[:, None]
        formants = start_f[None] * (1 - glide) + end_f[None] * glide  # (n, 3)
        if previous_end is not None:  # coarticulation: enter from the previous symbol
            entry = np.exp(-np.arange(duration) / (0.03 * sr))[:, None]
            formants = formants * (1 - 0.6 * entry) + previous_end[None] * 0.6 * entry
        previous_end = formants[-1]
        voiced = _voiced(rng, duration, sr, f0, formants)
        voiced = voiced / (np.abs(voiced).max() + 1e-9)
        voiced *= _raised_cosine_envelope(duration, int(0.02 * sr), int(0.04 * sr))
        signal_parts.append(voiced * rng.uniform(0.6, 1.0))
        syllable = np.concatenate(signal_parts)
        pieces.append((cursor, syllable, index))
        overlap = rng.uniform(0.0, 0.25) * duration
        gap = rng.uniform(0.0, 0.06) * sr if rng.random() < 0.3 else 0.0
        cursor += int(len(syllable) - overlap + gap)
    total = cursor + int(rng.uniform(0.05, 0.25) * sr)
    wave = np.zeros(total)
    blocks = -(-total // block)
    energy = np.zeros((len(pieces), blocks * block))  # each syllable's own energy per sample
    for p, (start, signal, _) in enumerate(pieces):
        wave[start : start + len(signal)] += signal[: total - start]
        energy[p, start : start + len(signal)] = signal[: total - start] ** 2
    energy = energy.reshape(len(pieces), blocks, block).sum(-1)  # (pieces, blocks)
    loudest = np.array([index + 1 for _, _, index in pieces])[energy.argmax(0)]
    alignment = np.where(energy.max(0) > 0, loudest, 0).astype(np.int8)
    speech_rms = np.sqrt(np.mean(wave**2) + 1e-12)
    snr_db = rng.uniform(8, 30)
    noise = rng.standard_normal(total)
    if rng.random() < 0.5:  # brown-ish noise for half of the utterances
        noise = np.cumsum(noise)
        noise -= np.convolve(noise, np.ones(201) / 201, mode="same")
    noise *= speech_rms / (np.sqrt(np.mean(noise**2)) + 1e-12) * 10 ** (-snr_db / 20)
    wave = wave + noise
    wave *= rng.uniform(0.3, 0.9) / (np.abs(wave).max() + 1e-9)
    return wave.astype(np.float32), alignment


def frame_labels(alignment: np.ndarray | torch.Tensor, num_samples: int, frame_samples: int,
                 block: int = ALIGNMENT_BLOCK) -> torch.Tensor:
    """Per-frame labels (1 + ⌊num_samples / frame_samples⌋,) long from a block alignment:
    frame t is the window of ``frame_samples`` samples centred on sample t·frame_samples (the
    centred frames of the log-mel and MFCC front ends, so one label per encoder frame), and
    its label the most frequent block label in it (ties: the smaller label)."""
    if frame_samples % block:
        raise ValueError(f"frame_samples={frame_samples} must be a multiple of the alignment's "
                         f"{block}-sample blocks")
    per_frame = frame_samples // block
    frames = 1 + num_samples // frame_samples
    labels = torch.as_tensor(alignment, dtype=torch.long)
    # window of frame t: blocks [t·per_frame − per_frame/2, t·per_frame + per_frame/2)
    half = per_frame // 2
    padded = torch.full((frames * per_frame,), -1, dtype=torch.long)
    kept = labels[: frames * per_frame - half]
    padded[half : half + len(kept)] = kept
    windows = padded.view(frames, per_frame)  # (T, blocks per frame), -1 = outside the audio
    counts = F.one_hot(windows + 1, int(labels.max().clamp(min=0)) + 2)[..., 1:].sum(1)
    return counts.argmax(-1)  # first maximum = the smaller label


class LengthBucketSampler(Sampler[int]):
    """Shuffled indices in which each run of ``batch_size`` has similar lengths.

    Every epoch: a random permutation, cut into pools of ``pool`` batches; each pool sorted
    by length and cut into batches; the full batches in random order, then the one short
    batch (when ``batch_size`` does not divide the data), so a DataLoader of the same
    ``batch_size`` reads exactly these batches. Each utterance is seen once per epoch, and a
    batch's members change from epoch to epoch with the pools. The order is drawn from
    torch's global generator when the iterator is made, as ``RandomSampler``'s is, so a
    seeded run repeats it and a resumed run (:class:`~mlnotes_zoo.resume.ResumableDataLoader`)
    continues it.
    """

    def __init__(self, lengths: Sequence[int], batch_size: int, pool: int) -> None:
        if batch_size < 1 or pool < 1:
            raise ValueError(f"batch_size and pool must be >= 1, got {batch_size}, {pool}")
        self.lengths = torch.as_tensor(lengths, dtype=torch.long)
        self.batch_size, self.pool = batch_size, pool

    def __len__(self) -> int:
        return len(self.lengths)

    def batches(self) -> list[list[int]]:
        """This epoch's batches (draws from torch's global generator)."""
        seed = int(torch.empty((), dtype=torch.int64).random_().item())
        generator = torch.Generator().manual_seed(seed)
        order = torch.randperm(len(self.lengths), generator=generator)
        full, short = [], []
        for pool in order.split(self.batch_size * self.pool):
            pool = pool[torch.argsort(self.lengths[pool], stable=True)]
            for batch in pool.split(self.batch_size):
                (full if len(batch) == self.batch_size else short).append(batch.tolist())
        shuffled = [full[i] for i in torch.randperm(len(full), generator=generator).tolist()]
        return shuffled + short  # at most one short batch: only the last pool can be short

    def __iter__(self) -> Iterator[int]:
        return (i for batch in self.batches() for i in batch)


def _split_of(sequence: str, salt: int) -> str:
    bucket = zlib.crc32(f"{salt}:{sequence}".encode()) % 10
    return "test" if bucket == 0 else "val" if bucket == 1 else "train"


class SpokenSymbolsDataModule(SpeechDataModule):
    """Generated spoken-symbol utterances (see the module docstring); no files, no download.

    Args:
        vocab: the alphabet; symbol i of it gets sound ``symbol_sounds(len(vocab))[i]``.
        train_size, val_size, test_size: utterances per split.
        min_symbols, max_symbols: symbols per utterance (uniform).
        sample_rate: of the generated audio (8 kHz: formants reach 3 kHz).
        seed: of the sequences and their renderings (and of the split hash).
        bucket_pool: training batches are drawn by :class:`LengthBucketSampler` from pools of
            this many batches sorted by length (less padding: a ``ctc`` step 0.67x as
            long); 0 shuffles plainly. Validation and test keep their order.
        batch_size, num_workers: see :class:`~mlnotes_zoo.data.speech.SpeechDataModule`.
    """

    def __init__(
        self,
        *,
        vocab: str = "0123456789abcdef",
        train_size: PositiveInt = 3000,
        val_size: PositiveInt = 200,
        test_size: PositiveInt = 400,
        min_symbols: PositiveInt = 3,
        max_symbols: PositiveInt = 12,
        sample_rate: PositiveInt = 8000,
        seed: Seed = 0,
        bucket_pool: NonNegativeInt = 0,
        **kwargs: Any,
    ) -> None:
        super().__init__(vocab=vocab, sample_rate=sample_rate, **kwargs)
        self.bucket_pool = bucket_pool
        if min_symbols > max_symbols:
            raise ValueError(f"need min_symbols <= max_symbols, got {min_symbols}, "
                             f"{max_symbols}")
        self.sizes = {"train": train_size, "val": val_size, "test": test_size}
        self.min_symbols, self.max_symbols = min_symbols, max_symbols
        self.seed = seed
        self.sounds = symbol_sounds(len(vocab))
        self.alignments: dict[str, list[np.ndarray]] = {}

    def train_dataloader(self) -> DataLoader:
        if not self.bucket_pool:
            return super().train_dataloader()
        data = self.splits["train"]
        lengths = [len(audio) for audio, _ in data.utterances]
        return self.loader(data, sampler=LengthBucketSampler(lengths, self.batch_size,
                                                             self.bucket_pool))

    def sequences(self, split: str, count: int) -> list[str]:
        """``count`` symbol strings that hash to ``split`` (seeded per split)."""
        rng = np.random.default_rng([self.seed, SPLITS.index(split)])
        out: list[str] = []
        while len(out) < count:
            n = int(rng.integers(self.min_symbols, self.max_symbols + 1))
            text = "".join(self.vocab[i] for i in rng.integers(0, len(self.vocab), n))
            if _split_of(text, self.seed) == split:
                out.append(text)
        return out

    def load_split(self, split: str) -> list[Utterance]:
        utterances, alignments = [], []
        for i, text in enumerate(self.sequences(split, self.sizes[split])):
            rng = np.random.default_rng([self.seed, SPLITS.index(split), i, 1])
            symbols = [self.vocab.index(ch) for ch in text]
            wave, alignment = render_aligned(symbols, self.sounds, rng, self.sample_rate)
            utterances.append(Utterance(torch.from_numpy(wave), text))
            alignments.append(alignment)
        self.alignments[split] = alignments
        return utterances

    def frame_alignments(self, split: str, frame_samples: int) -> list[torch.Tensor]:
        """Symbol per frame of every utterance of ``split`` in its stored order
        (:meth:`reference_data`'s): 1 + the symbol's index in ``vocab``, 0 for silence, one
        label per centred frame of ``frame_samples`` samples (:func:`frame_labels`)."""
        dataset = self.reference_data(split)
        return [frame_labels(alignment, len(audio), frame_samples)
                for (audio, _), alignment in zip(dataset.utterances, self.alignments[split],
                                                 strict=True)]
