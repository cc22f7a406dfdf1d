"""The README tables of the recurrent family (issue 17), re-run: results/recurrent_<table>.json.

    python scripts/recurrent_experiments.py teacher_forcing  # always / scheduled / never
    python scripts/recurrent_experiments.py teacher_forcing_small  # the same, 2,000 numbers
    python scripts/recurrent_experiments.py attention        # additive vs none, 9-digit numbers
    python scripts/recurrent_experiments.py act              # act beside pondernet on parity
    python scripts/recurrent_experiments.py act --threads 1 --override trainer.max_epochs=5

Each variant is ``python train.py model=<name> <overrides>`` in a fresh process and its own
run dir under ``--runs``; its entry holds the command, the test metrics of the run's
``metrics.json``, the epochs trained, wall and CPU seconds of the process tree, and the
run's per-length or per-non-zero table (``pictures/exact_match_by_length.json``,
``pictures/halting_test.json``). ``--threads N`` sets OMP_NUM_THREADS (as for the README's
"CPU-s" figures); the JSON also names the commit.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# table -> [(variant, model, overrides)]
TABLES: dict[str, list[tuple[str, str, list[str]]]] = {
    # exposure bias (notes 003, "Teacher forcing in RNN"): the same model trained on true
    # prefixes, on a decaying mix (scheduled sampling), and on its own samples only
    "teacher_forcing": [
        (f"{tf}-{att}", "rnn_seq2seq", [f"model.teacher_forcing={tf}",
                                        f"model.net.attention={att}"])
        for att in ("additive", "none") for tf in ("1.0", "scheduled", "0.0")
    ],
    # the same on 2,000 training numbers (the default has 50,000, where every variant ends
    # at 99.8-100 %): a model that still errs, where exposure bias could show; scheduled
    # sampling's k scaled to the shorter run (ε = ½ near step 100 of ~16 per epoch)
    "teacher_forcing_small": [
        (f"{tf}-{att}", "rnn_seq2seq", [f"model.teacher_forcing={tf}",
                                        f"model.net.attention={att}", "data.train_size=2000",
                                        "trainer.max_epochs=40", "model.patience=5",
                                        "model.schedule_k=30"])
        for att in ("additive", "none") for tf in ("1.0", "scheduled", "0.0")
    ],
    # the bottleneck: a fixed summary c against attention, exact match per target length, on
    # numbers up to 9 digits (targets up to 14 words; the default data stops at 6 digits,
    # where the teacher_forcing table's 1.0 rows compare the two)
    "attention": [
        (att, "rnn_seq2seq", [f"model.net.attention={att}", "data.max_value=999999999"])
        for att in ("additive", "none")
    ],
    "act": [("act", "act", []), ("pondernet", "pondernet", [])],
}
SIDE_TABLES = ("exact_match_by_length.json", "halting_test.json")


def run_variant(table: str, variant: str, model: str, overrides: list[str], runs: Path,
                threads: int | None, extra: list[str]) -> dict:
    run_dir = runs / table / variant
    command = [sys.executable, "train.py", f"model={model}", *overrides, *extra]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(run_dir.parent / f"{variant}.log", "w") as log:
        proc = subprocess.Popen([*command, f"hydra.run.dir={run_dir}"], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # this run's own CPU time
    entry: dict = {
        "command": "python " + " ".join(command[1:]),
        "returncode": os.waitstatus_to_exitcode(status),
        "wall_s": round(time.perf_counter() - start, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "omp_num_threads": threads,
    }
    report = run_dir / "metrics.json"
    if entry["returncode"] == 0 and report.is_file():
        data = json.loads(report.read_text())
        entry.update(metrics=data["metrics"], epochs=data.get("epochs"))
        for name in SIDE_TABLES:
            side = run_dir / "pictures" / name
            if side.is_file():
                entry[name.removesuffix(".json")] = json.loads(side.read_text())
    else:
        entry["log_tail"] = (run_dir.parent / f"{variant}.log").read_text()[-2000:]
    print(f"{table}/{variant}: rc={entry['returncode']} cpu={entry['cpu_s']}s "
          f"{entry.get('metrics')}", flush=True)
    return entry


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("table", choices=sorted(TABLES))
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for each run (default: as the environment has it)")
    parser.add_argument("--runs", type=Path, default=REPO / "outputs" / "recurrent")
    parser.add_argument("--out", type=Path, default=None,
                        help="default: results/recurrent_<table>.json")
    parser.add_argument("--only", action="append", default=[], help="run only these variants")
    parser.add_argument("--override", action="append", default=[],
                        help="an extra override for every run (repeatable)")
    args = parser.parse_args(argv)
    out = args.out or REPO / "results" / f"recurrent_{args.table}.json"
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    result = json.loads(out.read_text()) if out.is_file() else {"variants": {}}
    for variant, model, overrides in TABLES[args.table]:
        if args.only and variant not in args.only:
            continue
        entry = run_variant(args.table, variant, model, overrides, args.runs, args.threads,
                            args.override)
        entry.update(commit=commit, date=datetime.now(timezone.utc).isoformat(timespec="seconds"))
        result["variants"][variant] = entry
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1) + "\n")  # after each run: partial results
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
