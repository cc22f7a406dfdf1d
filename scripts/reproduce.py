"""Re-run the README's default commands and record what they give: results/reproduce.json.

    python scripts/reproduce.py                       # every model, one after another
    python scripts/reproduce.py vae dcgan             # some of them
    python scripts/reproduce.py --jobs 2 --threads 1  # two at a time, one thread each

Each model runs as ``python train.py model=<name>`` (the README's command, in a fresh
process, in its own run dir under ``--runs``) and its entry in the JSON holds the command,
the test metrics from the run's ``metrics.json``, the wall time and the CPU time of the
process tree, the epochs trained, the thread setting and the commit. ``--threads N`` sets
OMP_NUM_THREADS for the run (how the README's "CPU-s" figures were taken while the machine
was shared); without it the run sees the environment as a user's would. Entries of models
not re-run are kept, so the file accumulates one latest entry per model.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def run_one(name: str, runs: Path, threads: int | None, extra: list[str]) -> dict:
    run_dir = runs / name
    command = [sys.executable, "train.py", f"model={name}", *extra]
    env = dict(os.environ)
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    start = time.perf_counter()
    with open(runs / f"{name}.log", "w") as log:
        proc = subprocess.Popen([*command, f"hydra.run.dir={run_dir}"], cwd=REPO, env=env,
                                stdout=log, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)  # this run's own CPU time, whatever runs beside
    wall = time.perf_counter() - start
    returncode = proc.returncode = os.waitstatus_to_exitcode(status)
    entry = {
        "command": "python " + " ".join(command[1:]),
        "returncode": returncode,
        "wall_s": round(wall, 1),
        "cpu_s": round(usage.ru_utime + usage.ru_stime, 1),
        "omp_num_threads": threads,
        "run_dir": str(run_dir),
    }
    report = run_dir / "metrics.json"
    if returncode == 0 and report.is_file():
        data = json.loads(report.read_text())
        entry.update(metrics=data["metrics"], epochs=data.get("epochs"))
    else:
        entry["log_tail"] = (runs / f"{name}.log").read_text()[-2000:]
    print(f"{name}: rc={returncode} wall={wall:.0f}s {entry.get('metrics')}", flush=True)
    return entry


def main(argv: list[str] | None = None) -> int:
    from mlnotes_zoo import list_models

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="*", help="models to run (default: all)")
    parser.add_argument("--jobs", type=int, default=1, help="runs at a time")
    parser.add_argument("--threads", type=int, default=None,
                        help="OMP_NUM_THREADS for each run (default: as the environment has it)")
    parser.add_argument("--runs", type=Path, default=REPO / "outputs" / "reproduce")
    parser.add_argument("--out", type=Path, default=REPO / "results" / "reproduce.json")
    parser.add_argument("--override", action="append", default=[],
                        help="an extra override for every run (repeatable)")
    args = parser.parse_args(argv)
    models = args.models or list_models()
    unknown = sorted(set(models) - set(list_models()))
    if unknown:
        parser.error(f"unknown model(s) {', '.join(unknown)}; one of {', '.join(list_models())}")
    args.runs.mkdir(parents=True, exist_ok=True)
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO,
                            capture_output=True, text=True).stdout.strip()
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        entries = dict(zip(models, pool.map(
            lambda m: run_one(m, args.runs, args.threads, args.override), models), strict=True))
    results = json.loads(args.out.read_text()) if args.out.is_file() else {}
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    for name, entry in entries.items():
        results[name] = {**entry, "commit": commit, "date": stamp, "jobs_at_once": args.jobs}
    results["machine"] = {"cpu_count": os.cpu_count(), "platform": platform.platform(),
                          "python": platform.python_version()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return 0 if all(e["returncode"] == 0 for e in entries.values()) else 1


if __name__ == "__main__":
    raise SystemExit(main())
