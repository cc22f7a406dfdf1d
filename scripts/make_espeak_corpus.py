"""Synthesise a small real-speech corpus with espeak-ng, in the ``data=audio_folder`` layout.

    python scripts/make_espeak_corpus.py --out /tmp/espeak_corpus --num 2000 --seed 0
    python train.py model=ctc data=audio_folder data.root=/tmp/espeak_corpus

No download: every utterance is a random sequence of 2-6 English words (a fixed list of
common words and spelled-out numbers) spoken by espeak-ng, a formant speech synthesiser,
with a random English voice and variant (accent, male/female timbre), speaking rate
(``-s``), pitch (``-p``), amplitude (``-a``) and word gap (``-g``), all drawn from a seeded
RNG. Transcripts use only the characters of the audio_folder
vocabulary (lowercase a-z, apostrophe, space).

Layout: ``<out>/{train,val,test}/transcripts.tsv`` (``<file>\\t<text>``) beside the WAVs,
which espeak-ng writes at its native 22,050 Hz (the loader resamples them to
``data.sample_rate``). The splits are disjoint in sentences (each sentence is drawn once);
voices are shared across splits.
"""

from __future__ import annotations

import argparse
import random
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

WORDS = """
the a an and or but of to in on at by for with from up down out over under after before
i you he she it we they me him her us them my your our their this that these those
is are was were be been have has had do does did can can't will won't don't isn't
go goes went come came get got make made take took see saw look find give tell say said
know think want need like love help keep put run walk talk play work read write open close
big small long short old new good bad hot cold fast slow high low early late happy sad
red blue green black white yellow brown orange
cat dog bird fish horse cow house car boat train bus road river tree water fire stone
book door window table chair bed cup phone music light night day morning evening week
year time city world child people man woman friend mother father family school money
""".split()
NUMBERS = """
zero one two three four five six seven eight nine ten eleven twelve thirteen fourteen
fifteen sixteen seventeen eighteen nineteen twenty thirty forty fifty sixty seventy eighty
ninety hundred thousand
""".split()
VOCAB = set(" 'abcdefghijklmnopqrstuvwxyz")  # configs/data/audio_folder.yaml

VOICES = ["en", "en-us", "en-gb", "en-gb-scotland", "en-gb-x-rp", "en-gb-x-gbclan",
          "en-gb-x-gbcwmd", "en-029", "en-us-nyc"]
VARIANTS = ["", "+m1", "+m2", "+m3", "+m4", "+m5", "+m6", "+m7",
            "+f1", "+f2", "+f3", "+f4", "+f5", "+klatt", "+klatt2", "+klatt3"]
SPLITS = {"train": 0.8, "val": 0.1, "test": 0.1}


def sentences(num: int, rng: random.Random) -> list[str]:
    """``num`` distinct sentences of 2-6 words (so the splits share no sentence)."""
    words = WORDS + NUMBERS
    out: dict[str, None] = {}
    while len(out) < num:
        out[" ".join(rng.choice(words) for _ in range(rng.randint(2, 6)))] = None
    return list(out)


def speak(text: str, wav: Path, rng: random.Random) -> None:
    """Say ``text`` into ``wav`` with a random voice, rate, pitch and word gap."""
    cmd = ["espeak-ng", "-v", rng.choice(VOICES) + rng.choice(VARIANTS),
           "-s", str(rng.randint(130, 190)),   # words per minute (espeak default 175)
           "-p", str(rng.randint(25, 75)),     # pitch 0-99 (default 50)
           "-a", str(rng.randint(60, 160)),    # amplitude (default 100)
           "-g", str(rng.randint(0, 4)),       # extra gap between words, 10 ms units
           "-w", str(wav), text]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0 or not wav.is_file() or wav.stat().st_size <= 44:
        raise RuntimeError(f"espeak-ng failed on {text!r} ({' '.join(cmd)}): "
                           f"{result.stderr.strip() or 'no audio written'}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="corpus folder to create")
    parser.add_argument("--num", type=int, default=2000, help="utterances in all splits")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2, help="espeak-ng processes at once")
    args = parser.parse_args()

    if shutil.which("espeak-ng") is None:
        sys.exit("error: espeak-ng not found on PATH; install it (apt-get install espeak-ng, "
                 "brew install espeak-ng) and run this again")
    if args.num < 10:
        sys.exit("error: --num must be at least 10 (train/val/test all need utterances)")
    if args.out.exists() and any(args.out.iterdir()):
        sys.exit(f"error: {args.out} exists and is not empty; pick a new --out")
    assert all(set(w) <= VOCAB for w in WORDS + NUMBERS)

    rng = random.Random(args.seed)
    texts = sentences(args.num, rng)
    jobs = []  # (split, file name, text, per-utterance RNG seed)
    start = 0
    for n, (split, share) in enumerate(SPLITS.items()):
        end = args.num if n == len(SPLITS) - 1 else start + round(share * args.num)
        (args.out / split).mkdir(parents=True)
        for i in range(start, end):
            jobs.append((split, f"{split}-{i:06d}.wav", texts[i], rng.randrange(2**32)))
        start = end

    def run(job: tuple[str, str, str, int]) -> None:
        split, name, text, seed = job
        speak(text, args.out / split / name, random.Random(seed))

    with ThreadPoolExecutor(args.workers) as pool:
        for done, _ in enumerate(pool.map(run, jobs), 1):
            if done % 500 == 0:
                print(f"{done}/{len(jobs)} utterances", flush=True)
    for split in SPLITS:
        lines = [f"{name}\t{text}\n" for s, name, text, _ in jobs if s == split]
        (args.out / split / "transcripts.tsv").write_text("".join(lines), encoding="utf-8")
        print(f"{split}: {len(lines)} utterances")
    print(f"wrote {args.out} (22,050 Hz WAV; python train.py model=ctc data=audio_folder "
          f"data.root={args.out})")


if __name__ == "__main__":
    main()
