"""Transcribe audio files with a trained CTC checkpoint.

    python -m mlnotes_zoo.transcribe ckpt=outputs/.../checkpoints/last.ckpt wav=clip.wav
    python -m mlnotes_zoo.transcribe ckpt=... wav=a.wav wav=b.flac decoder=beam beam_width=16

Prints one line per file: the text (prefixed by the file name when there are several).
Any sample rate and channel count is accepted (mixed to mono, resampled to the model's rate).
Lightning is not needed: the network is rebuilt with :func:`mlnotes_zoo.load_checkpoint`.
``python predict.py ckpt_path=<ckpt> input=clip.wav`` (:mod:`mlnotes_zoo.predict`) does the same
for one file through the configs, with the other families' predictions, into a run dir.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

__all__ = ["transcribe_files", "main"]

USAGE = ("usage: python -m mlnotes_zoo.transcribe ckpt=<file.ckpt> wav=<audio> [wav=<audio> ...] "
         "[decoder=greedy|beam] [beam_width=8]")


def transcribe_files(ckpt: str | Path, files: list[str | Path], *, decoder: str = "greedy",
                     beam_width: int = 8) -> list[str]:
    """Text of each audio file under the CTC network stored in ``ckpt``."""
    from mlnotes_zoo.data.speech import read_audio
    from mlnotes_zoo.models.ctc import CTCSpeechModel
    from mlnotes_zoo.weights import load_checkpoint

    net = load_checkpoint(ckpt)
    if not isinstance(net, CTCSpeechModel):
        raise ValueError(f"{ckpt} holds a {type(net).__name__}, not a CTC speech model")
    texts = []
    for path in files:
        wave = read_audio(path, net.sample_rate)
        texts.append(net.transcribe(wave[None], torch.tensor([len(wave)]), decoder=decoder,
                                    beam_width=beam_width)[0])
    return texts


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    options: dict[str, str] = {}
    files: list[str] = []
    for arg in argv:
        key, sep, value = arg.partition("=")
        if not sep or key not in ("ckpt", "wav", "decoder", "beam_width"):
            print(f"error: unexpected argument {arg!r}\n{USAGE}", file=sys.stderr)
            return 2
        if key == "wav":
            files.append(value)
        else:
            options[key] = value
    if "ckpt" not in options or not files:
        print(USAGE, file=sys.stderr)
        return 2
    decoder = options.get("decoder", "greedy")
    if decoder not in ("greedy", "beam"):
        print(f"error: decoder must be greedy or beam, got {decoder!r}", file=sys.stderr)
        return 2
    try:
        texts = transcribe_files(options["ckpt"], files, decoder=decoder,
                                 beam_width=int(options.get("beam_width", 8)))
    except (OSError, ValueError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    for path, text in zip(files, texts, strict=True):
        print(f"{path}\t{text}" if len(files) > 1 else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
