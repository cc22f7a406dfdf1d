"""HuBERT downstream (issue 18): CTC fine-tuning of the pretrained encoder on 10 % of the
transcripts against the same network trained from scratch -> results/hubert_ctc.json.

    python scripts/hubert_finetune.py                        # pretrain (model=hubert) first
    python scripts/hubert_finetune.py --hubert <run>/checkpoints/last.ckpt
    python scripts/hubert_finetune.py --epochs 40 --seeds 0 1 2 --threads 1

Both arms run ``python train.py model=hubert_ctc`` (data=spoken_symbols_100: the first 100
of the 1,000 utterances model=hubert pretrains on, now with their transcripts; validation
and test splits as every spoken_symbols run) with the same epochs, optimizer and seed; the
fine-tuned arm adds ``model.encoder_init=<hubert checkpoint>``. Reported per arm: test CER
and WER (prefix beam search) of the best-validation-CER checkpoint, and the relative CER
reduction of fine-tuning. The pretraining run (when not given) is ``python train.py
model=hubert`` (both iterations); its test PNMI figures are copied into the JSON.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def train(overrides: list[str], run_dir: Path, threads: int) -> tuple[dict, float]:
    """``python train.py <overrides>`` into ``run_dir``: (metrics.json, wall seconds)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    command = [sys.executable, str(REPO / "train.py"), *overrides, f"hydra.run.dir={run_dir}"]
    start = time.perf_counter()
    subprocess.run(command, cwd=REPO, env=env, check=True, stdout=subprocess.DEVNULL)
    seconds = time.perf_counter() - start
    return json.loads((run_dir / "metrics.json").read_text()), seconds


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--hubert", type=Path, help="a model=hubert checkpoint (default: "
                        "pretrain one with `python train.py model=hubert`)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="fine-tuning epochs of both arms (default: the config's)")
    parser.add_argument("--seeds", type=int, nargs="+", default=[42])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--runs", type=Path, default=REPO / "outputs" / "hubert_finetune")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "hubert_ctc.json")
    args = parser.parse_args(argv)

    result: dict = {"data": "spoken_symbols_100 (10 % of hubert's 1,000 training utterances)",
                    "threads": args.threads}
    hubert = args.hubert
    if hubert is None:
        run = args.runs / "pretrain"
        metrics, seconds = train(["model=hubert"], run, args.threads)
        result["pretraining"] = {"command": "python train.py model=hubert",
                                 "wall_s": round(seconds, 1), **metrics["metrics"]}
        hubert = run / "checkpoints" / "last.ckpt"
    result["hubert_checkpoint"] = str(hubert)
    epochs = [f"trainer.max_epochs={args.epochs}"] if args.epochs else []
    arms = {"scratch": [], "finetuned": [f"model.encoder_init={hubert}"]}
    rows: dict[str, list[dict]] = {arm: [] for arm in arms}
    for seed in args.seeds:
        for arm, extra in arms.items():
            overrides = ["model=hubert_ctc", *epochs, f"seed={seed}", *extra]
            metrics, seconds = train(overrides, args.runs / f"{arm}_seed{seed}", args.threads)
            rows[arm].append({"seed": seed, "command": "python train.py " + " ".join(overrides),
                              "test_cer": metrics["metrics"]["test/cer"],
                              "test_wer": metrics["metrics"]["test/wer"],
                              "epochs": metrics["epochs"], "wall_s": round(seconds, 1)})
            print(arm, rows[arm][-1], file=sys.stderr)
    for arm in arms:
        cers = [r["test_cer"] for r in rows[arm]]
        result[arm] = {"runs": rows[arm], "test_cer_mean": statistics.mean(cers)}
    scratch, tuned = result["scratch"]["test_cer_mean"], result["finetuned"]["test_cer_mean"]
    result["relative_cer_reduction"] = (scratch - tuned) / scratch if scratch > 0 else 0.0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
