"""Speech DataModules: the shared base, LibriSpeech, Speech Commands and any audio folder.

Every speech DataModule yields batches ``(waves, wave_lengths, targets, target_lengths)``:
waveforms (B, N) float at ``sample_rate`` zero-padded past ``wave_lengths`` (B,), and label
ids (B, S) padded with 0 past ``target_lengths`` (B,). Label id i ≥ 1 is ``vocab[i − 1]``;
0 is reserved for the CTC blank.

Real corpora are read from a local root with ``soundfile`` (WAV, FLAC, OGG, ...) at any
sample rate and channel count (mixed to mono, resampled). Files are screened when a split is
set up: an unreadable or empty file, a sample rate below ``min_sample_rate`` or a
transcript with characters outside the vocabulary is either an error naming the file
(``on_bad="error"``) or skipped and counted in a logged warning (``on_bad="skip"``) —
never a crash inside a collate function.
"""

from __future__ import annotations

import csv
import functools
import io
import logging
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal, NamedTuple

import torch
import torchaudio
from torch import Tensor
from torch.utils.data import Dataset

from mlnotes_zoo.constraints import NonNegativeInt, PositiveInt, UnitInterval
from mlnotes_zoo.data.base import BadDataError, DataModule, DataNotFoundError

__all__ = [
    "Utterance",
    "SpeechDataset",
    "SpeechDataModule",
    "LibriSpeechDataModule",
    "SpeechCommandsDataModule",
    "AudioFolderDataModule",
    "read_audio",
    "collate_speech",
    "CHARACTERS",
]

log = logging.getLogger(__name__)

CHARACTERS = " 'abcdefghijklmnopqrstuvwxyz"  # English letters, apostrophe and space
AUDIO_SUFFIXES = (".wav", ".flac", ".ogg")


class Utterance(NamedTuple):
    audio: Tensor | str  # waveform (N,) at the module's sample rate, or a file to read
    text: str  # normalised transcript


class BadAudioError(BadDataError):
    """An audio file or transcript that cannot be used; the message names the file."""


def read_audio(path: str | Path, sample_rate: int) -> Tensor:
    """Mono waveform (N,) float32 of ``path`` resampled to ``sample_rate``."""
    import soundfile

    try:
        data, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (N, channels)
    except Exception as err:  # soundfile raises LibsndfileError, RuntimeError, TypeError...
        raise BadAudioError(f"{path}: cannot read audio ({err})") from None
    if data.shape[0] == 0:
        raise BadAudioError(f"{path}: empty audio (0 samples)")
    wave = torch.from_numpy(data).mean(dim=1)
    if rate != sample_rate:
        wave = _resampler(rate, sample_rate)(wave)
    return wave


@functools.lru_cache(maxsize=8)
def _resampler(orig_freq: int, new_freq: int) -> torchaudio.transforms.Resample:
    """One Resample per rate pair: its filter is built once, not for every file (4x faster)."""
    return torchaudio.transforms.Resample(orig_freq, new_freq)


def collate_speech(items: Sequence[tuple[Tensor, Tensor]]) -> tuple[Tensor, ...]:
    """[(wave (N_i,), label ids (S_i,))] -> (waves, wave_lengths, targets, target_lengths)."""
    wave_lengths = torch.tensor([len(w) for w, _ in items])
    target_lengths = torch.tensor([len(t) for _, t in items])
    waves = torch.zeros(len(items), int(wave_lengths.max()))
    targets = torch.zeros(len(items), max(int(target_lengths.max()), 1), dtype=torch.long)
    for i, (wave, ids) in enumerate(items):
        waves[i, : len(wave)] = wave
        targets[i, : len(ids)] = ids
    return waves, wave_lengths, targets, target_lengths


class SpeechDataset(Dataset):
    """Utterances -> (waveform (N,), label ids (S,)); files are read when indexed."""

    def __init__(self, utterances: list[Utterance], vocab: str, sample_rate: int) -> None:
        self.utterances = utterances
        self.index = {ch: i + 1 for i, ch in enumerate(vocab)}
        self.sample_rate = sample_rate

    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, i: int) -> tuple[Tensor, Tensor]:
        audio, text = self.utterances[i]
        wave = read_audio(audio, self.sample_rate) if isinstance(audio, str) else audio
        return wave.float(), torch.tensor([self.index[ch] for ch in text], dtype=torch.long)


class SpeechDataModule(DataModule):
    """Base of the speech DataModules; subclasses implement :meth:`load_split`.

    Args:
        vocab: the characters a transcript may contain (label i + 1 is ``vocab[i]``).
        sample_rate: of the delivered waveforms (files are resampled to it).
        batch_size: utterances per batch.
        num_workers: DataLoader workers (files are decoded in them).
        lowercase: lowercase transcripts before checking them against ``vocab``.
        on_bad: ``"error"`` raises on the first bad file, naming it; ``"skip"`` drops bad
            files and logs how many (and the first few) per split.
        min_sample_rate: files recorded below this rate count as bad (upsampling cannot
            restore the missing band).
    """

    collate_fn = staticmethod(collate_speech)

    def __init__(
        self,
        *,
        vocab: str = CHARACTERS,
        sample_rate: PositiveInt = 16000,
        batch_size: PositiveInt = 32,
        num_workers: NonNegativeInt = 0,
        lowercase: bool = True,
        on_bad: Literal["error", "skip"] = "skip",
        min_sample_rate: PositiveInt = 8000,
    ) -> None:
        super().__init__(batch_size=batch_size, num_workers=num_workers)
        self.vocab = vocab
        self.sample_rate = sample_rate
        self.lowercase = lowercase
        self.on_bad = on_bad
        self.min_sample_rate = min_sample_rate
        self.skipped: dict[str, list[str]] = {}

    # -- subclasses implement ------------------------------------------------------------
    def load_split(self, split: str) -> list[Utterance]:
        """Utterances of ``"train"``, ``"val"`` or ``"test"`` (audio tensors or file paths)."""
        raise NotImplementedError

    # -- shared ----------------------------------------------------------------------------
    def normalize(self, text: str) -> str:
        text = " ".join(text.split())
        return text.lower() if self.lowercase else text

    def problem(self, utterance: Utterance) -> str | None:
        """Why ``utterance`` cannot be used, or None."""
        audio, text = utterance
        if not text:
            return "empty transcript"
        outside = sorted({ch for ch in text if ch not in self.vocab})
        if outside:
            return f"transcript {text!r} has characters {outside} outside the vocabulary"
        if isinstance(audio, Tensor):
            return "empty audio (0 samples)" if audio.numel() == 0 else None
        import soundfile

        try:
            info = soundfile.info(audio)
        except Exception as err:
            return f"cannot read audio ({err})"
        if info.frames == 0:
            return "empty audio (0 samples)"
        if info.samplerate < self.min_sample_rate:
            return (f"sample rate {info.samplerate} Hz is below min_sample_rate "
                    f"{self.min_sample_rate} Hz")
        return None

    def screen(self, utterances: list[Utterance], split: str) -> list[Utterance]:
        """Drop (``on_bad="skip"``) or raise on (``"error"``) unusable utterances."""
        kept, skipped = [], []
        for utt in utterances:
            utt = Utterance(utt.audio, self.normalize(utt.text))
            reason = self.problem(utt)
            if reason is None:
                kept.append(utt)
                continue
            name = utt.audio if isinstance(utt.audio, str) else f"{split} utterance {len(kept)}"
            if self.on_bad == "error":
                raise BadAudioError(f"{name}: {reason} (set data.on_bad=skip to skip such files)")
            skipped.append(f"{name}: {reason}")
        if skipped:
            log.warning("skipped %d of %d %s utterances; first: %s", len(skipped),
                        len(utterances), split, "; ".join(skipped[:3]))
        self.skipped[split] = skipped
        if not kept:
            raise BadAudioError(f"no usable utterances in the {split} split")
        return kept

    def setup(self, stage: str | None = None) -> None:
        for split in ("train", "val", "test"):
            if split not in self.splits:
                utterances = self.screen(self.load_split(split), split)
                self.splits[split] = SpeechDataset(utterances, self.vocab, self.sample_rate)


def _not_found(name: str, root: str, expected: str, err: Exception) -> DataNotFoundError:
    return DataNotFoundError(f"{name} not found under {root!r}: put {expected} there, or set "
                             f"data.root=<dir> ({err})")


class LibriSpeechDataModule(SpeechDataModule):
    """LibriSpeech (Panayotov et al. 2015) from ``<root>/LibriSpeech/<subset>/``.

    Indexed with ``torchaudio.datasets.LIBRISPEECH`` (its ``*.trans.txt`` layout); audio is
    decoded with soundfile. ``max_utterances`` (per split, 0 = all) keeps the first ones.
    """

    def __init__(self, *, root: str = "data", train_subset: str = "train-clean-100",
                 val_subset: str = "dev-clean", test_subset: str = "test-clean",
                 max_utterances: NonNegativeInt = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = str(Path(root).expanduser())
        self.subsets = {"train": train_subset, "val": val_subset, "test": test_subset}
        self.max_utterances = max_utterances

    def load_split(self, split: str) -> list[Utterance]:
        subset = self.subsets[split]
        try:
            dataset = torchaudio.datasets.LIBRISPEECH(self.root, url=subset, download=False)
        except RuntimeError as err:
            raise _not_found("LibriSpeech", self.root, f"LibriSpeech/{subset}/", err) from None
        archive = Path(self.root) / "LibriSpeech"
        count = len(dataset) if self.max_utterances <= 0 else min(len(dataset),
                                                                    self.max_utterances)
        out = []
        for n in range(count):
            relpath, _, transcript, *_ = dataset.get_metadata(n)
            out.append(Utterance(str(archive / relpath), transcript))
        return out


class SpeechCommandsDataModule(SpeechDataModule):
    """Speech Commands v0.02 (Warden 2018) from ``<root>/SpeechCommands/speech_commands_v0.02``.

    Indexed with ``torchaudio.datasets.SPEECHCOMMANDS`` and its official
    validation/testing lists; the transcript of a clip is its word (``"yes"``, ``"left"``).
    """

    def __init__(self, *, root: str = "data", max_utterances: NonNegativeInt = 0,
                 **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.root = str(Path(root).expanduser())
        self.max_utterances = max_utterances

    def load_split(self, split: str) -> list[Utterance]:
        subset = {"train": "training", "val": "validation", "test": "testing"}[split]
        try:
            dataset = torchaudio.datasets.SPEECHCOMMANDS(self.root, download=False, subset=subset)
        except (RuntimeError, FileNotFoundError) as err:
            raise _not_found("Speech Commands", self.root,
                             "SpeechCommands/speech_commands_v0.02/", err) from None
        archive = Path(self.root) / "SpeechCommands"
        count = len(dataset) if self.max_utterances <= 0 else min(len(dataset),
                                                                    self.max_utterances)
        out = []
        for n in range(count):
            relpath, _, label, *_ = dataset.get_metadata(n)
            out.append(Utterance(str(archive / relpath), label.replace("_", " ")))
        return out


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as err:
        raise BadAudioError(f"{path}: transcripts must be UTF-8 text ({err})") from None


_SPLIT_DIRS = {"train": ("train",), "val": ("val", "valid", "dev"), "test": ("test",)}


class AudioFolderDataModule(SpeechDataModule):
    """Any folder of audio files with transcripts, at any sample rate.

    Transcripts come from LibriSpeech-style ``*.trans.txt`` files (lines ``<utt-id> TEXT``,
    audio ``<utt-id>.flac|.wav|.ogg`` beside them) and/or ``transcripts.tsv`` files (lines
    ``<audio path relative to the tsv><TAB>TEXT``), anywhere under ``root``. If ``root``
    has ``train``/``val`` (or ``valid``, ``dev``)/``test`` subfolders, they are the splits;
    otherwise each file goes to val or test by a hash of its path (``val_fraction``,
    ``test_fraction``), the rest to train, so adding files never moves old ones.
    """

    def __init__(self, *, root: str = "data/audio", val_fraction: UnitInterval = 0.1,
                 test_fraction: UnitInterval = 0.1, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        if val_fraction + test_fraction >= 1:
            raise ValueError(f"val_fraction + test_fraction must be < 1 (training files are "
                             f"left), got {val_fraction} + {test_fraction}")
        self.root = Path(root).expanduser()
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self._all: list[Utterance] | None = None

    @staticmethod
    def scan(folder: Path) -> list[Utterance]:
        """Every (audio path, transcript) listed by a transcript file under ``folder``."""
        out: list[Utterance] = []
        for trans in sorted(folder.rglob("*.trans.txt")):
            for line_no, line in enumerate(_read_text(trans).splitlines(), 1):
                if not line.strip():
                    continue
                utt_id, _, text = line.strip().partition(" ")
                audio = next((trans.parent / f"{utt_id}{s}" for s in AUDIO_SUFFIXES
                              if (trans.parent / f"{utt_id}{s}").is_file()), None)
                if audio is None:
                    raise BadAudioError(f"{trans}:{line_no}: no audio file {utt_id}"
                                        f"{{{','.join(AUDIO_SUFFIXES)}}} beside it")
                out.append(Utterance(str(audio), text))
        for tsv in sorted(folder.rglob("transcripts.tsv")):
            with io.StringIO(_read_text(tsv), newline="") as f:
                rows = csv.reader(f, delimiter="\t", quoting=csv.QUOTE_NONE)
                for line_no, row in enumerate(rows, 1):
                    if not row or not row[0].strip():
                        continue
                    if len(row) != 2:
                        raise BadAudioError(f"{tsv}:{line_no}: expected '<path>\\t<text>', "
                                            f"got {len(row)} tab-separated fields")
                    audio = tsv.parent / row[0].strip()
                    if not audio.is_file():
                        raise BadAudioError(f"{tsv}:{line_no}: no audio file {audio}")
                    out.append(Utterance(str(audio), row[1]))
        return out

    def _split_dir(self, split: str) -> Path | None:
        return next((self.root / d for d in _SPLIT_DIRS[split] if (self.root / d).is_dir()),
                    None)

    def load_split(self, split: str) -> list[Utterance]:
        if not self.root.is_dir():
            raise DataNotFoundError(f"audio folder {str(self.root)!r} does not exist; set "
                                    "data.root=<dir with audio and transcripts>")
        if self._split_dir("train") is not None:
            folder = self._split_dir(split)
            if folder is None:
                raise DataNotFoundError(f"{self.root} has a train/ folder but no {split} folder "
                                        f"(one of {', '.join(_SPLIT_DIRS[split])})")
            found = self.scan(folder)
        else:
            if self._all is None:
                self._all = self.scan(self.root)
            found = [u for u in self._all if self._hash_split(u.audio) == split]
        if not found:
            raise DataNotFoundError(f"no transcribed audio for the {split} split under "
                                    f"{self.root} (*.trans.txt or transcripts.tsv)")
        return found

    def _hash_split(self, path: str) -> str:
        rel = str(Path(path).relative_to(self.root))
        u = zlib.crc32(rel.encode()) / 2**32
        if u < self.test_fraction:
            return "test"
        return "val" if u < self.test_fraction + self.val_fraction else "train"


