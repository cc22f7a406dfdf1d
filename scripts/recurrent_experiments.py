"""The README tables of the recurrent family (issue 17), re-run: results/recurrent_<table>.json.

    python scripts/recurrent_experiments.py teacher_forcing  # always / scheduled / never
    python scripts/recurrent_experiments.py teacher_forcing_small  # the same, 2,000 numbers
    python scripts/recurrent_experiments.py attention        # additive vs none, 9-digit numbers
    python scripts/recurrent_experiments.py act              # act beside pondernet on parity
    python scripts/recurrent_experiments.py act --threads 1 --override trainer.max_epochs=5
    python scripts/recurrent_experiments.py act --seeds 1 2 3 --threads 1   # mean ± std
    python scripts/recurrent_experiments.py act --markdown   # the README table from the JSON

Each variant is ``python train.py model=<name> <overrides>`` in a fresh process and its own
run dir under ``--runs``; its entry holds the command, the test metrics of the run's
``metrics.json``, the epochs trained, wall and CPU seconds of the process tree, and the
run's per-length or per-non-zero table (``pictures/exact_match_by_length.json``,
``pictures/halting_test.json``). ``--threads N`` sets OMP_NUM_THREADS (as for the README's
one-thread CPU-time figures); the JSON also names the commit. ``--seeds S ...`` runs every
variant once per seed (``seed=S``) and keeps each seed's entry under ``seeds`` with the mean
and sample standard deviation over them under ``summary`` (``--markdown`` prints that as the
README's table: interpolation and extrapolation accuracy, mean steps, mean steps per number of
non-zeros, CPU seconds).
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import statistics
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
                threads: int | None, extra: list[str], seed: int | None = None) -> dict:
    name = variant if seed is None else f"{variant}-seed{seed}"
    run_dir = runs / table / name
    seeded = [] if seed is None else [f"seed={seed}"]
    command = [sys.executable, "train.py", f"model={model}", *overrides, *seeded, *extra]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    run_dir.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with open(run_dir.parent / f"{name}.log", "w") as log:
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
        for side_name in SIDE_TABLES:
            side = run_dir / "pictures" / side_name
            if side.is_file():
                entry[side_name.removesuffix(".json")] = json.loads(side.read_text())
    else:
        entry["log_tail"] = (run_dir.parent / f"{name}.log").read_text()[-2000:]
    print(f"{table}/{name}: rc={entry['returncode']} cpu={entry['cpu_s']}s "
          f"{entry.get('metrics')}", flush=True)
    return entry


# summarised over seeds: metric key -> (column, scale)
SEED_METRICS = {"test/acc": 100, "test/acc_extrap": 100, "test/steps": 1,
                "test/steps_extrap": 1, "test/steps_spearman": 1}


def _mean_std(values: list[float]) -> dict:
    return {"mean": statistics.fmean(values),
            "std": statistics.stdev(values) if len(values) > 1 else 0.0, "n": len(values)}


def summarise(seeds: dict[str, dict]) -> dict:
    """Mean and sample std over the seeds' runs that finished: each test metric, CPU and wall
    seconds, epochs, and the mean halting step per number of non-zeros k."""
    done = [e for e in seeds.values() if "metrics" in e]
    if not done:
        return {}
    summary: dict = {"seeds": [int(s) for s, e in seeds.items() if "metrics" in e]}
    for key in sorted({k for e in done for k in e["metrics"]}):
        values = [e["metrics"][key] for e in done if key in e["metrics"]]
        summary[key] = _mean_std(values)
    for key in ("cpu_s", "wall_s", "epochs"):
        summary[key] = _mean_std([e[key] for e in done if e.get(key) is not None])
    tables = [e["halting_test"] for e in done if "halting_test" in e]
    if tables:
        ks = sorted(set.intersection(*(set(t["k"]) for t in tables)))
        summary["mean_steps_by_k"] = {
            str(k): _mean_std([t["mean_steps"][t["k"].index(k)] for t in tables]) for k in ks}
        summary["train_max_nonzero"] = tables[0].get("train_max_nonzero")
    return summary


def markdown(result: dict) -> str:
    """The README table of a seeded run: one row per variant, mean ± std over the seeds."""
    def cell(summary: dict, key: str, scale: float = 1, digits: int = 2) -> str:
        if key not in summary:
            return "—"
        m, sd = summary[key]["mean"] * scale, summary[key]["std"] * scale
        return f"{m:.{digits}f} ± {sd:.{digits}f}"

    lines = ["| model | seeds | accuracy interp. | extrap. | mean steps interp. / extrap. | "
             "steps vs non-zeros (Spearman) | mean steps at k = 1 / train max / n_elems | "
             "train CPU time in s, one thread, shared machine (epochs) |", "|---" * 8 + "|"]
    for variant, entry in result["variants"].items():
        summary = entry.get("summary")
        if not summary:
            continue
        by_k = summary.get("mean_steps_by_k", {})
        ks = sorted(by_k, key=int)
        shown = [k for k in (ks[:1] + [str(summary.get("train_max_nonzero"))] + ks[-1:])
                 if k in by_k]
        steps_k = " / ".join(f"{by_k[k]['mean']:.1f}" for k in shown) if ks else "—"
        lines.append(
            f"| `{variant}` | {len(summary['seeds'])} | {cell(summary, 'test/acc', 100)} % | "
            f"{cell(summary, 'test/acc_extrap', 100)} % | {cell(summary, 'test/steps', 1, 1)} / "
            f"{cell(summary, 'test/steps_extrap', 1, 1)} | "
            f"{cell(summary, 'test/steps_spearman')} | {steps_k} | "
            f"{cell(summary, 'cpu_s', 1, 0)} ({summary['epochs']['mean']:.0f}) |")
    return "\n".join(lines)


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
    parser.add_argument("--seeds", type=int, nargs="+", default=None,
                        help="run every variant once per seed (seed=S); mean ± std in summary")
    parser.add_argument("--markdown", action="store_true",
                        help="print the seeded results in the JSON as a table; run nothing")
    args = parser.parse_args(argv)
    out = args.out or REPO / "results" / f"recurrent_{args.table}.json"
    if args.markdown:
        print(markdown(json.loads(out.read_text())))
        return 0
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    for variant, model, overrides in TABLES[args.table]:
        if args.only and variant not in args.only:
            continue
        for seed in args.seeds or [None]:
            entry = run_variant(args.table, variant, model, overrides, args.runs, args.threads,
                                args.override, seed)
            entry.update(commit=commit,
                         date=datetime.now(timezone.utc).isoformat(timespec="seconds"))
            _record(out, args.runs / f"{out.name}.lock", variant, seed, entry)  # partial results
    return 0


def _record(out: Path, lock_file: Path, variant: str, seed: int | None, entry: dict) -> None:
    """Put one run's entry into the JSON, re-read under a lock: several invocations (one per
    seed, say) may write the same file."""
    out.parent.mkdir(parents=True, exist_ok=True)
    lock_file.parent.mkdir(parents=True, exist_ok=True)
    with open(lock_file, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        result = json.loads(out.read_text()) if out.is_file() else {"variants": {}}
        if seed is None:
            result["variants"][variant] = entry
        else:
            seeded = result["variants"].setdefault(variant, {})
            if "seeds" not in seeded:  # a single-seed entry before: replaced
                seeded.clear()
                seeded["seeds"] = {}
            seeded["seeds"][str(seed)] = entry
            seeded["summary"] = summarise(seeded["seeds"])
        out.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
